"""Where a model's weights go: the placement arguments of `load_model`, checked and resolved.

[`load_model`][arithlens.core.loading.load_model] takes one `device`, a Hugging Face
`device_map` (a strategy or a dict of module name → device, optionally with `max_memory`)
or TransformerLens's `n_devices`; `resolve_placement` checks them against the devices this
machine has and resolves them to a `Placement`, loading nothing, so a typo or a missing
GPU costs no weight reading. [`arithlens.core.loading`][arithlens.core.loading] re-exports the public
names ([`default_device`][arithlens.core.placement.default_device],
[`available_devices`][arithlens.core.placement.available_devices]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from arithlens.core import validate

# Hugging Face's dispatch strategies (accelerate's `infer_auto_device_map` variants).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def default_device() -> str:
    """The device a model goes to when none is given.

    `"cuda"` when CUDA is available — under `torchrun` the rank's own GPU,
    `cuda:$LOCAL_RANK`, so K processes on one machine do not all load onto GPU 0 —
    otherwise `"cpu"`.
    """
    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.isdigit() and int(local) < torch.cuda.device_count():
        return f"cuda:{int(local)}"
    return "cuda"


def available_devices() -> list[str]:
    """The devices this machine can run a model on, e.g. `['cpu', 'cuda:0', 'cuda:1']`."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


