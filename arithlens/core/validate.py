"""One set of argument validators for every public constructor, `run` and CLI command.

Each validator takes the value and the argument's name and either returns the value
normalised (a plain `int`, a `float`, a `pathlib.Path`) or raises `ValueError` with a
message naming the argument, the value given and what is allowed. Integers are accepted
in any integral form a user gets from a result — Python `int`, numpy integers read from
a `.df`, 0-d integer tensors — while `bool`, non-integral floats and strings are
rejected by name, so `ZeroHead(row.layer, row.head)` works and `ZeroHead('0.8')` says
what is wrong.

Example:
    ```python
    from arithlens.core import validate
    validate.positive_int(8, "batch_size")        # 8
    validate.choice("last", "position", ("all", "last"))
    ```
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
import sys
from typing import Any, Iterable, Sequence


def _is_tensor(value: Any) -> bool:
    # torch is imported lazily so that `arithlens --help` stays fast: a tensor can only
    # exist if torch was imported already.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_integral(value: Any) -> int | None:
    """`value` as an int if it is integral (not bool), else None."""
    if isinstance(value, bool):
        return None
    if _is_tensor(value):
        import torch

        if value.ndim != 0 or value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
            return None
        return int(value.item())
    if isinstance(value, numbers.Integral):
        # numpy bools are Integral-like in some versions; reject them by type name.
        if type(value).__name__ in ("bool_", "bool"):
            return None
        return int(value)
    return None


def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integral value within `[low, high]` (both inclusive, either optional)."""
    as_int = _as_integral(value)
    if as_int is None:
        kind = "a bool" if isinstance(value, bool) else f"a {type(value).__name__}"
        raise ValueError(f"{name}={_show(value)} must be an integer, not {kind}")
    if (low is not None and as_int < low) or (high is not None and as_int > high):
        if low is not None and high is not None:
            allowed = f"between {low} and {high}"
        elif low is not None:
            allowed = f">= {low}"
        else:
            allowed = f"<= {high}"
        raise ValueError(f"{name}={as_int} is out of range: it must be {allowed}")
    return as_int


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1."""
    return integer(value, name, low=1)


def non_negative_int(value: Any, name: str) -> int:
    """An integer >= 0."""
    return integer(value, name, low=0)


def optional_positive_int(value: Any, name: str) -> int | None:
    """`None` or an integer >= 1 (batch sizes and limits that have a default)."""
    return None if value is None else positive_int(value, name)


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real number within `[low, high]` (`(low, high]` with `low_open`)."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ValueError(f"{name}={_show(value)} must be a number, not a {type(value).__name__}")
    if _is_tensor(value) and value.ndim == 0 and not value.is_complex():
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={_show(value)} must be a number, not a {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name}={out} must be a finite number")
    if low is not None and (out <= low if low_open else out < low):
        raise ValueError(f"{name}={out} is out of range: it must be {'>' if low_open else '>='} {low}")
    if high is not None and out > high:
        raise ValueError(f"{name}={out} is out of range: it must be <= {high}")
    return out


def positive_number(value: Any, name: str) -> float:
    """A finite number > 0."""
    return number(value, name, low=0.0, low_open=True)


def fraction(value: Any, name: str) -> float:
    """A number in `[0, 1]`."""
    return number(value, name, low=0.0, high=1.0)


def choice(value: Any, name: str, options: Sequence[Any]) -> Any:
    """One of `options` (compared with `==`; strings are not split into characters)."""
    if not isinstance(value, (str, int, float, type(None))) or value not in tuple(options):
        raise ValueError(f"{name}={_show(value)} is not one of {tuple(options)}")
    return value


def boolean(value: Any, name: str) -> bool:
    """A real `bool` (not a string such as `'False'`)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name}={_show(value)} must be True or False")
    return bool(value)


def int_sequence(
    values: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_empty: bool = False,
    unique: bool = False,
) -> list[int]:
    """A sequence of integers (a single integer becomes a one-element list).

    Strings are rejected: `'99'` is not the sequence `[9, 9]`.
    """
    if _as_integral(values) is not None:
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name}={_show(values)} must be an integer or a sequence of integers")
    if _is_tensor(values):
        values = values.reshape(-1).tolist() if not values.dtype.is_floating_point else list(values.reshape(-1))
    out = [integer(v, f"{name} item", low=low, high=high) for v in values]
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one value")
    if unique and len(set(out)) != len(out):
        raise ValueError(f"{name}={_show(values)} has repeated values")
    return out


def output_path(path: Any, name: str = "out") -> pathlib.Path:
    """A file path that can be written: its parent is (or can be made) a writable directory.

    Checked before any work, so a typo costs no model loading. The parent directory is
    not created here; writers create it when they write.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name}={_show(path)} must be a file path")
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a directory; give a file path")
    _check_creatable(p.parent.resolve() if str(p.parent) else pathlib.Path.cwd(), name, str(path))
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{name}={str(path)!r} exists and is not writable")
    return p


def output_dir(path: Any, name: str = "out") -> pathlib.Path:
    """A directory that exists and is writable, or can be created."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name}={_show(path)} must be a directory path")
    p = pathlib.Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}={str(path)!r} exists and is not a directory")
    _check_creatable(p.resolve(), name, str(path))
    return p


def _check_creatable(directory: pathlib.Path, name: str, given: str) -> None:
    """Raise unless `directory` exists writable or its nearest existing ancestor is a writable directory."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name}={given!r} cannot be written: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={given!r} cannot be written: no write permission in {str(probe)!r}")
    if str(probe).startswith(("/proc", "/sys")):
        raise ValueError(f"{name}={given!r} cannot be written: {str(probe)!r} is a virtual file system")


class NonFiniteError(ValueError):
    """Raised when logits or scores an analysis would rank contain NaN or infinity."""


def check_finite(tensor: Any, what: str) -> Any:
    """Return `tensor`, or raise [`NonFiniteError`][arithlens.core.validate.NonFiniteError] if any value is NaN/inf."""
    import torch

    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(
            f"{what} contain {n_bad} NaN or infinite value(s) of {tensor.numel()}; an intervention "
            "(e.g. a scale of inf, nan or 1e30) or the model's numerics broke the forward pass, "
            "and ranking such values would be meaningless"
        )
    return tensor
