"""Splitting a sweep over processes with `torch.distributed`, and gathering one result.

Launched under `torchrun --nproc_per_node=K script.py`, each of the K processes (ranks)
runs the same script; a sweep takes only its share of the work with
[`shard`][arithlens.core.distributed.shard] and puts the pieces back together, in the original
order, with [`gather`][arithlens.core.distributed.gather] — every rank gets the whole result,
identical to what one process computes alone. Run as a plain `python script.py`, the same
code sees one process: [`shard`][arithlens.core.distributed.shard] returns every item and [`gather`][arithlens.core.distributed.gather] returns its argument
unchanged, so nothing needs an `if distributed:`.

The process group is created lazily, once, on the first call that needs it, from the
environment `torchrun` sets (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, …): NCCL when CUDA is
available (each rank then uses its own GPU, `cuda:$LOCAL_RANK`), gloo on the CPU. A group
the caller initialised already is used as is. Results travel as pickled Python objects
over a gloo group (they are per-item tables, small next to the work that made them).

Identical results need identical arithmetic: a rank must compute each item exactly as the
single process does. Splitting heads, layers or nodes does (every rank runs the same
batches); splitting *cases* only does if each case lands in the same batch as in one
process — batched matmuls of different batch shapes round differently. Shard whole
batches (`shard(list(model.batches(ids)))`) and reassemble per-case rows with
[`gather_rows`][arithlens.core.distributed.gather_rows].

Example:
    ```python
    # torchrun --nproc_per_node=4 sweep.py
    import pandas as pd
    import arithlens
    from arithlens.core import distributed
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model(device=distributed.device())
    prompts = ["3+5=", "2+2="]
    pairs = [(L, H) for L in range(model.n_layers) for H in range(model.n_heads)]
    rows = []
    for L, H in distributed.shard(pairs):                  # this rank's heads
        run = model.cache(prompts, interventions=[ZeroHead(L, H)])
        rows.append({"layer": L, "head": H, "logprob": run.target_logprob.mean().item()})
    table = distributed.gather(pd.DataFrame(rows))         # all heads, in order, on every rank
    if distributed.is_main():
        table.to_csv("heads.csv", index=False)
    ```
"""

from __future__ import annotations

import atexit
import contextlib
import os
from typing import Any, Iterator, Sequence, TypeVar

import torch

from arithlens.core import validate

T = TypeVar("T")

_state: dict[str, Any] = {"group": None, "owned": False, "alone": 0}


