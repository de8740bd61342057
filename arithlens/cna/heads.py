"""Arithmetic heads by ablation — Yu & Ananiadou §3, Tables 1, 2, 3 and 24–27.

Every attention head (or a chosen subset) is intervened on, one at a time, and the
first-token accuracy on an arithmetic dataset is compared with the original model's.
The paper zero-ablates a head ("setting all the head's parameters into zero", which is
the head's output `z` being zero: [`ZeroHead`][arithlens.core.interventions.ZeroHead]);
`method="mean"` replaces it by its mean over reference data instead
([`MeanHead`][arithlens.core.interventions.MeanHead]).

Per head and group (op by default) the result reports `accuracy`, `baseline_accuracy`,
`accuracy_drop = baseline_accuracy - accuracy` (a fraction of cases),
`accuracy_decrease = 100 · accuracy_drop / baseline_accuracy` (the paper's "accuracy
decrease (%)" of Tables 2 and 3) and `logprob_drop`, the mean decrease of the
target token's log-probability. `.by("case_type")` gives Table 3's memorize / change-one
breakdown, `.top(5)` Table 1's layout.

**Exact sweep** (`estimate="exact"`, the default). For each batch of equal-length cases
the residual stream entering every swept layer comes from the clean pass (from the
`cache=` when it holds them at every position, else from one forward stopped after the
last swept layer); the ablated forward for layer `L` restarts there and runs only blocks
`L…` ([`arithlens.core.forward`][arithlens.core.forward]), and all heads of a layer are ablated in
one forward over the batch stacked head-by-case.

**Attribution estimate** (`estimate="attribution"`; attribution patching, Nanda 2023;
Kramár et al. 2024, AtP*). One forward and one backward pass per batch give the gradient
`g` of the target log-prob with respect to every head's output `z`; the effect of
ablating head `h` is estimated to first order as `Σ_pos g_h · (z_ablated_h − z_h)` over
the ablated positions. The `rescore` heads with the largest `|estimate|` are then swept
exactly (like CNA's fast mode); the other rows are estimates of `logprob_drop` only (their
`accuracy` is `NaN`) and the `estimated` column says which rows are which.
[`HeadAblationResult.agreement`][arithlens.cna.heads.HeadAblationResult.agreement] measures
the rank agreement with an exact sweep. The estimate is first order: on SmolLM2 it ranks
heads of later layers well but underestimates, even with the wrong sign, the strongest
layer-0 heads (a zeroed layer-0 head changes the small early residual a lot, and every
later norm rescales it), which is why the top candidates are re-scored and why a
re-scoring budget well above the number of heads you report is wise.

Example:
    ```python
    import arithlens
    from arithlens.core import distributed
    from arithlens import data
    from arithlens.cna.heads import HeadAblation

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-*/", digits=1, templates=[4]).sample(40)
    result = HeadAblation().run(model, cases)
    result.top(5)        # Table 1
    result.plot()        # layers x heads heatmap of the accuracy drop, per op
    fast = HeadAblation(estimate="attribution", rescore=20).run(model, cases)
    fast.agreement(result)   # Spearman and top-k overlap against the exact sweep
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from arithlens.analysis import attribution
from arithlens.analysis.attribution import ESTIMATES, Agreement
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result, percent
from arithlens.core import distributed, forward, names, validate
from arithlens.core.interventions import HeadMeans
from arithlens.core.loading import load_model

@dataclass
class HeadAblationResult(Result):
    """Per-head, per-group accuracy under ablation.

    Attributes:
        df: One row per (layer, head, group value): `layer, head, <group>, n, accuracy,
            baseline_accuracy, accuracy_drop, accuracy_decrease, logprob_drop, estimated`; group
            value `"all"` aggregates every case. `estimated` rows (attribution mode, not
            re-scored) have `NaN` accuracy columns and an estimated `logprob_drop`; in
            attribution mode `logprob_drop_estimate` holds every head's estimate.
        cases: The dataset's per-case frame (labels and baseline outcome).
        heads: `(layer, head)` of each row of the per-case tensors.
        correct: `[head, case]` whether the ablated model predicts the target (`False` for
            heads that were not computed exactly).
        logprob: `[head, case]` target log-prob under ablation (estimated where not exact).
        exact: `[head]` whether the head was computed exactly.
        estimated_logprob: `[head, case]` the attribution estimate of the target log-prob
            under ablation for every head (`None` for an exact sweep).
        method: `"zero"` or `"mean"`.
        estimate: `"exact"` or `"attribution"`.
        group_by: Case columns the table is grouped by.
        n_layers: Layers of the model.
        n_heads: Query heads per layer of the model.
    """

    cases: pd.DataFrame = field(repr=False, default=None)
    heads: list[tuple[int, int]] = field(default_factory=list)
    correct: Bool[torch.Tensor, "head case"] = field(repr=False, default=None)
    logprob: Float[torch.Tensor, "head case"] = field(repr=False, default=None)
    exact: Bool[torch.Tensor, "head"] = field(repr=False, default=None)
    estimated_logprob: Float[torch.Tensor, "head case"] | None = field(repr=False, default=None)
    method: str = "zero"
    estimate: str = "exact"
    group_by: tuple[str, ...] = ("op",)
    n_layers: int = 0
    n_heads: int = 0

    def caption(self) -> str:
        exact = int(self.exact.sum()) if self.exact is not None else len(self.heads)
        how = "every head ablated exactly" if exact == len(self.heads) else f"{exact} of {len(self.heads)} heads ablated exactly, the rest estimated"
        return (
            f"{self.method}-ablation of each head ({how}) on {len(self.cases) if self.cases is not None else 0} cases, "
            f"grouped by {', '.join(self.group_by) or 'nothing'}; accuracy_drop = baseline_accuracy − accuracy and "
            "logprob_drop = clean − ablated log p(target) (nats): positive means the head helps."
        )

    def by(self, *columns: str) -> pd.DataFrame:
        """The table re-grouped by other case columns (e.g. `"case_type"`: Table 3)."""
        unknown = [c for c in columns if c not in self.cases]
        if unknown:
            raise ValueError(f"columns {unknown} are not case columns; choose from {list(self.cases.columns)}")
        return tabulate(self.cases, self.heads, self.correct, self.logprob, tuple(columns), self.exact, self.estimated_logprob)

    def _groups(self) -> tuple[str | None, list[Any]]:
        col = self.group_by[0] if self.group_by else None
        values = ["all"] + ([v for v in dict.fromkeys(self.df[col]) if v != "all"] if col else [])
        return col, values

    def top(self, k: int = 5, group: Any = None) -> pd.DataFrame:
        """Table 1's layout: accuracy (%) of the original model and with each of the top heads ablated.

        Heads are ranked by their accuracy drop on `group` (default `"all"` cases; ties by
        log-prob drop), and **only heads whose ablation lowers the accuracy (drop > 0) are
        listed**: fewer than `k` columns (only `ori`) when fewer heads matter. Rows: `all`
        and each group value; columns: `ori` and `L.H` of each head. Estimated rows of an
        attribution sweep have no accuracy and are never listed.

        Raises:
            ValueError: `k` is not a positive integer, or `group` is not a group value.
        """
        k = validate.positive_int(k, "k")
        col, values = self._groups()
        group = "all" if group is None else group
        if group not in values:
            raise ValueError(f"group={group!r} is not a value of {col or 'the cases'}: choose one of {values}")
        rank = self.df[self.df[col] == group] if col else self.df
        rank = rank[rank["accuracy_drop"] > 0]
        best = rank.sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable").head(k)
        heads = list(zip(best["layer"].tolist(), best["head"].tolist()))
        rows = []
        for value, part in self.df.groupby(col, sort=False) if col else [("all", self.df)]:
            row = {col or "group": value, "ori": percent(part["baseline_accuracy"].iloc[0])}
            for L, H in heads:
                hit = part[(part["layer"] == L) & (part["head"] == H)]
                row[f"{L}.{H}"] = percent(hit["accuracy"].iloc[0])
            rows.append(row)
        table = pd.DataFrame(rows)
        order = ["all"] + [v for v in table.iloc[:, 0] if v != "all"]
        return table.set_index(table.columns[0]).loc[order].reset_index()

    def median_ratio(self, group: Any = "all") -> float:
        """Top head's accuracy drop divided by the median head's (how few the arithmetic heads are)."""
        col, values = self._groups()
        if group not in values:
            raise ValueError(f"group={group!r} is not a value of {col or 'the cases'}: choose one of {values}")
        part = self.df[self.df[col] == group] if col else self.df
        drops = part["accuracy_drop"].dropna()
        median = float(drops.median())
        return float("inf") if median <= 0 else float(drops.max()) / median

    def agreement(self, exact_result: "HeadAblationResult", k: int = 10) -> Agreement:
        """Rank agreement of this attribution sweep with `exact_result`, an exact sweep of the same cases and heads."""
        if self.estimated_logprob is None:
            raise ValueError("agreement compares an attribution sweep (estimate='attribution') with an exact one; this result is exact")
        if not isinstance(exact_result, HeadAblationResult) or exact_result.estimated_logprob is not None:
            raise ValueError("exact_result must be the HeadAblationResult of an exact sweep (estimate='exact')")
        if sorted(exact_result.heads) != sorted(self.heads) or exact_result.cases["prompt"].tolist() != self.cases["prompt"].tolist():
            raise ValueError("exact_result must sweep the same heads over the same cases as this result")
        base = torch.tensor(self.cases["target_logprob"].to_numpy(), dtype=torch.float32)
        where = {h: i for i, h in enumerate(exact_result.heads)}
        true = base[None] - exact_result.logprob[torch.tensor([where[h] for h in self.heads])]
        est, final = base[None] - self.estimated_logprob, base[None] - self.logprob
        return attribution.agreement(est.mean(1).numpy(), true.mean(1).numpy(), final.mean(1).numpy(), k, rank_estimate_by=np.abs)

    def plot(self, value: str | None = None, **kwargs: Any) -> Any:
        """Heatmap of `value` over layers x heads, one facet per group value.

        `value` defaults to `accuracy_drop` for an exact sweep and `logprob_drop` for an
        attribution sweep (whose estimated rows have no accuracy).
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        value = value or ("accuracy_drop" if self.estimate == "exact" else "logprob_drop")
        numeric = [c for c in self.df.columns if c not in ("layer", "head", "n", "estimated", *self.group_by) and pd.api.types.is_numeric_dtype(self.df[c])]
        if value not in numeric:
            raise ValueError(f"value={value!r} is not a numeric column; choose one of {numeric}")
        col, groups = self._groups()
        if len(groups) == 2:  # one group value: its panel would repeat the "all" one
            groups = groups[1:]
        fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[str(g) for g in groups], shared_yaxes=True)
        vmax = float(self.df[value].abs().max())
        vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
        label = value.replace("_", " ")
        for i, g in enumerate(groups, start=1):
            part = self.df[self.df[col] == g] if col else self.df
            grid = part.pivot_table(index="layer", columns="head", values=value, dropna=False)
            fig.add_trace(
                go.Heatmap(
                    z=grid.values,
                    x=[str(h) for h in grid.columns],
                    y=list(grid.index),
                    zmin=-vmax,
                    zmax=vmax,
                    colorscale="RdBu_r",
                    showscale=i == len(groups),
                    colorbar={"title": label},
                    hovertemplate="layer %{y} head %{x}<br>" + label + " %{z:.3f}<extra>" + str(g) + "</extra>",
                ),
                row=1,
                col=i,
            )
            fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
        how = f"{self.method}-ablation" + (" (attribution estimate, top heads re-scored)" if self.estimate != "exact" else "")
        fig.update_layout(title=f"Head {how}: {label}", height=max(350, 18 * self.n_layers + 120), **kwargs)
        return fig


