"""The §4.1 score kernels: neurons (exact and first order), heads and whole layers.

The importance of FFN neuron `k` of layer `l` for a case is the increase of the log
probability of its scored token `w` when the neuron's subvalue is added to the residual
stream entering the MLP (Yu & Ananiadou 2024b), read out with the final norm's scale `σ`
frozen ([`arithlens.core.readout`][arithlens.core.readout]):

    imp(l, k) = log p(w | x_mid + m_k fc2_k) − log p(w | x_mid),   p(· | v) = softmax((v / σ) W_U + b_U)

With `b = (x_mid / σ) W_U + b_U` the base logits, `c = m_k / σ` and `U_k = fc2_k W_U` the
neuron's vocabulary projection (a model constant, see
[`arithlens.cna.projections`][arithlens.cna.projections]):

    imp(l, k) = c U_kw − log Σ_v p_v exp(c U_kv),   p = softmax(b)

**Exact kernel.** Projections are computed once per chunk of neurons and serve every case
and both sides of a comparison. The log-sum-exp is then evaluated one of two ways, each
exact to a stated bound:

* *direct*: `log Σ_v exp(b_v + c U_kv)` in float32. For at most `FUSED_MAX_PAIRS` (case,
  side) pairs and no kept projections it runs tile by tile (`D_ROWS` neurons × `D_VOCAB`
  tokens): each tile of `U` is made by a matmul into cache and every pair's exponentials
  of it are summed there, so `U` is never stored. Exponents are clamped at `EXP_FLOOR`
  (float32 `exp` of subnormal results takes a slow path); sums below `e^LSE_REDO` are redone
  max-shifted, so the clamp changes no score by more than ~1e-16 relative;
* *series*: with `U_kv = mid_k + half_k ũ_kv`, `|ũ| ≤ 1` and `t = |c| half_k`,
  `Σ_v p_v exp(c U_kv) = exp(c mid_k) Σ_j (c half_k)^j / j! · μ_j`, `μ_j = Σ_v p_v ũ_kv^j`.
  The moments `μ_j` of every neuron and case are matrix products `ũ^j @ p`, shared by all
  cases of a chunk, so many cases cost a few matmuls instead of one exponential per
  (case, neuron, token). The series is cut at the first `J` whose remainder bound
  `t^(J+1) e^t / (J+1)!` (Taylor), divided by the lower bound `e^(−t) − remainder` of
  the sum, is at most `CNAAnalysis.tolerance` nats — that bound is the largest error the
  truncation adds to the score, and the largest one is returned as `NeuronScores.bound`.
  Scores whose `t` is too large for 16 terms use the direct form.

The series is used when a chunk has at least `SERIES_MIN_SIDES` (case, side) pairs (or
the kept projections are stored in a reduced dtype); below that the direct form is faster.

Fast mode (first order, then exact re-scoring) is in [`arithlens.cna.scores`][arithlens.cna.scores];
the same score of heads and whole layers in [`arithlens.cna.components`][arithlens.cna.components].

Memory: the kernel works in chunks of neurons and blocks of (case, side) pairs sized to
`memory_budget` bytes; it never holds a `[case, layer, vocab]` tensor.

Example:
    ```python
    import arithlens
    from arithlens.cna.inputs import Activations, cna_hooks
    from arithlens.cna.scores import exact_neuron_scores

    model = arithlens.load_model()
    cache = model.cache(["3+5="], names=cna_hooks(model, [29]))
    (scores,) = exact_neuron_scores(model, [Activations(cache)], [29])
    scores.importance.shape      # [case, layer, d_mlp]
    ```
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence
import einops
import torch
from jaxtyping import Bool
from tqdm.auto import tqdm
from arithlens.core import distributed
from arithlens.cna import projections as proj
from arithlens.cna.inputs import Activations
from arithlens.core.blocks import mlp_gain
from arithlens.core.readout import Readout
from jaxtyping import Float, Int
from arithlens.core import validate

SERIES_MIN_SIDES = 8
"""(case, side) pairs per block from which the series evaluation is used (it is faster there)."""
MAX_TERMS = 16
"""Most Taylor terms the series evaluates; scores needing more use the direct log-sum-exp."""
V_BLOCK = 4096
"""Vocabulary block of the moment matmuls: float32 within a block, float64 across blocks."""
_FACT = [float(math.factorial(j)) for j in range(MAX_TERMS + 2)]


@dataclass
class NeuronScores:
    """Per-case neuron scores of one side.

    Attributes:
        importance: `[case, layer, d_mlp]` the §4.1 score (nats).
        coef: `[case, layer, d_mlp]` the coefficient scores `m_k`.
        layers: The scored layers, in the order of the second axis.
        exact: In fast mode, which scores were computed exactly (the rest are first order).
        first_order: In fast mode, the first-order scores.
        bound: Largest error (nats) the series evaluation may have added to any score.
    """

    importance: Float[torch.Tensor, "case layer d_mlp"]
    coef: Float[torch.Tensor, "case layer d_mlp"]
    layers: list[int]
    exact: Bool[torch.Tensor, "case layer d_mlp"] | None = None
    first_order: Float[torch.Tensor, "case layer d_mlp"] | None = None
    bound: float = 0.0


# ---------------------------------------------------------------------------- series helpers
def series_terms(t: Float[torch.Tensor, "..."], tolerance: float, roundoff: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Terms `J` each score's series needs for `tolerance`, and the bound it then has.

    `J = MAX_TERMS + 1` where 16 terms do not reach the tolerance (those scores use the
    direct form). `roundoff` adds the bound of stored projections rounded to that relative
    precision (terms `j ≥ 2`; `μ_1` is always computed from float32 weights).
    """
    t = t.double()
    # One term count at a time: memory stays a few `t`-sized tensors, not MAX_TERMS of them.
    exp_t, exp_neg, extra = torch.exp(t), torch.exp(-t), roundoff * t * torch.expm1(t)
    first = torch.full_like(t, MAX_TERMS + 1, dtype=torch.long)
    chosen = torch.full_like(t, math.inf)
    for j in range(1, MAX_TERMS + 1):
        rem = t ** (j + 1) * exp_t / _FACT[j + 1]
        rem = rem + extra * (1 + roundoff) ** j
        low = exp_neg - rem
        bound = torch.where(low > 0, rem / low.clamp_min(1e-300), torch.full_like(rem, math.inf))
        new = (bound <= tolerance) & (first > MAX_TERMS)
        first[new], chosen[new] = j, bound[new]
    return first, chosen