def rank_and_world() -> tuple[int, int]:
    """`(rank, world_size)` of this process: `(0, 1)` unless launched by `torchrun`.

    Under `torchrun` (or any launcher setting `WORLD_SIZE` > 1 with `RANK`,
    `MASTER_ADDR` and `MASTER_PORT`) the first call initialises the default process
    group — NCCL when CUDA is available, gloo otherwise — and later calls reuse it.

    Raises:
        ValueError: `WORLD_SIZE` > 1 but `torch.distributed` is unavailable in this build
            or the launcher's variables are incomplete.
    """
    import torch.distributed as dist

    if _state["alone"]:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        _object_group()
        return dist.get_rank(), dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} is not set: launch with "
            "`torchrun --nproc_per_node=K script.py`"
        )
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "nccl"
        torch.cuda.set_device(_local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    _state["owned"] = True
    atexit.register(_shutdown)
    _object_group()
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process acts as if it were the only one: `shard` keeps every item,
    `gather` returns its argument.

    For work a rank does on its own share — e.g. one LoRA model of a layer sweep — whose
    inner analyses must not split themselves again across ranks that are busy elsewhere.
    """
    _state["alone"] += 1
    try:
        yield
    finally:
        _state["alone"] -= 1


def is_main() -> bool:
    """Whether this is rank 0 (always true in a single process): the one that writes files."""
    return rank_and_world()[0] == 0


def device() -> str:
    """This rank's device: `cuda:$LOCAL_RANK` when CUDA is available, else `"cpu"`.

    Pass it to [`load_model`][arithlens.core.loading.load_model] so each process of a
    `torchrun` job uses its own GPU.
    """
    if torch.cuda.is_available():
        return f"cuda:{_local_rank() % torch.cuda.device_count()}"
    return "cpu"


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier(group=_object_group())


def shard_bounds(n: int, *, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """`[start, stop)` of this rank's contiguous block of `n` items.

    Blocks differ in size by at most one: the first `n % world` ranks get one item more.
    """
    n = validate.non_negative_int(n, "n")
    if (rank is None) != (world is None):
        raise ValueError("shard_bounds: give both rank and world, or neither (this process's)")
    if rank is None or world is None:
        rank, world = rank_and_world()
    else:
        world = validate.positive_int(world, "world")
        rank = validate.integer(rank, "rank", low=0, high=world - 1)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], *, strided: bool = False) -> list[T]:
    """This rank's share of `items`.

    Args:
        items: The whole work list, identical on every rank (heads, layers, cases, batches).
        strided: `False` (default): a contiguous block (see
            [`shard_bounds`][arithlens.core.distributed.shard_bounds]). `True`: every
            `world`-th item from `rank` on, which balances work that grows along the
            list (e.g. layers, when later layers cost more).

    Returns:
        The items this rank computes, in their original order; all of them in a single process.

    Example:
        ```python
        from arithlens.core import distributed
        mine = distributed.shard(list(range(10)))   # rank 0 of 2: [0..4]; rank 1: [5..9]
        ```
    """
    items = list(items)
    rank, world = rank_and_world()
    if world == 1:
        return items
    if strided:
        return items[rank::world]
    start, stop = shard_bounds(len(items), rank=rank, world=world)
    return items[start:stop]


def gather(part: Any, *, strided: bool = False) -> Any:
    """The whole result, in the original item order, on every rank.

    Each rank passes what it computed for its [`shard`][arithlens.core.distributed.shard]
    (with the same `strided`), one row per item, in shard order:

    * a `torch.Tensor` or numpy array: rows along dimension 0;
    * a `pandas.DataFrame` or `Series`: rows (a default `RangeIndex` is renumbered
      `0..n-1`, any other index is kept);
    * a `list`: its items;
    * a `dict` or `tuple` of the above: each entry gathered separately, in one exchange.

    A rank with no items may pass an empty part (or `None`). Tensors come back on the
    device of this rank's part. In a single process `part` is returned unchanged.

    Example:
        ```python
        correct, logprob = distributed.gather((correct, logprob))   # [head, case] each
        ```
    """
    rank, world = rank_and_world()
    if world == 1:
        return part
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, _to_cpu(part), group=_object_group())
    return _restore_device(_merge(parts, strided=strided), part)


def gather_rows(index: Any, values: Any, n: int | None = None) -> Any:
    """Put per-item rows computed anywhere back at their positions, on every rank.

    For work not split by [`shard`][arithlens.core.distributed.shard]'s order — e.g. cases
    computed in whole batches of equal-length prompts, `rows, tokens` from
    `model.batches(ids)`, each rank taking `shard(batches)`.

    Args:
        index: The item positions of this rank's rows (a 1-D integer tensor or list).
        values: This rank's rows, in `index` order: a tensor (rows along dimension 0), a
            DataFrame, or a dict or tuple of these.
        n: The number of items in all (default: one more than the largest position).

    Returns:
        `values` of every rank scattered into one result of `n` rows (a DataFrame with a
        `0..n-1` index).

    Raises:
        ValueError: A position is out of range, computed twice, or not computed at all.

    Example:
        ```python
        rows = torch.cat([r for r, _ in my_batches])
        logprob = distributed.gather_rows(rows, my_logprob, n=len(cases))
        ```
    """
    import pandas as pd

    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
    if _length(values) != len(idx):
        raise ValueError(f"gather_rows: {len(idx)} positions but {_length(values)} rows of values")
    all_idx, all_values = gather((idx, values))
    if n is None:
        total = int(all_idx.max()) + 1 if len(all_idx) else 0
    else:
        total = validate.non_negative_int(n, "n")
    if len(all_idx) and (int(all_idx.min()) < 0 or int(all_idx.max()) >= total):
        raise ValueError(
            f"gather_rows: positions must lie in 0..{total - 1}, got {int(all_idx.min())}..{int(all_idx.max())}"
        )
    counts = torch.bincount(all_idx, minlength=total)
    if bool((counts != 1).any()):
        twice = (counts > 1).nonzero().reshape(-1)[:5].tolist()
        never = (counts == 0).nonzero().reshape(-1)[:5].tolist()
        raise ValueError(
            f"gather_rows: every position must be computed exactly once (twice: {twice}, never: {never})"
        )
    out = _take(all_values, torch.argsort(all_idx))
    if isinstance(out, pd.DataFrame):
        out = out.reset_index(drop=True)
    return out


# ---------------------------------------------------------------------------- internals
def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    if not text.strip().isdigit():
        raise ValueError(f"environment variable {name}={text!r} must be a non-negative integer")
    return int(text)


def _local_rank() -> int:
    return _env_int("LOCAL_RANK", _env_int("RANK", 0))


def _object_group() -> Any:
    """A gloo group for exchanging Python objects (NCCL moves only CUDA tensors)."""
    import torch.distributed as dist

    if _state["group"] is None:
        _state["group"] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _state["group"]


def _shutdown() -> None:
    import torch.distributed as dist

    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state.update(group=None, owned=False)


def _to_cpu(part: Any) -> Any:
    if isinstance(part, torch.Tensor):
        return part.detach().cpu()
    if isinstance(part, dict):
        return {k: _to_cpu(v) for k, v in part.items()}
    if isinstance(part, tuple):
        return tuple(_to_cpu(v) for v in part)
    return part


def _restore_device(whole: Any, part: Any) -> Any:
    if isinstance(part, torch.Tensor):
        return whole.to(part.device)
    if isinstance(part, dict):
        return {k: _restore_device(whole[k], v) for k, v in part.items()}
    if isinstance(part, tuple):
        return tuple(_restore_device(w, v) for w, v in zip(whole, part))
    return whole


def _length(part: Any) -> int:
    if part is None:
        return 0
    if isinstance(part, dict):
        return _length(next(iter(part.values()), None))
    if isinstance(part, tuple):
        return _length(part[0]) if part else 0
    return len(part)


def _merge(parts: list[Any], *, strided: bool) -> Any:
    """Join per-rank parts (rank order) into the single-process result."""
    kinds = {type(p) for p in parts if p is not None}
    if not kinds:
        return None
    if len(kinds) != 1:
        raise ValueError(f"gather: ranks passed different kinds of result: {sorted(k.__name__ for k in kinds)}")
    if any(issubclass(k, (dict, tuple)) for k in kinds):
        first = next(p for p in parts if p is not None)
        if isinstance(first, dict):
            keys = list(first)
            if any(p is not None and list(p) != keys for p in parts):
                raise ValueError("gather: ranks passed dicts with different keys")
            return {k: _merge([None if p is None else p[k] for p in parts], strided=strided) for k in keys}
        if any(p is not None and len(p) != len(first) for p in parts):
            raise ValueError("gather: ranks passed tuples of different lengths")
        return tuple(_merge([None if p is None else p[i] for p in parts], strided=strided) for i in range(len(first)))
    lengths = [_length(p) for p in parts]
    if strided:
        # Item i was computed by rank i % world as its (i // world)-th row.
        world = len(parts)
        n = sum(lengths)
        owner = [(i % world, i // world) for i in range(n)]
        if any(row >= lengths[r] for r, row in owner):
            raise ValueError(f"gather(strided=True): part sizes {lengths} are not those of a strided shard")
        offsets = [sum(lengths[:r]) for r in range(world)]
        order = torch.tensor([offsets[r] + row for r, row in owner], dtype=torch.long)
    else:
        order = None
    joined = _concat([p for p in parts if _length(p) > 0] or [next(p for p in parts if p is not None)])
    return joined if order is None else _take(joined, order)


def _concat(parts: list[Any]) -> Any:
    import numpy as np
    import pandas as pd

    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    if isinstance(first, (pd.DataFrame, pd.Series)):
        renumber = all(isinstance(p.index, pd.RangeIndex) and p.index.start == 0 and p.index.step == 1 for p in parts)
        return pd.concat(parts, ignore_index=renumber)
    if isinstance(first, list):
        return [x for p in parts for x in p]
    raise ValueError(
        f"gather: cannot join {type(first).__name__} parts; pass tensors, arrays, DataFrames, "
        "lists, or a dict or tuple of them"
    )


def _take(whole: Any, order: torch.Tensor) -> Any:
    """Rows of `whole` in `order` (DataFrames keep a renumbered default index)."""
    import numpy as np
    import pandas as pd

    if isinstance(whole, dict):
        return {k: _take(v, order) for k, v in whole.items()}
    if isinstance(whole, tuple):
        return tuple(_take(v, order) for v in whole)
    if isinstance(whole, torch.Tensor):
        return whole[order.to(whole.device)]
    if isinstance(whole, np.ndarray):
        return whole[order.numpy()]
    if isinstance(whole, (pd.DataFrame, pd.Series)):
        out = whole.iloc[order.numpy()]
        if isinstance(whole.index, pd.RangeIndex):
            out = out.reset_index(drop=True)
        return out
    if isinstance(whole, list):
        return [whole[i] for i in order.tolist()]
    raise ValueError(f"cannot reorder a {type(whole).__name__}")