@dataclass(frozen=True, kw_only=True)
class HeadAblation(Analysis):
    """Sweep head ablations over a dataset (Tables 1–3, 24–27).

    Args:
        method: `"zero"` (the paper) or `"mean"` (mean over `reference`).
        layers: Layers to sweep (default all).
        heads: Heads to sweep in each layer (default all) — or explicit heads as
            `(layer, head)` pairs, `"L.H"` strings or [`Component`][arithlens.core.names.Component]s, in
            which case `layers` is ignored.
        position: `"all"` positions (the paper) or the `"last"` only.
        reference: Data the mean is taken over (default: the swept dataset).
        group_by: Case columns the table is grouped by.
        batch_size: Cases per clean forward (and per attribution pass).
        max_rows: Most (head x case) rows in one ablated forward.
        estimate: `"exact"` (every head ablated; the default) or `"attribution"` (every
            head estimated from one forward and one backward pass per batch, then the
            top `rescore` re-scored exactly).
        rescore: Heads re-scored exactly in attribution mode (0: estimates only).
        progress: Show a progress bar.
    """

    method: Literal["zero", "mean"] = "zero"
    layers: Sequence[int] | None = None
    heads: Sequence[int] | Sequence[Any] | None = None
    position: names.Position = "all"
    reference: Any = None
    group_by: Sequence[str] | str = ("op",)
    batch_size: int = 64
    max_rows: int = 512
    estimate: Literal["exact", "attribution"] = "exact"
    rescore: int = 20
    progress: bool = True

    @classmethod
    def paper(cls, **changes: Any) -> "HeadAblation":
        """§3's setup: every head zeroed (the reference code zeroes its `o_proj` columns, i.e. its
        output at every position), one at a time, exactly; accuracy per op. Table 2 and
        Tables 24–27 group by op and digits: `HeadAblation.paper(group_by=("op", "digits"))`;
        the data are [`data.paper`][arithlens.data.paper]'s."""
        return cls(**{"method": "zero", "position": "all", "estimate": "exact", "group_by": ("op",), **changes})

    def __post_init__(self) -> None:
        validate.choice(self.method, "method", ("zero", "mean"))
        object.__setattr__(self, "position", names.check_position(self.position))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(validate.int_sequence(self.layers, "layers", low=0, unique=True)))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(_heads_arg(self.heads)))
        group_by = (self.group_by,) if isinstance(self.group_by, str) else self.group_by
        if not isinstance(group_by, (list, tuple)) or not all(isinstance(c, str) for c in group_by):
            raise ValueError(f"group_by={group_by!r} must be a case column name or a sequence of them")
        object.__setattr__(self, "group_by", tuple(group_by))
        object.__setattr__(self, "batch_size", validate.positive_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "max_rows", validate.positive_int(self.max_rows, "max_rows"))
        validate.choice(self.estimate, "estimate", ESTIMATES)
        object.__setattr__(self, "rescore", validate.non_negative_int(self.rescore, "rescore"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))

    def _head_list(self, model: Any) -> list[tuple[int, int]]:
        """The swept heads in layer order, checked against `model`."""
        if self.heads is not None and isinstance(self.heads[0], names.Component):
            nodes = list(self.heads)
        else:
            layers = range(model.n_layers) if self.layers is None else self.layers
            heads = range(model.n_heads) if self.heads is None else self.heads
            nodes = [names.Component(L, H) for L in layers for H in heads]
        for node in nodes:
            node.check(model)
        return sorted(dict.fromkeys((n.layer, n.head) for n in nodes))

    def hook_names(self, model: Any) -> set[str]:
        """The residual stream entering each swept layer: with a `positions="all"` cache holding them, no clean forward runs."""
        return {names.resid_pre(L) for L in sorted({L for L, _ in self._head_list(model)})}

    def cache_positions(self, model: Any) -> str:
        """`"all"` for the exact sweep: its ablated forwards restart from whole sequences."""
        return "all" if self.estimate == "exact" else "last"

    @torch.no_grad()
    def run(self, model: Any, data: Any, *, cache: Any = None) -> HeadAblationResult:
        """Ablate each head in turn on `data`; return the per-head table.

        Args:
            model: The model.
            data: Prompts, token ids or a dataset.
            cache: An [`DatasetCache`][arithlens.core.cache.DatasetCache] of the clean pass
                over `data` (predictions and target log-probs are read from it; built when
                not given). With `positions="all"` and this analysis's
                [`hook_names`][arithlens.cna.heads.HeadAblation.hook_names], the residual
                streams come from it too.
        """

        model = load_model(model)
        pairs = self._head_list(model)
        model, ds, clean = self.prepare(model, data, cache, names=(), positions="last")
        ids = [tuple(c.input_ids) for c in ds]
        resid_cache = clean if clean.has(self.hook_names(model), positions="all") else None
        layers = sorted({L for L, _ in pairs})
        means = HeadMeans.compute(model, self.reference if self.reference is not None else ds, layers) if self.method == "mean" else None
        scoring = clean.scoring_ids.to(model.bridge.W_U.device)  # where the logits are (sharded models too)
        base_lp = clean.target_logprob.float()
        sweep = HeadSweep(self, model, ids, scoring, means, resid_cache)

        estimated = None
        if self.estimate == "exact":
            # Under torchrun each rank sweeps a contiguous block of layers (one process: all of
            # them). Whole layers, so each layer's heads are stacked in one forward exactly as
            # in a single process, and the gathered result is bit-identical.
            my_layers = set(distributed.shard(layers))
            mine = [p for p in pairs if p[0] in my_layers]
            if mine:
                part = sweep.exact(mine)
            else:
                part = (torch.zeros(0, len(ids), dtype=torch.bool), torch.zeros(0, len(ids)))
            correct, logprob = distributed.gather(part)
            exact = torch.ones(len(pairs), dtype=torch.bool)
        else:
            delta = sweep.attribute(pairs)
            estimated = base_lp[None] + delta
            chosen = attribution.candidates(delta.mean(1).abs(), self.rescore)
            correct = torch.zeros(len(pairs), len(ids), dtype=torch.bool)
            logprob = estimated.clone()
            exact = torch.zeros(len(pairs), dtype=torch.bool)
            if len(chosen):
                c, lp = sweep.exact([pairs[i] for i in chosen.tolist()])
                correct[chosen], logprob[chosen], exact[chosen] = c, lp, True

        cases = ds.to_frame()
        has_target = clean.target_ids >= 0
        cases["correct"] = torch.where(has_target, clean.correct, torch.ones_like(has_target)).numpy()
        cases["target_logprob"] = base_lp.numpy()
        group_by = tuple(c for c in self.group_by if c in cases and cases[c].notna().all())
        return HeadAblationResult(
            df=tabulate(cases, pairs, correct, logprob, group_by, exact, estimated),
            cases=cases,
            heads=pairs,
            correct=correct,
            logprob=logprob,
            exact=exact,
            estimated_logprob=estimated,
            method=self.method,
            estimate=self.estimate,
            group_by=group_by,
            n_layers=model.n_layers,
            n_heads=model.n_heads,
        )


