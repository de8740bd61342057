"""Attribution patching: rank components from one forward and one backward pass, then re-score.

Ablating or patching a component `n` replaces its activation `a_n` by `a'_n` (zero, a mean,
the counterfactual's). To first order the change of a metric `m` (the target's log-prob or
logit) is

    Δm_n ≈ Σ_pos ∂m/∂a_n · (a'_n − a_n)

— attribution patching (Nanda 2023; Kramár et al. 2024, "AtP*"). One forward and one
backward pass give `∂m/∂a_n` for every component at once
([`forward.gradients`][arithlens.core.forward.gradients]), so a sweep over hundreds of heads
costs about three forwards per batch instead of one forward per head. The estimate is
poor where attention saturates or a component's effect is far from linear, so the sweeps
that offer it ([`HeadAblation`][arithlens.cna.heads.HeadAblation] and
[`PathPatching`][arithlens.circuits.path_patching.PathPatching] with
`estimate="attribution"`) re-score their top `rescore` candidates exactly, like CNA's fast
mode, and mark every row that is still an estimate.

[`agreement`][arithlens.analysis.attribution.agreement] measures how well an estimate ranks
components against the exact sweep: Spearman's rank correlation over all components and
the overlap of the top-`k` sets, before and after re-scoring.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.cna.heads import HeadAblation

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(16)
    exact = HeadAblation(progress=False).run(model, cases)
    fast = HeadAblation(estimate="attribution", rescore=20, progress=False).run(model, cases)
    print(fast.agreement(exact, k=10))
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from arithlens.core import forward, validate

ESTIMATES = ("exact", "attribution")


@dataclass(frozen=True)
class Agreement:
    """How well an attribution sweep ranks components against the exact sweep of the same data.

    Attributes:
        spearman: Spearman rank correlation between estimated and exact scores, over every component.
        k: The size of the top sets compared.
        overlap_estimate: Fraction of the exact top-`k` components found in the estimate's top `k`.
        overlap_rescored: The same for the ranking the attribution result reports (its top
            candidates re-scored exactly).
        n: Components compared.
    """

    spearman: float
    k: int
    overlap_estimate: float
    overlap_rescored: float
    n: int

    def __str__(self) -> str:
        return (
            f"Spearman {self.spearman:.3f} over {self.n} components; top-{self.k} overlap "
            f"{self.overlap_estimate:.0%} (estimate), {self.overlap_rescored:.0%} (after re-scoring)"
        )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); `NaN` when either side is constant."""
    ra = pd.Series(np.asarray(a, dtype=float)).rank().to_numpy()
    rb = pd.Series(np.asarray(b, dtype=float)).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_set(scores: np.ndarray, k: int) -> set[int]:
    """Indices of the `k` largest scores (ties: first index first)."""
    return set(np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k].tolist())


def agreement(
    estimate: np.ndarray,
    exact: np.ndarray,
    reported: np.ndarray,
    k: int = 10,
    *,
    rank_by: Callable[[np.ndarray], np.ndarray] | None = None,
    rank_estimate_by: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Agreement:
    """Compare an attribution estimate of every component with the exact values.

    Args:
        estimate: The attribution estimate of every component.
        exact: The exact value of every component (same order).
        reported: The attribution result's final values (exact where re-scored).
        k: Size of the top sets compared (capped at the number of components).
        rank_by: Importance of a value for the top sets (default the value itself, larger
            first; `np.abs` ranks by magnitude).
        rank_estimate_by: Importance of an estimate (default `rank_by`): how the sweep picks
            the candidates it re-scores.

    Spearman's correlation is taken between `estimate` and `exact` themselves.
    """
    k = validate.positive_int(k, "k")
    estimate, exact, reported = (np.asarray(x, dtype=float) for x in (estimate, exact, reported))
    if not (estimate.shape == exact.shape == reported.shape) or estimate.ndim != 1:
        raise ValueError(f"scores must be 1-D and of one length, got {estimate.shape}, {exact.shape}, {reported.shape}")
    rank_by = rank_by or (lambda x: x)
    rank_estimate_by = rank_estimate_by or rank_by
    k = min(k, len(exact))
    truth = top_set(rank_by(exact), k)
    return Agreement(
        spearman=spearman(estimate, exact),
        k=k,
        overlap_estimate=len(top_set(rank_estimate_by(estimate), k) & truth) / k,
        overlap_rescored=len(top_set(rank_by(reported), k) & truth) / k,
        n=len(exact),
    )


def candidates(scores: torch.Tensor, rescore: int) -> torch.Tensor:
    """Sorted indices of the `rescore` highest `scores` (the components to re-score exactly).

    Sweeps pass the estimates' magnitudes: a first-order estimate's sign is least reliable
    exactly where an effect is large (on SmolLM2 the strongest layer-0 heads are
    estimated with the wrong sign), so candidates are picked by `|estimate|`.
    """
    chosen = scores.argsort(descending=True, stable=True)[:rescore]
    return chosen.sort().values


def effects(
    model: Any,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    score: Callable[[Float[torch.Tensor, "batch vocab"]], Float[torch.Tensor, "batch"]],
    replacement: Callable[[str, torch.Tensor], torch.Tensor],
    position: str = "all",
    first_layer: int = 0,
) -> tuple[dict[str, torch.Tensor], Float[torch.Tensor, "batch"]]:
    """First-order effect on `score` of replacing each hook's activation, from one forward and one backward pass.

    Args:
        model: The model.
        tokens: A batch of equal-length prompts.
        hook_names: Activations to replace, `[batch, pos, ..., d]` each (a head's `z` is
            `[batch, pos, head, d_head]`, an MLP's output `[batch, pos, d_model]`).
        score: Last-position logits `[batch, vocab]` → the metric per case.
        replacement: `(hook_name, activation)` → the replacing activation (broadcastable),
            given the activation at the replaced positions only.
        position: `"all"` positions replaced, or the `"last"` only.
        first_layer: No hook is below this block (the backward pass stops there).

    Returns:
        Per hook, `Σ_pos Σ_d ∂score/∂a · (a' − a)` with the hook's middle dimensions kept
        (`[batch, head]` for `z`, `[batch]` for an MLP output); and the clean scores.
    """
    acts, grads, scores = forward.gradients(model, tokens, hook_names, score, first_layer=first_layer)
    out: dict[str, torch.Tensor] = {}
    for name in hook_names:
        a, g = acts[name].float(), grads[name].float()
        if position == "last":
            a, g = a[:, -1:], g[:, -1:]
        out[name] = einops.einsum(g, replacement(name, a).to(a) - a, "b p ... d, b p ... d -> b ...")
    return out, scores
