"""Vocabulary projections of FFN neurons, `U = W_out[l] @ W_U`, computed once and shared.

Every exact CNA score of neuron `k` of layer `l` reads the row `U[k] = fc2_k @ W_U`: the
logit change per unit of coefficient. The rows are model constants, so one chunk of them
serves every case and both sides of a comparison in a call, and — with
`CNAAnalysis(keep_projections=True)` — every later call on the same model, until the model's
[`ProjectionCache`][arithlens.cna.projections.ProjectionCache] is cleared or evicts them.

A chunk is stored normalised, `ũ = (U − mid) / half` with `mid`, `half` the midpoint and
half-range of each row, so `|ũ| ≤ 1`: the form the series kernel evaluates, and one whose
rounding in a reduced dtype (`projection_dtype="bfloat16"`) is bounded relative to 1.

Example:
    ```python
    import arithlens
    from arithlens.cna import CNAAnalysis, NeuronImportance
    from arithlens.cna.projections import projection_cache

    model = arithlens.load_model()
    job = NeuronImportance(keep_projections=True)
    job.run(model, ["3+5="])          # computes and keeps the projections
    job.run(model, ["2+4="])          # reuses them
    projection_cache(model).clear()   # frees them
    ```
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from arithlens.core import validate

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
"""Largest relative rounding error of a stored value, per dtype."""


@dataclass
class Projection:
    """One chunk of vocabulary projections, rows `start:stop` of layer `layer`.

    Attributes:
        layer: The FFN layer.
        start: First neuron of the chunk.
        stop: One past the last neuron.
        u: `[neuron, vocab]` normalised rows `(U − mid) / half`, in the storage dtype.
        mid: `[neuron]` midpoint of each row of `U` (float32).
        half: `[neuron]` half-range of each row (float32; a constant row gets 1).
    """

    layer: int
    start: int
    stop: int
    u: Float[torch.Tensor, "neuron vocab"]
    mid: Float[torch.Tensor, "neuron"]
    half: Float[torch.Tensor, "neuron"]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.u, self.mid, self.half))

    @property
    def roundoff(self) -> float:
        """Largest relative rounding error of a stored entry of `u`."""
        return UNIT_ROUNDOFF[self.u.dtype]

    def rows(self, index: torch.Tensor) -> Float[torch.Tensor, "n vocab"]:
        """`U` (not normalised) of some rows of the chunk, float32 (from the stored values)."""
        return torch.addcmul(self.mid[index, None], self.half[index, None], self.u[index].float())


@torch.no_grad()
def compute(
    W_out: Float[torch.Tensor, "d_mlp d_model"],
    W_U: Float[torch.Tensor, "d_model vocab"],
    layer: int,
    start: int,
    stop: int,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    normalize: bool = True,
) -> Projection:
    """`W_out[start:stop] @ W_U` (`W_out` of one layer), normalised (in `out`'s storage when given and float32).

    `normalize=False` leaves the rows as they are (`mid = 0`, `half = 1`): enough for the
    direct log-sum-exp, and four passes over the chunk cheaper.
    """
    rows = W_out[start:stop].float()
    if out is not None and dtype == torch.float32:
        U = torch.matmul(rows, W_U, out=out[: stop - start])
    else:
        U = rows @ W_U
    if not normalize:
        ones = torch.ones(U.shape[0], device=U.device)
        return Projection(layer, start, stop, U, torch.zeros_like(ones), ones)
    hi, lo = U.amax(-1), U.amin(-1)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    half = torch.where(half > 0, half, torch.ones_like(half))
    U.sub_(mid[:, None]).div_(half[:, None])
    u = U if dtype == torch.float32 else U.to(dtype)
    return Projection(layer, start, stop, u, mid, half)


def _fingerprint(model: Any) -> tuple[float, ...]:
    """A cheap checksum of the weights projections depend on (stale entries are dropped)."""
    b = model.bridge
    w_out = sum(float(blk.mlp.W_out.detach().float().sum()) for blk in b.blocks)
    return (float(b.W_U.detach().float().sum()), w_out, tuple(b.W_U.shape))


class ProjectionCache:
    """Kept vocabulary projections of one model, least recently used first out.

    Entries are keyed by `(layer, start, stop, dtype)`; a call with another
    `memory_budget` chunks the neurons differently and computes (and keeps) its own. If the
    model's `W_U` or `W_out` change, every entry is dropped at the next use.

    Attributes:
        max_bytes: Most bytes held.
    """

    def __init__(self, max_bytes: float = 4e9):
        self.max_bytes = validate.positive_number(max_bytes, "projection_bytes")
        self._store: OrderedDict[tuple, Projection] = OrderedDict()
        self._fingerprint: tuple | None = None
        self.hits = 0
        self.misses = 0

    def check(self, model: Any) -> None:
        """Drop every entry if the model's weights are not those the entries were made from."""
        fp = _fingerprint(model)
        if fp != self._fingerprint:
            self._store.clear()
            self._fingerprint = fp

    def get(self, key: tuple) -> Projection | None:
        hit = self._store.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return hit

    def put(self, key: tuple, value: Projection) -> None:
        if value.nbytes > self.max_bytes:
            return
        self._store[key] = value
        self._store.move_to_end(key)
        while self.nbytes > self.max_bytes:
            self._store.popitem(last=False)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(p.nbytes for p in self._store.values())

    def clear(self) -> None:
        """Free every kept projection."""
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ProjectionCache({len(self)} chunks, {self.nbytes / 1e6:.1f} MB of {self.max_bytes / 1e6:.0f} MB)"


_CACHES: "weakref.WeakKeyDictionary[Any, ProjectionCache]" = weakref.WeakKeyDictionary()


def projection_cache(model: Any, max_bytes: float | None = None) -> ProjectionCache:
    """The [`ProjectionCache`][arithlens.cna.projections.ProjectionCache] of `model` (made on first use)."""
    cache = _CACHES.get(model)
    if cache is None:
        cache = ProjectionCache(4e9 if max_bytes is None else max_bytes)
        _CACHES[model] = cache
    elif max_bytes is not None:
        cache.max_bytes = validate.positive_number(max_bytes, "projection_bytes")
    return cache