def _heads_arg(heads: Any) -> list[Any]:
    """`heads` as a list of head indices, or of [`Component`][arithlens.core.names.Component]s for explicit heads."""
    if isinstance(heads, (str, names.Component)) or not isinstance(heads, (list, tuple, range, np.ndarray, torch.Tensor)):
        heads = [heads]
    items = list(heads)
    if not items:
        raise ValueError("heads is empty: give head indices or (layer, head) pairs, or None for all")
    if any(isinstance(h, (tuple, list, str, names.Component)) for h in items):
        return [names.parse_head(h, "heads item") for h in items]
    return validate.int_sequence(items, "heads", low=0, unique=True)


class HeadSweep:
    """One sweep's shared inputs; `exact` and `attribute` score any list of `(layer, head)`.

    Args:
        config: The [`HeadAblation`][arithlens.cna.heads.HeadAblation] (position, batch sizes, progress).
        model: The model.
        ids: Token ids of each case.
        scoring: The scored token of each case, on the logits' device.
        means: Per-layer head means (`method="mean"`), else `None` (zero ablation).
        resid_cache: A `positions="all"` cache holding the residual streams, or `None`.
    """

    def __init__(
        self,
        config: HeadAblation,
        model: Any,
        ids: list[tuple[int, ...]],
        scoring: torch.Tensor,
        means: dict[int, HeadMeans] | None,
        resid_cache: Any = None,
    ):
        self.config, self.model, self.ids, self.scoring, self.means, self.resid_cache = config, model, ids, scoring, means, resid_cache

    # ------------------------------------------------------------------ exact sweep
    def exact(self, pairs: list[tuple[int, int]]) -> tuple[Bool[torch.Tensor, "head case"], Float[torch.Tensor, "head case"]]:
        """Each head of `pairs` ablated on every case: restart at its layer, heads of a layer stacked."""
        model, scoring, config = self.model, self.scoring, self.config
        device = scoring.device
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for row, (L, H) in enumerate(pairs):
            by_layer.setdefault(L, []).append((row, H))
        layers = sorted(by_layer)
        correct = torch.zeros(len(pairs), len(self.ids), dtype=torch.bool, device=device)
        logprob = torch.zeros(len(pairs), len(self.ids), device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        batches = list(model.batches(self.ids, config.batch_size))
        bar = tqdm(total=len(batches) * len(layers), desc="head ablation (exact)", unit="layer-batch", disable=not config.progress)
        try:
            for rows, tokens in batches:
                resid = self._resid(rows, tokens, layers)
                rows_d = rows.to(device)
                target = scoring[rows_d]
                chunk = max(1, config.max_rows // len(rows))
                for L in layers:
                    entries = by_layer[L]
                    for start in range(0, len(entries), chunk):
                        part = entries[start : start + chunk]
                        logits = self._ablated(resid[L], L, [H for _, H in part], self.means[L] if self.means else None)
                        logits = einops.rearrange(logits.float(), "(h b) v -> h b v", h=len(part))
                        lse = logits.logsumexp(-1)
                        finite &= torch.isfinite(lse).all()
                        hit = logits.gather(-1, einops.repeat(target, "b -> h b 1", h=len(part)))[..., 0]
                        idx = torch.tensor([r for r, _ in part], device=device)[:, None]
                        logprob[idx, rows_d[None]] = hit - lse
                        correct[idx, rows_d[None]] = logits.argmax(-1) == target[None]
                    bar.update(1)
        finally:
            bar.close()
        if not bool(finite):
            raise validate.NonFiniteError(
                "the ablated model's logits contain NaN or infinite values; an intervention attached to the "
                "model or its numerics broke the forward pass, and ranking heads on them would be meaningless"
            )
        return correct.cpu(), logprob.cpu()

    def _resid(self, rows: torch.Tensor, tokens: torch.Tensor, layers: list[int]) -> dict[int, Float[torch.Tensor, "batch pos d_model"]]:
        """The clean residual stream entering each layer, on the model's device."""
        model, resid_cache = self.model, self.resid_cache
        hooks = [names.resid_pre(L) for L in layers]
        if resid_cache is None:
            acts = forward.capture(model, tokens, hooks, stop_at_layer=max(layers) + 1)
            return {L: acts[h] for L, h in zip(layers, hooks)}
        dtype = model.bridge.W_U.dtype
        return {
            L: torch.stack([resid_cache.per_position(h)[r] for r in rows.tolist()]).to(model.device, dtype)
            for L, h in zip(layers, hooks)
        }

    def _ablated(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        layer: int,
        heads: list[int],
        means: HeadMeans | None,
    ) -> Float[torch.Tensor, "rows vocab"]:
        """Last-position logits with each of `heads` ablated, stacked head-major."""
        model = self.model
        x = einops.repeat(resid, "b p d -> (h b) p d", h=len(heads))
        # keep[j, n] is 0 where replica j ablates head n.
        keep = torch.ones(len(heads), model.n_heads, device=resid.device, dtype=resid.dtype)
        keep[torch.arange(len(heads), device=resid.device), torch.tensor(heads, device=resid.device)] = 0.0
        position = self.config.position

        def ablate(z: Float[torch.Tensor, "rows pos head d_head"], hook: Any) -> torch.Tensor:
            view = z if position == "all" else z[:, -1:]
            zh = einops.rearrange(view, "(h b) p n d -> h b p n d", h=len(heads))
            k = keep.to(z.dtype)[:, None, None, :, None]
            if means is None:
                new = zh * k
            else:
                mean = means.for_length(z.shape[1], position).to(z)  # [p, n, d]
                new = zh * k + (1 - k) * mean[None, None]
            view.copy_(einops.rearrange(new, "h b p n d -> (h b) p n d"))
            return z

        with model.hooked([(names.z(layer), ablate)]):
            return forward.logits_from(model, x, layer)

    # ------------------------------------------------------------------ attribution
    def attribute(self, pairs: list[tuple[int, int]]) -> Float[torch.Tensor, "head case"]:
        """First-order estimate of each head's ablation effect on the target log-prob."""
        model, scoring, means, position = self.model, self.scoring, self.means, self.config.position
        device = scoring.device
        layers = sorted({L for L, _ in pairs})
        layer_of = {names.z(L): L for L in layers}
        rows_of = {L: torch.tensor([i for i, (L2, _) in enumerate(pairs) if L2 == L], device=device) for L in layers}
        heads_of = {L: torch.tensor([H for L2, H in pairs if L2 == L], device=device) for L in layers}
        delta = torch.zeros(len(pairs), len(self.ids), device=device)
        batches = list(model.batches(self.ids, self.config.batch_size))
        bar = tqdm(total=len(batches), desc="head attribution", unit="batch", disable=not self.config.progress)
        try:
            for rows, tokens in batches:
                rows_d = rows.to(device)
                target = scoring[rows_d]

                def score(logits: torch.Tensor) -> torch.Tensor:
                    return logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]

                def ablated(name: str, z: torch.Tensor) -> torch.Tensor:
                    if means is None:
                        return torch.zeros_like(z)
                    return means[layer_of[name]].for_length(tokens.shape[1], position)[None]

                found, _ = attribution.effects(model, tokens, list(layer_of), score, ablated, position, layers[0])
                for name, L in layer_of.items():
                    delta[rows_of[L][:, None], rows_d[None]] = found[name].to(device).T[heads_of[L]]
                bar.update(1)
        finally:
            bar.close()
        return validate.check_finite(delta, "the attribution estimates").cpu()


def tabulate(
    cases: pd.DataFrame,
    heads: list[tuple[int, int]],
    correct: torch.Tensor,
    logprob: torch.Tensor,
    group_by: tuple[str, ...],
    exact: torch.Tensor | None = None,
    estimated: torch.Tensor | None = None,
) -> pd.DataFrame:
    """The per-(head, group value) table of [`HeadAblationResult.df`][arithlens.cna.heads.HeadAblationResult] from per-case outcomes."""
    base_correct = torch.tensor(cases["correct"].to_numpy(), dtype=torch.float32)
    base_lp = torch.tensor(cases["target_logprob"].to_numpy(), dtype=torch.float32)
    exact = torch.ones(len(heads), dtype=torch.bool) if exact is None else exact
    groups: list[tuple[dict, torch.Tensor]] = [({c: "all" for c in group_by}, torch.arange(len(cases)))]
    if group_by:
        for values, part in cases.groupby(list(group_by), sort=False, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            groups.append((dict(zip(group_by, values)), torch.tensor(part.index.to_list(), dtype=torch.long)))
    layer = np.array([h[0] for h in heads])
    head = np.array([h[1] for h in heads])
    nan = torch.tensor(float("nan"))
    frames = []
    for label, idx in groups:
        acc = torch.where(exact, correct[:, idx].float().mean(1), nan).numpy()
        base = float(base_correct[idx].mean())
        frame = pd.DataFrame({"layer": layer, "head": head})
        for c, v in label.items():
            frame[c] = v
        frame["n"] = len(idx)
        frame["accuracy"] = acc
        frame["baseline_accuracy"] = base
        frame["accuracy_drop"] = base - acc
        frame["accuracy_decrease"] = 100.0 * (base - acc) / base if base > 0 else float("nan")
        frame["logprob_drop"] = (base_lp[idx][None, :] - logprob[:, idx]).mean(1).numpy()
        frame["estimated"] = (~exact).numpy()
        if estimated is not None:
            frame["logprob_drop_estimate"] = (base_lp[idx][None, :] - estimated[:, idx]).mean(1).numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