def _count(stats: dict | None, flops: float) -> None:
    """Add `flops` matmul FLOPs to `stats["matmul_flops"]` (benchmarks read it)."""
    if stats is not None:
        stats["matmul_flops"] = stats.get("matmul_flops", 0.0) + float(flops)


def _vocab_block(V: int) -> int:
    """A divisor of `V` near `V_BLOCK` (so blocks are views, not copies), or 0 when there is none."""
    if V <= V_BLOCK:
        return V
    for vb in range(V_BLOCK, V_BLOCK // 4, -1):
        if V % vb == 0:
            return vb
    return 0


def _blocked_matmul(a: Float[torch.Tensor, "r vocab"], b: Float[torch.Tensor, "vocab k"]) -> Float[torch.Tensor, "r k"]:
    """`a @ b` over a long vocabulary axis: float32 products per block of ~`V_BLOCK`, float64 sums across blocks.

    A single float32 accumulation over 49,152 entries loses ~1e-5 relative; blocks keep the
    moments' error near float32's own. One batched matmul when a block size divides `V`.
    """
    r, V = a.shape
    vb = _vocab_block(V)
    if vb:
        lhs = einops.rearrange(a.float(), "r (nb vb) -> nb r vb", vb=vb)  # views: vb divides V
        parts = torch.bmm(lhs, einops.rearrange(b, "(nb vb) k -> nb vb k", vb=vb))  # [nb, r, k]
        return parts.sum(0, dtype=torch.float64)
    out = torch.zeros(r, b.shape[1], dtype=torch.float64, device=a.device)
    for s0 in range(0, V, V_BLOCK):
        out += a[:, s0 : s0 + V_BLOCK].float() @ b[s0 : s0 + V_BLOCK]
    return out


def layer_w_out(model: Any, layer: int) -> Float[torch.Tensor, "d_mlp d_model"]:
    """The directions one layer's neurons write to the residual stream: `W_out`, times the
    post-MLP norm's gain `g₂` where the family has one ([`arithlens.core.blocks`][arithlens.core.blocks];
    the per-case `1 / s₂` is in the `"write_coef"` coefficients). From the layer's block: the
    bridge's stacked `W_out` rebuilds every layer on each access."""
    W = model.bridge.blocks[int(layer)].mlp.W_out.detach()
    gain = mlp_gain(model, layer)
    return W if gain is None else W.float() * gain.to(W.device)


def _sizes(budget: float, vocab: int, d_mlp: int, n_sides: int) -> tuple[int, int]:
    """Neurons per projection chunk and (case, side) pairs per block for `budget` bytes.

    `[neuron, vocab]` float32 buffers take 60 % (projection, powers, direct logits, and up
    to two compacted copies in the series); a block's base logits, probabilities and their
    temporaries (about eight `[vocab]` rows per pair, and per (pair, neuron) of the chunk
    about sixteen float64 numbers: the series' sums, powers and term counts) 30 %; a
    row-major copy of `W_U` 10 %.
    """
    row = vocab * 4
    n_chunk = int(max(1, min(d_mlp, budget * 0.6 // (5 * row))))
    n_block = int(max(1, min(n_sides, budget * 0.3 // (8 * row + 16 * 8 * n_chunk))))
    return n_chunk, n_block


class _Block:
    """A block of (case, side) pairs at one layer: base logits, probabilities and `W_U p`."""

    def __init__(self, ro: Readout, x: torch.Tensor, scale: torch.Tensor, w: torch.Tensor, series: bool, stats: dict):
        base = ro.raw(x, scale)  # [b, V]: no soft-capping here (the capped kernel is separate)
        d, V = ro.W_U.shape
        _count(stats, 2 * x.shape[0] * d * V * (2 if series else 1))
        validate.check_finite(base, "the base logits")
        self.shifted = base - base.amax(-1, keepdim=True)
        self.lse = torch.logsumexp(self.shifted, -1)  # of the shifted logits
        self.w = w
        if series:
            P = torch.softmax(self.shifted, -1)
            self.PT = P.T.contiguous()  # [V, b]
            self.mass = P.sum(-1, dtype=torch.float64)  # Σ_v p_v as computed (≈ 1)
            self.WUp = _blocked_matmul(P, ro.W_U.T).T  # [d_model, b]: W_U p, for μ_1


# ---------------------------------------------------------------------------- exact neuron scores
EXP_FLOOR = -87.0
"""Exponents are clamped here before `exp`: float32's `exp` of anything below ≈ −87.3
underflows to a subnormal or zero, which the vectorised kernels handle on a slow path
(10–40× slower per element on the CPUs measured, see docs/findings.md). A clamped term adds at most
`e^−87 ≈ 1.6e−38`; rows whose sum is below `e^LSE_REDO` are redone exactly, so the added
error is below `V·e^−87 / e^LSE_REDO` relative (≈ 1e−16 for a 49k vocabulary)."""
FUSED_MAX_PAIRS = 7
"""Blocks of at most this many (case, side) pairs, without kept projections, use the fused tile
kernel; larger direct blocks compute a chunk of projections once and read it per pair."""
LSE_REDO = -40.0
"""Log-sums below this (or not finite) are recomputed with `torch.logsumexp` (max-shifted)."""
D_ROWS, D_VOCAB = 256, 4096
"""Tile of the fused direct kernel: `D_ROWS` neurons × `D_VOCAB` tokens, so a tile of
projections and the exponentials of a few (case, side) pairs stay in a core's L2 cache."""


def _fused_direct(
    shifted: Float[torch.Tensor, "b vocab"],
    slope: Float[torch.Tensor, "b n"],
    tile: Any,
    full_rows: Any,
) -> Float[torch.Tensor, "b n"]:
    """`log Σ_v exp(shifted_bv + slope_bk · U_kv)` for every pair `b` and neuron `k`, tile by tile.

    `tile(k0, k1, v0, v1)` gives `U[k0:k1, v0:v1]` (a matmul into cache, or a slice of kept
    projections); the exponentials of every pair are made and summed while the tile is in
    cache — one pass over memory, no `[n, vocab]` temporaries. The vocabulary is the outer
    loop so the `W_U` columns a tile reads stay in the last-level cache for all neurons.
    Sums are float32 within a tile (≤ `D_VOCAB` terms) and float64 across tiles.
    `full_rows(k)` gives one whole row of `U`, for the rare scores redone with a max shift.
    """
    (b, V), n = shifted.shape, slope.shape[1]
    group = max(1, min(b, 4))  # pairs per pass over a tile: their exponentials stay in cache too
    acc = torch.zeros(b, n, dtype=torch.float64, device=shifted.device)
    buf = torch.empty(group * D_ROWS * D_VOCAB, device=shifted.device)
    for v0 in range(0, V, D_VOCAB):
        v1 = min(V, v0 + D_VOCAB)
        for k0 in range(0, n, D_ROWS):
            k1 = min(n, k0 + D_ROWS)
            U = tile(k0, k1, v0, v1)[None]  # [1, r, w]
            for g0 in range(0, b, group):
                g1 = min(b, g0 + group)
                e = buf[: (g1 - g0) * (k1 - k0) * (v1 - v0)].view(g1 - g0, k1 - k0, v1 - v0)
                torch.addcmul(shifted[g0:g1, None, v0:v1], slope[g0:g1, k0:k1, None], U, out=e)
                acc[g0:g1, k0:k1] += e.clamp_min_(EXP_FLOOR).exp_().sum(-1)
    lse = acc.log()
    bad = ~torch.isfinite(lse) | (lse < LSE_REDO)
    for i, k in bad.nonzero().tolist():  # a huge coefficient: overflow, or every term (nearly) underflowed
        lse[i, k] = float(torch.logsumexp(shifted[i] + slope[i, k] * full_rows(k), -1))
    return lse


def _series(
    blk: _Block, u: torch.Tensor, x: torch.Tensor, terms: torch.Tensor, mu1: torch.Tensor, buf: torch.Tensor, stats: dict | None
) -> torch.Tensor:
    """`log Σ_v p_v exp(x ũ_kv)` for `[n, b]` pairs (`x = c·half`) by the truncated series, `terms` per row."""
    n = u.shape[0]
    top = int(terms.max()) if n else 0
    S = blk.mass[None, :] + x * mu1  # j = 0, 1
    idx = torch.arange(n)
    cur, pw = u, None
    for j in range(2, top + 1):
        keep = terms[idx] >= j
        if int(keep.sum()) <= len(idx) // 2:  # at most half the rows need this term: compact
            idx, cur = idx[keep], cur[keep]
            pw = pw[keep] if pw is not None else None
        if pw is None:
            pw = torch.mul(cur, cur, out=buf[: len(idx)]) if cur.dtype == torch.float32 else cur.float() * cur.float()
        else:
            pw.mul_(cur)
        use = (terms[idx] >= j).double()[:, None]
        S[idx] += use * x[idx] ** j / _FACT[j] * _blocked_matmul(pw, blk.PT)
        _count(stats, 2 * pw.shape[0] * pw.shape[1] * blk.PT.shape[1])
    return S.log()


def _tile_matmul(fc2: Float[torch.Tensor, "n d_model"], W_UT: Float[torch.Tensor, "vocab d_model"]) -> Any:
    """`tile(k0, k1, v0, v1) = fc2[k0:k1] @ W_U[:, v0:v1]`, into one reused buffer. `W_UT` is
    `W_U` transposed and row-major: its row blocks are contiguous (a column block of a
    row-major `W_U` makes PyTorch's CPU matmul copy or take a slow path, ~15× slower)."""
    buf = torch.empty(D_ROWS * D_VOCAB, device=fc2.device)

    def tile(k0: int, k1: int, v0: int, v1: int) -> torch.Tensor:
        return torch.matmul(fc2[k0:k1], W_UT[v0:v1].T, out=buf[: (k1 - k0) * (v1 - v0)].view(k1 - k0, v1 - v0))

    return tile


def _scatter(imps: list[torch.Tensor], imp: torch.Tensor, who: torch.Tensor, where: torch.Tensor, li: int, k0: int, k1: int, dev: Any) -> None:
    """Rows of a block's `[pair, neuron]` scores into each side's `[case, layer, d_mlp]` tensor."""
    for s in who.unique().tolist():
        sel = who == s
        imps[s][where[sel].to(dev), li, k0:k1] = imp[sel.to(dev)]


@torch.no_grad()
def exact_neuron_scores(
    model: Any,
    sides: Sequence[Activations],
    layers: Sequence[int],
    *,
    memory_budget: float = 1e9,
    tolerance: float = 1e-7,
    projections: "proj.ProjectionCache | None" = None,
    projection_dtype: str = "float32",
    progress: bool = False,
    stats: dict | None = None,
) -> list[NeuronScores]:
    """Exact §4.1 importance of every neuron of `layers`, for every case of every side.

    All sides share each chunk of vocabulary projections (one `W_out @ W_U` matmul per chunk
    per call; none with a warm `projections` cache). `stats`, when given, receives
    `matmul_flops`: the FLOPs of the matrix products run.

    Under `torchrun` each rank scores a contiguous block of `layers` (each layer exactly as
    one process does: the same case blocks, chunks and series choice) and every rank gets
    all layers back ([`arithlens.core.distributed`][arithlens.core.distributed]).
    """
    ro = Readout(model)
    if ro.cap is not None:  # the log-sum-exp is no longer a series in the coefficient
        return _capped_neuron_scores(model, sides, layers, ro, memory_budget, progress)
    dev, V, d_mlp = ro.device, ro.W_U.shape[1], model.d_mlp
    counts = [len(s) for s in sides]
    total = sum(counts)
    n_chunk, n_block = _sizes(memory_budget, V, d_mlp, total)
    dtype = proj.DTYPES[projection_dtype]
    roundoff = proj.UNIT_ROUNDOFF[dtype] if dtype != torch.float32 else 0.0
    if projections is not None:
        projections.check(model)
    mine = distributed.shard(range(len(layers)))  # this rank's layer indices (all, in one process)
    imps = [torch.empty(n, len(mine), d_mlp, device=dev) for n in counts]  # on the device: no copy per chunk
    bound = [0.0 for _ in sides]
    who = torch.cat([torch.full((n,), s) for s, n in enumerate(counts)])
    where = torch.cat([torch.arange(n) for n in counts])
    w_all = torch.cat([s.w for s in sides]).to(dev)
    scale_all = torch.cat([s.scale for s in sides]).to(dev)
    # W_U row-major makes the projection matmul ~20 % faster on CPU; a copy, when the budget has room.
    W_U = ro.W_U.contiguous() if ro.W_U.numel() * 4 <= 0.1 * memory_budget else ro.W_U
    # Three [neuron, vocab] buffers, reused: the projection, the series' powers, the direct logits.
    ubuf = pbuf = dbuf = W_UT = None  # made when a layer first needs the chunked path (the fused kernel does not)
    bar = tqdm(total=len(mine) * math.ceil(d_mlp / n_chunk), desc="neuron importance", unit="chunk", disable=not progress)
    try:
        for li, layer in enumerate(layers[i] for i in mine):
            x_all = torch.cat([s.at("mlp_base", layer) for s in sides]).to(dev)
            c_all = torch.cat([s.at("write_coef", layer) for s in sides]).to(dev) / scale_all[:, None]
            validate.check_finite(c_all, f"the coefficient scores of layer {layer}")
            W_l = layer_w_out(model, layer)
            spans = [(b0, min(total, b0 + n_block)) for b0 in range(0, total, n_block)]
            series = {sp: tolerance > 0 and (sp[1] - sp[0] >= SERIES_MIN_SIDES or dtype != torch.float32) for sp in spans}
            # The direct form needs no normalised rows; the series and kept chunks do.
            normalize = projections is not None or any(series.values())
            # One block of pairs is kept for the layer when it is the only one; several are rebuilt per chunk.
            # Few pairs, no kept projections: the fused tile kernel (projections made in cache, never stored).
            fused = [sp for sp in spans if not series[sp] and sp[1] - sp[0] <= FUSED_MAX_PAIRS] if projections is None else []
            if fused:
                fc2 = W_l.float().contiguous()  # the layer's rows, shared by its blocks
                if W_UT is None:  # a transposed view when W_U is one (tied embeddings), else one copy per call
                    W_UT = ro.W_U.T if ro.W_U.T.is_contiguous() else ro.W_U.T.contiguous()
                tile = _tile_matmul(fc2, W_UT)
            for sp in fused:
                blk = _Block(ro, x_all[sp[0] : sp[1]], scale_all[sp[0] : sp[1]], w_all[sp[0] : sp[1]], False, stats)
                c = c_all[sp[0] : sp[1]]
                lse = _fused_direct(blk.shifted, c, tile, lambda k: fc2[k] @ W_U)
                _count(stats, 2 * d_mlp * fc2.shape[1] * V + 2 * d_mlp * fc2.shape[1] * c.shape[0])
                u_w = (W_U[:, blk.w].T @ fc2.T).double()  # [b, d_mlp]: the exact w column
                imp = (c.double() * u_w - (lse - blk.lse.double()[:, None])).float()
                _scatter(imps, imp, who[sp[0] : sp[1]], where[sp[0] : sp[1]], li, 0, d_mlp, dev)
            spans = [sp for sp in spans if sp not in fused]
            if not spans:
                bar.update(math.ceil(d_mlp / n_chunk))
                continue
            if ubuf is None:
                ubuf, pbuf, dbuf = (torch.empty(min(n_chunk, d_mlp), V, device=dev) for _ in range(3))
            kept_blocks = {} if len(spans) > 1 else {sp: _Block(ro, x_all[sp[0] : sp[1]], scale_all[sp[0] : sp[1]], w_all[sp[0] : sp[1]], series[sp], stats) for sp in spans[:1]}
            for k0 in range(0, d_mlp, n_chunk):
                k1 = min(d_mlp, k0 + n_chunk)
                key = (layer, k0, k1, projection_dtype)
                pr = projections.get(key) if projections is not None else None
                if pr is None:
                    pr = proj.compute(W_l, W_U, layer, k0, k1, dtype, out=None if projections is not None else ubuf, normalize=normalize)
                    _count(stats, 2 * (k1 - k0) * W_l.shape[1] * V)
                    if projections is not None:
                        projections.put(key, pr)
                fc2 = W_l[k0:k1].float()
                for sp in spans:
                    blk = kept_blocks.get(sp) or _Block(ro, x_all[sp[0] : sp[1]], scale_all[sp[0] : sp[1]], w_all[sp[0] : sp[1]], series[sp], stats)
                    c = c_all[sp[0] : sp[1], k0:k1]
                    lse = _chunk_lse(blk, pr, c, fc2, ro, tolerance, roundoff, pbuf, dbuf, bound, who[sp[0] : sp[1]], stats)
                    u_w = (fc2 @ ro.W_U[:, blk.w]).double()  # [n, b]: the exact w column
                    _count(stats, 2 * fc2.shape[0] * fc2.shape[1] * c.shape[0])
                    imp = (c.T.double() * u_w - lse).T.float()  # [b, n]
                    _scatter(imps, imp, who[sp[0] : sp[1]], where[sp[0] : sp[1]], li, k0, k1, dev)
                bar.update(1)
    finally:
        bar.close()
    imps = [t.cpu() for t in imps]
    if distributed.rank_and_world()[1] > 1:  # layers back together on every rank (gather joins dim 0)
        parts = distributed.gather(tuple(einops.rearrange(t, "case layer n -> layer case n") for t in imps))
        imps = [einops.rearrange(t, "layer case n -> case layer n") for t in parts]
        bound = [max(b) for b in zip(*distributed.gather([bound]))]
    out = []
    for s, side in enumerate(sides):
        validate.check_finite(imps[s], "the importance scores")
        coef = torch.stack([side.at("post", L) for L in layers], dim=1)
        out.append(NeuronScores(imps[s], coef, list(layers), bound=bound[s]))
    return out



@torch.no_grad()
def _capped_neuron_scores(
    model: Any, sides: Sequence[Activations], layers: Sequence[int], ro: Readout, memory_budget: float, progress: bool
) -> list[NeuronScores]:
    """Exact §4.1 scores through final-logit soft-capping (Gemma 2): the capped logits are not
    linear in a neuron's coefficient, so each (case, neuron) gets the direct log-sum-exp of
    `c · tanh((raw + m·U_k) / c)`; the projections `U = W_out @ W_U` are shared per chunk."""
    dev, V, d_mlp = ro.device, ro.W_U.shape[1], model.d_mlp
    n_chunk = int(max(1, min(d_mlp, memory_budget * 0.5 // (3 * 4 * V))))  # U, the capped logits, temporaries
    bar = tqdm(total=len(sides) * len(layers), desc="neuron importance (soft-capped)", unit="layer", disable=not progress)
    out = []
    try:
        for side in sides:
            imp = torch.empty(len(side), len(layers), d_mlp)
            scale, w = side.scale.to(dev), side.w.to(dev)
            for li, layer in enumerate(layers):
                raw = ro.raw(side.at("mlp_base", layer), scale)  # [case, V]
                base = ro.capped(raw)
                base_lp = base.gather(-1, w[:, None])[:, 0] - base.logsumexp(-1)
                c = side.at("write_coef", layer).to(dev) / scale[:, None]  # [case, d_mlp]
                W_l = layer_w_out(model, layer).float()
                for k0 in range(0, d_mlp, n_chunk):
                    k1 = min(d_mlp, k0 + n_chunk)
                    U = W_l[k0:k1] @ ro.W_U  # [n, V]
                    for i in range(len(side)):
                        new = ro.capped(torch.addcmul(raw[i][None], c[i, k0:k1, None], U))
                        imp[i, li, k0:k1] = (new[:, w[i]] - new.logsumexp(-1) - base_lp[i]).cpu()
                bar.update(1)
            coef = torch.stack([side.at("post", L) for L in layers], dim=1)
            out.append(NeuronScores(validate.check_finite(imp, "the importance scores"), coef, list(layers)))
    finally:
        bar.close()
    return out

def _chunk_lse(
    blk: _Block,
    pr: "proj.Projection",
    c: torch.Tensor,
    fc2: torch.Tensor,
    ro: Readout,
    tolerance: float,
    roundoff: float,
    pbuf: torch.Tensor,
    dbuf: torch.Tensor,
    bound: list[float],
    who: torch.Tensor,
    stats: dict | None,
) -> torch.Tensor:
    """`[n, b]` `log Σ_v p_v exp(c U_kv)` of one chunk and block (series where it pays, else direct)."""
    n, b = pr.u.shape[0], c.shape[0]
    slope = c * pr.half[None]  # [b, n]: the coefficient of ũ; |slope| = t
    shift = (c * pr.mid[None]).T.double()  # [n, b]
    reduced = pr.u.dtype != torch.float32
    if not (tolerance > 0 and hasattr(blk, "PT")):  # direct: every case and side, the whole chunk
        lse = _fused_direct(blk.shifted, slope, lambda k0, k1, v0, v1: pr.u[k0:k1, v0:v1], lambda k: pr.u[k].float())
        return shift + (lse - blk.lse.double()[:, None]).T
    terms, bnd = series_terms(slope.abs(), tolerance, roundoff)
    direct = terms > MAX_TERMS  # [b, n]
    rows_terms = torch.where(direct, torch.zeros_like(terms), terms).amax(0)
    # μ_1 from float32 weights: ũ·p = (fc2 · (W_U p) − mid Σp) / half.
    mu1 = ((fc2.double() @ blk.WUp) - pr.mid.double()[:, None] * blk.mass[None]) / pr.half.double()[:, None]
    _count(stats, 2 * n * fc2.shape[1] * b)
    out = shift + _series(blk, pr.u, slope.T.double(), rows_terms, mu1, pbuf, stats)
    has = ~direct.all(1)
    for s in who[has].unique().tolist():
        sel = (who == s) & has
        bound[s] = max(bound[s], float(bnd[sel][~direct[sel]].max()))
    rows = direct.any(0).nonzero()[:, 0]  # the rows some case needs directly: all pairs, one fused pass
    if len(rows):
        if reduced:  # recompute the rows in float32, normalised the same way
            U = torch.matmul(fc2[rows], ro.W_U, out=dbuf[: len(rows)]).sub_(pr.mid[rows, None]).div_(pr.half[rows, None])
        else:
            U = pr.u[rows]
        lse = _fused_direct(blk.shifted, slope[:, rows], lambda k0, k1, v0, v1: U[k0:k1, v0:v1], lambda k: U[k])
        out[rows] = shift[rows] + (lse - blk.lse.double()[:, None]).T
    return out


def flatten(t: Float[torch.Tensor, "case layer d_mlp"]) -> Float[torch.Tensor, "case neuron"]:
    """`[case, layer, d_mlp]` → `[case, layer·d_mlp]` (layer-major), the grid fast mode ranks on."""
    return einops.rearrange(t, "c l n -> c (l n)")


# Names imported from here before fast mode and the component scores moved out.


@torch.no_grad()
def first_order_scores(
    model: Any, acts: Activations, layers: Sequence[int], memory_budget: float = 1e9
) -> Float[torch.Tensor, "case layer d_mlp"]:
    """`m_k fc2_k · ∇_x log p(w | x)` at `x = x_mid` (frozen scale): the first-order score.

    `∇_x log p(w) = (W_U[:, w] − W_U p) / σ`, with `p` the readout at `x_mid`.
    """
    ro = Readout(model)
    dev = ro.device
    n = len(acts)
    step = int(max(1, min(n, memory_budget // (5 * 4 * ro.W_U.shape[1]))))  # logits, p and temporaries
    out = torch.empty(n, len(layers), model.d_mlp)
    for li, layer in enumerate(layers):
        x, post = acts.at("mlp_base", layer), acts.at("write_coef", layer)
        for c0 in range(0, n, step):
            sl = slice(c0, min(n, c0 + step))
            s, w = acts.scale[sl].to(dev), acts.w[sl].to(dev)
            logits = validate.check_finite(ro.logits(x[sl].to(dev), s), "the base logits")
            p, slope = logits.softmax(-1), ro.cap_slope(logits)
            if slope is None:
                grad = (ro.W_U[:, w].T - p @ ro.W_U.T) / s[:, None]  # [b, d_model]
            else:  # through the soft-cap: d logit_v / d raw_v = 1 − (logit_v / c)²
                own = slope.gather(-1, w[:, None])  # [b, 1]
                grad = (ro.W_U[:, w].T * own - (p * slope) @ ro.W_U.T) / s[:, None]
            out[sl, li] = (post[sl].to(dev) * (grad @ layer_w_out(model, layer).float().T)).cpu()
    return out


@torch.no_grad()
def rescore(
    model: Any,
    acts: Activations,
    layers: Sequence[int],
    candidates: Int[torch.Tensor, "case r"],
    memory_budget: float = 1e9,
    progress: bool = False,
) -> Float[torch.Tensor, "case r"]:
    """Exact importance of chosen neurons per case; `candidates` index the flattened `(layer, neuron)` grid.

    Grouped by layer: the projections `fc2_k W_U` of the union of every case's candidates in
    a layer are made once (cases share most of their top neurons), and each case's base
    logits once per layer — not once per candidate.
    """
    ro = Readout(model)
    dev, V, d_mlp = ro.device, ro.W_U.shape[1], model.d_mlp
    step = int(max(1, memory_budget // (6 * 4 * V)))
    out = torch.empty(candidates.shape, dtype=torch.float32)
    li_all, k_all = candidates // d_mlp, candidates % d_mlp  # [case, r]: layer index, neuron
    where = torch.full((d_mlp,), -1, dtype=torch.long)  # neuron → its row in the current chunk
    todo = [(li, chunk) for li in li_all.unique().tolist() for chunk in k_all[li_all == li].unique().split(step)]
    for li, chunk in tqdm(todo, desc="re-scoring candidates", unit="chunk", disable=not progress):
        layer = int(layers[li])
        W_l = layer_w_out(model, layer)
        U = W_l[chunk.to(W_l.device)].float().to(dev) @ ro.W_U  # [c, V]
        where[chunk] = torch.arange(len(chunk))
        m_all = acts.at("write_coef", layer)
        hit = (li_all == li) & (where[k_all] >= 0)  # [case, r]: the candidates this chunk scores
        need = hit.any(1).nonzero()[:, 0]
        raws = ro.raw(acts.at("mlp_base", layer)[need], acts.scale[need])  # [case, V]: one matmul, W_U read once
        for i, raw in zip(need.tolist(), raws):
            sel = hit[i]
            s, wi = acts.scale[i].to(dev), int(acts.w[i])
            base = ro.capped(raw)
            m = m_all[i, k_all[i, sel].to(m_all.device)].to(dev, torch.float32)
            new = ro.capped(raw[None] + (m / s)[:, None] * U[where[k_all[i, sel]].to(dev)])
            delta = (new[:, wi] - new.logsumexp(-1)) - (base[wi] - base.logsumexp(-1))
            out[i, sel] = validate.check_finite(delta, "the re-scored importances").cpu()
        where[chunk] = -1
    return out