@dataclass(frozen=True)
class Placement:
    """Where the weights go: one `device`, or a Hugging Face `device_map` (+ `max_memory`)."""

    device: str | None = None
    device_map: str | dict[str, int | str] | None = None
    max_memory: dict[int | str, int | str] | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained`: weights go straight to their device(s)."""
        if self.device_map is not None:
            out: dict[str, Any] = {"device_map": self.device_map}
            if self.max_memory is not None:
                out["max_memory"] = self.max_memory
            return out
        if self.device is not None and self.device != "cpu":
            # One accelerator: load straight onto it (no full copy in host memory first).
            return {"device_map": {"": self.device}}
        return {}


def _devices_text() -> str:
    text = ", ".join(repr(d) for d in available_devices())
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "built with CUDA but sees no GPU"
        text += f" (torch {torch.__version__} is {build})"
    return text


def _check_device(device: Any, name: str = "device") -> str:
    """A device string this machine has, normalised (`torch.device` text, e.g. `'cuda:0'`)."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise ValueError(f"{name}={device!r} must be a device such as 'cpu', 'cuda' or 'cuda:1'")
    if isinstance(device, int):
        device = validate.non_negative_int(device, name)
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"{name}={str(device)!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'. "
            f"Available here: {_devices_text()}"
        ) from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"{name}={str(device)!r} is not available on this machine; available devices: {_devices_text()}")
        return str(dev)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name}={str(device)!r} is not available on this machine; available devices: {_devices_text()}")
        return "mps"
    raise ValueError(
        f"{name}={str(device)!r} is not supported: arithlens runs on 'cpu', 'cuda[:N]' or 'mps'. "
        f"Available here: {_devices_text()}"
    )


def _check_device_map(device_map: Any) -> str | dict[str, str]:
    """A strategy name, or a dict of module name -> normalised device string."""
    if isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES:
        return device_map
    if isinstance(device_map, (str, int, torch.device)) and not isinstance(device_map, bool):
        try:
            return {"": _check_device(device_map, "device_map")}
        except ValueError as err:
            if isinstance(device_map, str) and "not a device" in str(err):
                raise ValueError(
                    f"device_map={device_map!r} is not one of {DEVICE_MAP_STRATEGIES}, a device, "
                    "or a dict of module name -> device"
                ) from None
            raise
    if not isinstance(device_map, Mapping):
        raise ValueError(
            f"device_map={device_map!r} must be one of {DEVICE_MAP_STRATEGIES}, a device, or a "
            "dict of module name -> device (e.g. {'model.layers.0': 0, 'lm_head': 1})"
        )
    if not device_map:
        raise ValueError("device_map is an empty dict: map module names (\"\" for the whole model) to devices")
    out: dict[str, str] = {}
    for module, dev in device_map.items():
        if not isinstance(module, str):
            raise ValueError(f"device_map key {module!r} must be a module name (a string; \"\" for the whole model)")
        if isinstance(dev, str) and dev.strip().lower() in ("disk", "meta"):
            raise ValueError(
                f"device_map[{module!r}]={dev!r}: arithlens needs every weight resident on a device "
                "(TransformerLens's compatibility mode cannot fold offloaded or meta weights); "
                f"available devices: {_devices_text()}"
            )
        out[module] = _check_device(dev, f"device_map[{module!r}]")
    targets = set(out.values())
    if len(targets) > 1 and "cpu" in targets:
        raise ValueError(
            "device_map sends part of the model to 'cpu' and part to "
            f"{sorted(targets - {'cpu'})}: TransformerLens 4.3 refuses maps that mix CPU offload "
            "with GPUs, and its compatibility mode (which arithlens uses) cannot fold offloaded "
            "weights. Map every module to a GPU, or pass device='cpu' to run the whole model on the CPU"
        )
    return out


def _check_max_memory(max_memory: Any) -> dict[int | str, int | str]:
    if not isinstance(max_memory, Mapping) or not max_memory:
        raise ValueError(
            f"max_memory={max_memory!r} must be a non-empty dict of device -> budget, "
            "e.g. {0: '20GiB', 1: '40GiB'}"
        )
    from accelerate.utils import convert_file_size_to_int

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out: dict[int | str, int | str] = {}
    for key, budget in max_memory.items():
        if isinstance(key, str) and key.startswith("cuda:") and key[5:].isdigit():
            key = int(key[5:])
        if isinstance(key, str):
            if key not in ("cpu", "mps", "disk"):
                raise ValueError(
                    f"max_memory key {key!r} is not a device: use GPU indices (0, 1, …), 'cpu' or 'mps'"
                )
        else:
            key = validate.non_negative_int(key, "max_memory key")
            if key >= n_gpus:
                raise ValueError(f"max_memory names GPU {key}, which this machine does not have; available devices: {_devices_text()}")
        if isinstance(budget, bool) or not isinstance(budget, (int, str)):
            raise ValueError(f"max_memory[{key!r}]={budget!r} must be bytes (an int) or a size such as '20GiB'")
        try:
            size = convert_file_size_to_int(budget)
        except (ValueError, AttributeError):
            size = -1
        if size <= 0:
            raise ValueError(f"max_memory[{key!r}]={budget!r} must be a positive size such as 20000000000, '20GiB' or '500MB'")
        out[key] = budget
    return out


def resolve_placement(device: Any, device_map: Any, n_devices: Any, max_memory: Any) -> Placement:
    """Validate and resolve the placement arguments, loading nothing."""
    if n_devices is not None:
        n_devices = validate.positive_int(n_devices, "n_devices")
    dm = None if device_map is None else _check_device_map(device_map)
    mm = None if max_memory is None else _check_max_memory(max_memory)
    dev = None if device is None else _check_device(device)
    if dev is not None and dm is not None:
        raise ValueError(
            f"device={str(device)!r} and device_map={device_map!r} conflict: pass device for one "
            "device, or device_map to split the model"
        )
    if n_devices is not None and dm is not None:
        raise ValueError(
            f"n_devices={n_devices} and device_map={device_map!r} conflict: n_devices is a shorthand "
            "for device_map='balanced' over GPUs 0..n_devices-1; pass one of them"
        )
    if n_devices is not None and n_devices > 1:
        if dev is not None:
            raise ValueError(
                f"device={str(device)!r} and n_devices={n_devices} conflict: the model goes either to "
                "one device or across n_devices GPUs"
            )
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus < n_devices:
            raise ValueError(
                f"n_devices={n_devices} needs {n_devices} CUDA GPUs but this machine has {n_gpus}; "
                f"available devices: {_devices_text()}"
            )
        if mm is not None and not any(isinstance(k, int) for k in mm):
            raise ValueError("max_memory names no GPU; with n_devices give a budget per GPU index")
        from transformer_lens.utilities.multi_gpu import resolve_device_map

        # TransformerLens's own translation: ("balanced", {0: bytes, ..., n-1: bytes}).
        strategy, budget = resolve_device_map(n_devices, None, None, mm)
        return Placement(device_map=strategy, max_memory=budget)
    if isinstance(dm, str):  # a strategy
        if not torch.cuda.is_available():
            # Nothing to split across: the whole model goes to the CPU (as accelerate would
            # put it), named explicitly so no CPU "offload" map can reach the bridge.
            if mm is not None:
                raise ValueError(
                    f"max_memory is given but this machine has no CUDA GPU to split the model over "
                    f"(available devices: {_devices_text()}); device_map={dm!r} loads it whole on the CPU"
                )
            return Placement(device="cpu")
        return Placement(device_map=dm, max_memory=mm)
    if mm is not None:
        raise ValueError(
            "max_memory only applies when the model is split by a strategy: pass it with "
            f"device_map in {DEVICE_MAP_STRATEGIES} or with n_devices > 1"
        )
    if dm is not None:
        targets = set(dm.values())
        if len(targets) == 1:  # one device: no dispatch needed
            return Placement(device=targets.pop())
        return Placement(device_map=dm)
    return Placement(device=dev or default_device())


def check_loaded(model: Any, placement: Placement, given: dict[str, Any]) -> None:
    """A model already loaded can only be asked for the device it is on."""
    split = {k: v for k, v in given.items() if k != "device"}
    if split:
        raise ValueError(
            f"{', '.join(f'{k}={v!r}' for k, v in split.items())} cannot apply to a model that is already "
            "loaded; pass its name or path to load_model instead"
        )
    if "device" in given:
        bridge = getattr(model, "bridge", model)
        current = torch.device(str(bridge.cfg.device))
        wanted = torch.device(placement.device)
        same = current.type == wanted.type and (wanted.index is None or (current.index or 0) == wanted.index)
        if not same:
            raise ValueError(
                f"device={given['device']!r}: this model is already loaded on {str(current)!r}; "
                "pass its name or path to load it on another device"
            )
