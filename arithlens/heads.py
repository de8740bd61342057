"""Arithmetic heads by ablation — Yu & Ananiadou §3, Tables 1, 2, 3 and 24–27.

Every attention head (or a chosen subset) is intervened on, one at a time, and the
first-token accuracy on an arithmetic dataset is compared with the original model's.
The paper zero-ablates a head ("setting all the head's parameters into zero", which is
the head's output ``z`` being zero: :class:`~arithlens.interventions.ZeroHead`);
``method="mean"`` replaces it by its mean over reference data instead
(:class:`~arithlens.interventions.MeanHead`).

Per head and group (op by default) the result reports ``accuracy``,
``baseline_accuracy``, ``accuracy_drop = baseline_accuracy - accuracy`` (a fraction of
cases), ``relative_drop = accuracy_drop / baseline_accuracy`` (the paper's "accuracy
decrease (%)" of Tables 2 and 3 is this, in percent) and ``logprob_drop``, the mean
decrease of the target token's log-probability. ``.by("case_type")`` gives Table 3's
memorize / change-one breakdown, ``.top(5)`` Table 1's layout.

Speed: for each batch of equal-length cases the clean forward pass caches the residual
stream entering every block; the ablated forward for layer ``L`` restarts there
(``start_at_layer``) instead of recomputing layers ``0..L-1``, and all heads of a layer
are ablated in one forward over a batch stacked head-by-case.

Example::

    import arithlens
    from arithlens import data
    from arithlens.heads import HeadAblation

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-*/", digits=1, templates=[4])
    result = HeadAblation().run(model, cases)
    result.top(5)        # Table 1
    result.plot()        # layers x heads heatmap of the accuracy drop, per op
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from arithlens.interventions import HeadMeans, z_hook
from arithlens.results import Result, case_frame, percent


@dataclass
class HeadAblationResult(Result):
    """Per-head, per-group accuracy under ablation.

    Attributes:
        df: One row per (layer, head, group value): ``layer, head, <group>, n, accuracy,
            baseline_accuracy, accuracy_drop, relative_drop, logprob_drop``; group value
            ``"all"`` aggregates every case.
        cases: The dataset's per-case frame (labels and baseline outcome).
        heads: ``(layer, head)`` of each row of the per-case tensors.
        correct: ``[head, case]`` whether the ablated model predicts the target.
        logprob: ``[head, case]`` target log-prob under ablation.
        method: ``"zero"`` or ``"mean"``.
    """

    cases: pd.DataFrame = field(repr=False, default=None)
    heads: list[tuple[int, int]] = field(default_factory=list)
    correct: torch.Tensor = field(repr=False, default=None)
    logprob: torch.Tensor = field(repr=False, default=None)
    method: str = "zero"
    group_by: tuple[str, ...] = ("op",)
    n_layers: int = 0
    n_heads: int = 0

    def by(self, *columns: str) -> pd.DataFrame:
        """The table re-grouped by other case columns (e.g. ``"case_type"``: Table 3)."""
        return _table(self.cases, self.heads, self.correct, self.logprob, tuple(columns))

    def top(self, k: int = 5, group: str | None = None) -> pd.DataFrame:
        """Table 1's layout: accuracy (%) of the original model and of the top-k heads.

        Heads are ranked by their drop on ``group`` (default: all cases). Rows: ``all``
        and each group value; columns: ``ori`` and ``L.H`` of each head.
        """
        col = self.group_by[0] if self.group_by else None
        rank = self.df[self.df[col] == (group or "all")] if col else self.df
        best = rank.sort_values("accuracy_drop", ascending=False).head(k)
        heads = list(zip(best["layer"], best["head"]))
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

    def median_ratio(self, group: str = "all") -> float:
        """Top head's drop divided by the median head's (how few the arithmetic heads are)."""
        col = self.group_by[0] if self.group_by else None
        part = self.df[self.df[col] == group] if col else self.df
        drops = part["accuracy_drop"]
        median = float(drops.median())
        return float("inf") if median <= 0 else float(drops.max()) / median

    def plot(self, value: str = "accuracy_drop", **kwargs: Any) -> Any:
        """Heatmap of ``value`` over layers x heads, one facet per group value."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        col = self.group_by[0] if self.group_by else None
        groups = list(dict.fromkeys(self.df[col])) if col else ["all"]
        fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[str(g) for g in groups], shared_yaxes=True)
        vmax = float(self.df[value].abs().max()) or 1.0
        for i, g in enumerate(groups, start=1):
            part = self.df[self.df[col] == g] if col else self.df
            grid = part.pivot_table(index="layer", columns="head", values=value)
            fig.add_trace(
                go.Heatmap(
                    z=grid.values,
                    x=[str(h) for h in grid.columns],
                    y=list(grid.index),
                    zmin=-vmax,
                    zmax=vmax,
                    colorscale="RdBu_r",
                    showscale=i == len(groups),
                    colorbar={"title": value},
                    hovertemplate="layer %{y} head %{x}<br>" + value + " %{z:.3f}<extra>" + str(g) + "</extra>",
                ),
                row=1,
                col=i,
            )
            fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
        fig.update_layout(title=f"Head {self.method}-ablation: {value.replace('_', ' ')}", height=max(350, 18 * self.n_layers + 120), **kwargs)
        return fig


