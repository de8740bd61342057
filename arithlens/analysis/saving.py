"""Results on disk: [`Result.save`][arithlens.analysis.results.Result.save] and
[`load_result`][arithlens.analysis.saving.load_result].

A saved result is a directory:

```text
DIR/
  result.json            {"format": 1, "class": "HeadAblationResult", "meta": {...}, "fields": {...}}
  tables/<path>.parquet  every DataFrame of the result: its .df, its cases, a nested result's tables
  tensors.safetensors    every tensor, keyed by its path in the result ("correct", "coef_per_case.3")
```

`meta` describes where the result came from (read, never needed to load it): the model's
name and revision, the analysis's options as a dict, the dataset, and the versions of
arithlens, torch, transformers and transformer_lens. `fields` holds every dataclass field of
the result as JSON: plain values as they are; tuples, dicts with non-string keys, nested
results and the package's other saveable values (`Component`, `Case`, counterfactual pairs)
as tagged objects (`{"__tuple__": [...]}`, `{"__dict__": [[key, value], ...]}`,
`{"__object__": "Component", "fields": {...}}`); tables and tensors as references into the
files above. Loading rebuilds the same classes, so a loaded result regroups, replots and
re-tests exactly as the one saved.

What is not saved: a field listed in a result class's `unsaved_fields` (live models, e.g.
[`LoRALayerSweepResult.models`][arithlens.cna.lora.LoRALayerSweepResult]) comes back as its
default (empty); the directories those models were saved to are kept. Any other value that is
not a plain value, table, tensor or registered class is refused with a one-line `ValueError`
before anything is written.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
"""The on-disk format's version (`result.json`'s `"format"`)."""

RESULT_JSON = "result.json"
TENSORS = "tensors.safetensors"
TABLES = "tables"

_REGISTRY: dict[str, type] = {}


def saveable(cls: type) -> type:
    """Register a class whose instances a saved result may hold (by class name; a decorator).

    A dataclass is saved field by field; any other class gives `to_saved() -> dict` and a
    classmethod `from_saved(state)` (the state may hold anything saveable).
    """
    name = cls.__name__
    if _REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"two saveable classes are named {name!r}: rename one")
    _REGISTRY[name] = cls
    return cls


def saveable_classes() -> dict[str, type]:
    """Every registered class, by name."""
    return dict(_REGISTRY)


def versions() -> dict[str, str]:
    """The installed versions of the packages a result depends on."""
    out = {}
    for dist in ("arithlens", "torch", "transformers", "transformer_lens", "pandas"):
        try:
            out[dist] = importlib.metadata.version(dist.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


# ---------------------------------------------------------------------------- write
class _Writer:
    def __init__(self) -> None:
        self.tables: dict[str, pd.DataFrame] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def _key(self, path: str, taken: Any) -> str:
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", path) or "value"
        base, i = key, 1
        while key in taken:
            i += 1
            key = f"{base}~{i}"
        return key

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if value is pd.NA:
            return {"__na__": True}
        if isinstance(value, (int, float)) and type(value) in (int, float):
            return value if not isinstance(value, float) or np.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, np.generic):  # numpy scalar: keep its dtype
            return {"__numpy__": value.dtype.str, "value": self.encode(value.item(), path)}
        if isinstance(value, torch.Tensor):
            key = self._key(path, self.tensors)
            self.tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key, "device": str(value.device)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                return {"__ndarray_list__": self.encode(value.tolist(), path), "shape": list(value.shape)}
            key = self._key(path, self.tensors)
            self.tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"__ndarray__": key}
        if isinstance(value, pd.DataFrame):
            if not all(isinstance(c, str) for c in value.columns):
                raise ValueError(f"{path} is a table with non-string column names {list(value.columns)}; parquet needs strings")
            key = self._key(path, self.tables)
            # Parquet gives an object column (None next to ints, bools next to NaN) a type of
            # its own; its cells are written as JSON text instead and read back as they were.
            cells = [c for c in value.columns if value[c].dtype == object]
            frame = value.copy()
            for c in cells:
                frame[c] = pd.array([json.dumps(self.encode(v, _join(path, c)), allow_nan=False) for v in value[c]], dtype=object)
            self.tables[key] = frame
            return {"__frame__": f"{TABLES}/{key}.parquet", "json_columns": cells}
        if isinstance(value, pd.Series):
            return {"__series__": self.encode(value.to_frame(name=value.name if value.name is not None else 0), path)}
        if type(value) is tuple:
            return {"__tuple__": [self.encode(v, _join(path, i)) for i, v in enumerate(value)]}
        if type(value) is list:
            return [self.encode(v, _join(path, i)) for i, v in enumerate(value)]
        if type(value) is dict:
            return {"__dict__": [[self.encode(k, _join(path, "key")), self.encode(v, _join(path, _label(k)))] for k, v in value.items()]}
        cls = type(value)
        if _REGISTRY.get(cls.__name__) is cls:
            state = _state(value)
            return {"__object__": cls.__name__, "fields": {k: self.encode(v, _join(path, k)) for k, v in state.items()}}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple not registered
            raise ValueError(f"{path} is a {cls.__name__} (a NamedTuple): register it with arithlens.analysis.saving.saveable")
        raise ValueError(
            f"{path} holds a {cls.__module__}.{cls.__name__}, which a saved result cannot hold; "
            "list the field in its result's unsaved_fields or register the class with saveable"
        )


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _label(key: Any) -> str:
    if isinstance(key, tuple):
        return "_".join(map(str, key))
    return str(key)


def _state(value: Any) -> dict[str, Any]:
    if hasattr(type(value), "to_saved"):
        return value.to_saved()
    if dataclasses.is_dataclass(value):
        skip = {"meta", *getattr(type(value), "unsaved_fields", ())}  # meta: result.json's own entry
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in skip}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return dict(value._asdict())
    raise ValueError(f"{type(value).__name__} is registered as saveable but is neither a dataclass, a NamedTuple nor has to_saved()")


def check_path(path: Any, name: str = "path") -> str:
    """`path` as a string if a result can be saved there: a new or empty directory, or one
    holding a saved result (which saving replaces); else a one-line `ValueError`."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{name}={path!r} must be a directory path")
    path = os.path.expanduser(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a file, not a directory")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, RESULT_JSON)):
        raise ValueError(f"{name}={path!r} is a non-empty directory that holds no saved result; choose an empty or new one")
    return path


def save_result(result: Any, path: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> str:
    """Write `result` to the directory `path` (created; an existing saved result there is
    replaced, any other non-empty directory refused) and return the path. See the module
    docstring for the layout."""
    path = check_path(path)
    if _REGISTRY.get(type(result).__name__) is not type(result):
        raise ValueError(f"a {type(result).__name__} is not a saveable result")
    writer = _Writer()
    tree = writer.encode(result, "")["fields"]  # every check before anything is written
    described = {**getattr(result, "meta", {}), **(meta or {}), "versions": versions()}
    doc = {"format": FORMAT, "class": type(result).__name__, "meta": _jsonable(described), "fields": tree}
    text = json.dumps(doc, indent=1, allow_nan=False)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".saving-", dir=parent)  # written whole, then moved in place
    try:
        os.makedirs(os.path.join(staging, TABLES))
        for key, frame in writer.tables.items():
            _write_frame(frame, os.path.join(staging, TABLES, f"{key}.parquet"), key)
        if writer.tensors:
            save_file(writer.tensors, os.path.join(staging, TENSORS))
        with open(os.path.join(staging, RESULT_JSON), "w") as f:
            f.write(text)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _write_frame(frame: pd.DataFrame, file: str, key: str) -> None:
    frame.to_parquet(file, engine="pyarrow")


def _jsonable(value: Any) -> Any:
    """A JSON description of `value` for `meta` (not read back: `repr` for anything else)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


# ---------------------------------------------------------------------------- read
class _Reader:
    def __init__(self, root: str, tensors: dict[str, torch.Tensor]) -> None:
        self.root = root
        self.tensors = tensors

    def decode(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {_hashable(self.decode(k)): self.decode(v) for k, v in node["__dict__"]}
        if "__float__" in node:
            return float(node["__float__"])
        if "__numpy__" in node:
            return np.dtype(node["__numpy__"]).type(self.decode(node["value"]))
        if "__tensor__" in node:
            return self.tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            return self.tensors[node["__ndarray__"]].numpy()
        if "__ndarray_list__" in node:
            out = np.empty(len(node["__ndarray_list__"]), dtype=object)
            out[:] = self.decode(node["__ndarray_list__"])
            return out.reshape(node["shape"])
        if "__na__" in node:
            return pd.NA
        if "__frame__" in node:
            frame = pd.read_parquet(os.path.join(self.root, node["__frame__"]), engine="pyarrow")
            for c in node.get("json_columns", []):
                column = np.empty(len(frame), dtype=object)
                column[:] = [self.decode(json.loads(v)) for v in frame[c]]
                frame[c] = pd.Series(column, index=frame.index, dtype=object)
            return frame
        if "__series__" in node:
            frame = self.decode(node["__series__"])
            return frame[frame.columns[0]]
        if "__object__" in node:
            cls = _REGISTRY.get(node["__object__"])
            if cls is None:
                raise ValueError(f"the saved result holds a {node['__object__']}, which this arithlens does not know")
            state = {k: self.decode(v) for k, v in node["fields"].items()}
            return _rebuild(cls, state)
        raise ValueError(f"unknown node in the saved result: {sorted(node)}")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _rebuild(cls: type, state: dict[str, Any]) -> Any:
    if hasattr(cls, "from_saved"):
        return cls.from_saved(state)
    if dataclasses.is_dataclass(cls):
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in state.items() if k in init})
        for k, v in state.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    return cls(**state)  # a NamedTuple


def load_result(path: str | os.PathLike) -> Any:
    """Open a result saved with [`Result.save`][arithlens.analysis.results.Result.save]: the
    same class, its tables, tensors (on the CPU) and every other field as saved. Its
    provenance (model, options, dataset, versions) is `result.meta`."""
    path = os.fspath(path)
    file = os.path.join(path, RESULT_JSON)
    if not os.path.isfile(file):
        raise ValueError(f"path={path!r} holds no saved result (no {RESULT_JSON})")
    with open(file) as f:
        doc = json.load(f)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{file} is format {doc.get('format')!r}; this arithlens reads format {FORMAT}")
    tensors: dict[str, torch.Tensor] = {}
    if os.path.isfile(os.path.join(path, TENSORS)):
        tensors = load_file(os.path.join(path, TENSORS))
    result = _Reader(path, tensors).decode({"__object__": doc["class"], "fields": doc["fields"]})
    result.meta = doc.get("meta", {})
    return result