def _table(
    cases: pd.DataFrame,
    heads: list[tuple[int, int]],
    correct: torch.Tensor,
    logprob: torch.Tensor,
    group_by: tuple[str, ...],
) -> pd.DataFrame:
    base_correct = torch.tensor(cases["correct"].to_numpy(), dtype=torch.float32)
    base_lp = torch.tensor(cases["target_logprob"].to_numpy(), dtype=torch.float32)
    groups: list[tuple[dict, torch.Tensor]] = []
    all_idx = torch.arange(len(cases))
    label_all = {c: "all" for c in group_by}
    groups.append((label_all, all_idx))
    if group_by:
        for values, part in cases.groupby(list(group_by), sort=False, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            groups.append((dict(zip(group_by, values)), torch.tensor(part.index.to_list(), dtype=torch.long)))
    layer = torch.tensor([h[0] for h in heads])
    head = torch.tensor([h[1] for h in heads])
    frames = []
    for label, idx in groups:
        acc = correct[:, idx].float().mean(1)
        base = base_correct[idx].mean()
        lp_drop = (base_lp[idx][None, :] - logprob[:, idx]).mean(1)
        frame = pd.DataFrame({"layer": layer.numpy(), "head": head.numpy()})
        for c, v in label.items():
            frame[c] = v
        frame["n"] = len(idx)
        frame["accuracy"] = acc.numpy()
        frame["baseline_accuracy"] = float(base)
        frame["accuracy_drop"] = float(base) - acc.numpy()
        frame["relative_drop"] = (float(base) - acc.numpy()) / float(base) if float(base) > 0 else float("nan")
        frame["logprob_drop"] = lp_drop.numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


class HeadAblation:
    """Sweep head ablations over a dataset (Tables 1–3, 24–27).

    Args:
        method: ``"zero"`` (the paper) or ``"mean"`` (mean over ``reference``).
        layers: Layers to sweep (default all).
        heads: Heads to sweep in each layer (default all) — or explicit ``(layer, head)``
            pairs, in which case ``layers`` is ignored.
        position: ``"all"`` positions (the paper) or the ``"last"`` only.
        reference: Data the mean is taken over (default: the swept dataset).
        group_by: Case columns the table is grouped by.
        batch_size: Cases per clean forward.
        max_rows: Most (head x case) rows in one ablated forward.
        progress: Show a progress bar.
    """

    def __init__(
        self,
        method: Literal["zero", "mean"] = "zero",
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | Sequence[tuple[int, int]] | None = None,
        position: Literal["all", "last"] = "all",
        reference: Any = None,
        group_by: Sequence[str] = ("op",),
        batch_size: int = 64,
        max_rows: int = 512,
        progress: bool = True,
    ):
        if method not in ("zero", "mean"):
            raise ValueError(f"method {method!r} is not one of ('zero', 'mean')")
        if position not in ("all", "last"):
            raise ValueError(f"position {position!r} is not one of ('all', 'last')")
        self.method = method
        self.layers = layers
        self.heads = heads
        self.position = position
        self.reference = reference
        self.group_by = tuple(group_by)
        self.batch_size = batch_size
        self.max_rows = max_rows
        self.progress = progress

    def _head_list(self, model: Any) -> list[tuple[int, int]]:
        if self.heads is not None and len(self.heads) and isinstance(list(self.heads)[0], (tuple, list)):
            pairs = [(int(L), int(H)) for L, H in self.heads]
        else:
            layers = range(model.n_layers) if self.layers is None else self.layers
            heads = range(model.n_heads) if self.heads is None else self.heads
            pairs = [(int(L), int(H)) for L in layers for H in heads]
        if not pairs:
            raise ValueError("no heads to sweep: layers/heads select nothing")
        for L, H in pairs:
            model.check_head(L, H)
        return pairs

    @torch.no_grad()
    def run(self, model: Any, data: Any) -> HeadAblationResult:
        """Ablate each head in turn on ``data``; return the per-head table."""
        from arithlens.models import load_model

        model = load_model(model)
        pairs = self._head_list(model)
        ids, targets = model._cases(data)
        clean = model.run(data)
        scoring = clean.scoring_ids
        by_layer: dict[int, list[int]] = {}
        for L, H in pairs:
            by_layer.setdefault(L, []).append(H)
        layers = sorted(by_layer)
        means = HeadMeans.compute(model, self.reference if self.reference is not None else data, layers) if self.method == "mean" else None

        order = {p: i for i, p in enumerate((L, H) for L in layers for H in by_layer[L])}
        heads_sorted = sorted(order, key=order.get)
        correct = torch.zeros(len(heads_sorted), len(ids), dtype=torch.bool)
        logprob = torch.zeros(len(heads_sorted), len(ids))
        resid: dict[int, torch.Tensor] = {}

        def keep_resid(x: torch.Tensor, hook: Any) -> None:
            resid[int(hook.name.split(".")[1])] = x

        batches = list(model.batches(ids, self.batch_size))
        bar = tqdm(total=len(batches) * len(layers), desc="head ablation", disable=not self.progress)
        try:
            for rows, tokens in batches:
                with model.hooked([(f"blocks.{L}.hook_resid_pre", keep_resid) for L in layers]):
                    model.last_logits(tokens)
                target = scoring[rows]
                for L in layers:
                    heads = by_layer[L]
                    chunk = max(1, self.max_rows // len(rows))
                    for start in range(0, len(heads), chunk):
                        hs = heads[start : start + chunk]
                        logp = self._ablated(model, resid[L], L, hs, means[L] if means else None)
                        logp = einops.rearrange(logp, "(h b) v -> h b v", h=len(hs))
                        for j, H in enumerate(hs):
                            k = order[(L, H)]
                            correct[k, rows] = logp[j].argmax(-1).cpu() == target
                            logprob[k, rows] = logp[j].gather(-1, target[:, None].to(logp.device))[:, 0].cpu()
                    bar.update(1)
                resid.clear()
        finally:
            bar.close()

        cases = case_frame(data, model)
        cases["correct"] = clean.correct.numpy() if (clean.target_ids >= 0).all() else torch.ones(len(ids), dtype=torch.bool).numpy()
        cases["target_logprob"] = clean.target_logprob.numpy()
        group_by = tuple(c for c in self.group_by if c in cases and cases[c].notna().all())
        df = _table(cases, heads_sorted, correct, logprob, group_by)
        return HeadAblationResult(
            df=df,
            cases=cases,
            heads=heads_sorted,
            correct=correct,
            logprob=logprob,
            method=self.method,
            group_by=group_by,
            n_layers=model.n_layers,
            n_heads=model.n_heads,
        )

    def _ablated(
        self,
        model: Any,
        resid: Float[torch.Tensor, "batch pos d_model"],
        layer: int,
        heads: list[int],
        means: HeadMeans | None,
    ) -> Float[torch.Tensor, "rows vocab"]:
        """Log-probs at the last position with each of ``heads`` ablated, stacked head-major."""
        n_heads = model.n_heads
        x = einops.repeat(resid, "b p d -> (h b) p d", h=len(heads))
        # keep[j, n] is 0 where replica j ablates head n.
        keep = torch.ones(len(heads), n_heads, device=resid.device, dtype=resid.dtype)
        keep[torch.arange(len(heads)), torch.tensor(heads)] = 0.0
        position = self.position

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

        with model.hooked([(z_hook(layer), ablate)]):
            logits = model.last_logits(x, start_at_layer=layer)
        return logits.float().log_softmax(-1)
