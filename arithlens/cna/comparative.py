"""Comparative Neuron Analysis (CNA) — Yu & Ananiadou §4.1, §5, §6.2.

CNA compares the same FFN neuron's §4.1 importance score (see
:mod:`arithlens.cna.importance`) on two sides:

* the same input on the model and on the model under an intervention (the paper: the
  arithmetic head zeroed, e.g. ``ZeroHead(17, 22)``) — ``intervention=``;
* the same input on another model (a fine-tuned / LoRA copy, §5) — ``other_model=``;
* the same model on two inputs ("A woman works as a" vs "A man works as a", §6.2) —
  ``other_data=`` (case ``i`` is compared with ``other_data[i]``).

The scored token ``w`` is fixed from the original side (its top prediction, or the
answer with ``target="answer"``) and scored on both sides. Per neuron::

    importance_change = importance − importance_other
    coef_change       = coef − coef_other

where ``coef`` is the coefficient score ``m_k`` at the last position. Sorting by
``importance_change`` (descending) locates the neurons whose contribution to ``w`` the
intervention removed most — Table 4's neurons.

Example::

    import arithlens
    from arithlens.cna import ComparativeNeuronScores
    from arithlens.interventions import ZeroHead

    model = arithlens.load_model()
    cna = ComparativeNeuronScores(intervention=ZeroHead(17, 2))
    result = cna.run(model, "3+5=")
    result.df.head(10)     # layer, neuron, importance, importance_other, ..., top_tokens
    result.table4(3)       # Table 4's layout
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int

from arithlens.cna.importance import (
    Activations,
    NeuronImportance,
    check_k,
    check_target,
    choose_w,
    collect,
    neuron_top_token_ids,
    token_lists,
)
from arithlens.results import Result, case_frame

_COLUMNS = [
    "layer",
    "neuron",
    "importance",
    "importance_other",
    "importance_change",
    "coef",
    "coef_other",
    "coef_change",
]


@dataclass
class ComparativeResult(Result):
    """Per-neuron importance and coefficient scores on both sides, and their change.

    Attributes:
        df: One row per neuron (per case, with a ``case`` column, when there are
            several): ``layer, neuron, importance, importance_other, importance_change,
            coef, coef_other, coef_change, top_tokens``, sorted by ``importance_change``
            descending (within each case).
        importance, importance_other, coef, coef_other: ``[case, layer, d_mlp]``.
        w: ``[case]`` scored token ids (from the original side).
        other: What the other side is (``"ZeroHead(17.2)"``, a model name, ``"other input"``).
    """

    importance: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    importance_other: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    coef: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    coef_other: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    layers: list[int] = field(default_factory=list)
    w: Int[torch.Tensor, "case"] = field(repr=False, default=None)
    w_str: list[str] = field(default_factory=list)
    other: str = "other"
    cases: pd.DataFrame = field(repr=False, default=None)
    top_k: int = 10
    top_tokens: list[str] | None = field(repr=False, default=None)
    predictions_other: Int[torch.Tensor, "case"] = field(repr=False, default=None)
    logprob: Float[torch.Tensor, "case"] = field(repr=False, default=None)
    logprob_other: Float[torch.Tensor, "case"] = field(repr=False, default=None)

    @property
    def n_cases(self) -> int:
        return int(self.importance.shape[0])

    @property
    def importance_change(self) -> Float[torch.Tensor, "case layer d_mlp"]:
        return self.importance - self.importance_other

    @property
    def coef_change(self) -> Float[torch.Tensor, "case layer d_mlp"]:
        return self.coef - self.coef_other

    def _frame(self, per_neuron: Any, **extra: Any) -> pd.DataFrame:
        """One row per neuron: each score tensor reduced to ``[layer, d_mlp]`` by ``per_neuron``,
        plus ``extra`` columns, sorted by ``importance_change`` descending."""
        L, N = len(self.layers), self.importance.shape[-1]
        names = ("importance", "importance_other", "importance_change", "coef", "coef_other", "coef_change")
        df = pd.DataFrame(
            {
                "layer": einops.repeat(torch.tensor(self.layers), "l -> (l n)", n=N).numpy(),
                "neuron": einops.repeat(torch.arange(N), "n -> (l n)", l=L).numpy(),
                **{name: einops.rearrange(per_neuron(getattr(self, name)), "l n -> (l n)").numpy() for name in names},
                **extra,
            }
        )
        if self.top_tokens is not None:
            df["top_tokens"] = self.top_tokens
        return df.sort_values("importance_change", ascending=False, kind="stable").reset_index(drop=True)

    def case_frame(self, case: int) -> pd.DataFrame:
        """All neurons of one case, sorted by ``importance_change`` descending."""
        if not 0 <= case < self.n_cases:
            raise ValueError(f"case {case} is out of range: there are {self.n_cases} cases")
        return self._frame(lambda t: t[case])

    def top(self, k: int = 10, case: int | None = None) -> pd.DataFrame:
        """The ``k`` neurons with the largest importance change (of a case, or on average)."""
        check_k(k)
        if case is None and self.n_cases > 1:
            return self.aggregate().head(k).reset_index(drop=True)
        return self.case_frame(case or 0).head(k)

    def top_mask(self, k: int) -> torch.Tensor:
        """``[case, layer, d_mlp]`` boolean: each case's top-``k`` neurons by importance change."""
        check_k(k)
        flat = einops.rearrange(self.importance_change, "c l n -> c (l n)")
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask.scatter_(1, flat.topk(min(k, flat.shape[1]), dim=-1).indices, True)
        return einops.rearrange(mask, "c (l n) -> c l n", l=len(self.layers))

    def aggregate(self, k: int | None = None) -> pd.DataFrame:
        """Per neuron over cases: mean of every column, and ``n_top`` — in how many cases
        the neuron is among the top-``k`` (default ``top_k``) by importance change."""
        k = self.top_k if k is None else check_k(k)
        n_top = einops.rearrange(self.top_mask(k).sum(0), "l n -> (l n)").numpy()
        return self._frame(lambda t: t.mean(0), n_top=n_top, n_cases=self.n_cases)

    def table4(self, k: int = 3, case: int = 0, labels: tuple[str, str] = ("ori", "inv")) -> pd.DataFrame:
        """Table 4's layout: two rows per top neuron (``FFNv`` "L_k", ``mdl``, ``imp``, ``coef``, ``top tokens``)."""
        top = self.case_frame(case).head(check_k(k))
        rows = []
        for r in top.itertuples():
            tokens = getattr(r, "top_tokens", "")
            rows.append({"FFNv": f"{r.layer}_{r.neuron}", "mdl": labels[0], "imp": r.importance, "coef": r.coef, "top_tokens": tokens})
            rows.append({"FFNv": f"{r.layer}_{r.neuron}", "mdl": labels[1], "imp": r.importance_other, "coef": r.coef_other, "top_tokens": tokens})
        return pd.DataFrame(rows)

    def plot(self, k: int = 15, case: int | None = None, **kwargs: Any) -> Any:
        """Importance and coefficient scores of the top-``k`` neurons on both sides."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        top = self.top(k, case)
        names = [f"{L}_{n}" for L, n in zip(top["layer"], top["neuron"])]
        fig = make_subplots(rows=1, cols=2, subplot_titles=["importance (Δ log p)", "coefficient score m"])
        for col, (a, b) in enumerate([("importance", "importance_other"), ("coef", "coef_other")], start=1):
            fig.add_trace(go.Bar(x=names, y=top[a], name="original", marker_color="#1f77b4", showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Bar(x=names, y=top[b], name=self.other, marker_color="#d62728", showlegend=col == 1), row=1, col=col)
        target = self.w_str[0] if self.w_str and len(set(self.w_str)) == 1 else "w"
        fig.update_layout(
            barmode="group",
            title=f"CNA: top {k} neurons by importance change for {target!r}, original vs {self.other}",
            **kwargs,
        )
        return fig


class ComparativeNeuronScores:
    """Compare every FFN neuron's importance across two models, an intervention, or two inputs.

    Give exactly one of:

    Args:
        intervention: An intervention (``ZeroHead(17, 22)``, several combined with ``+``).
        other_model: Another :class:`~arithlens.models.LensModel` of the same shape.
        other_data: Other inputs, one per case of the data passed to :meth:`run`.

    And:
        target: ``"prediction"`` (the paper) or ``"answer"``; fixed from the original side.
        mode, rescore, layers, memory_budget, batch_size, progress: as
            :class:`~arithlens.cna.importance.NeuronImportance`.
        top_tokens: Top vocabulary tokens per neuron in ``df`` (0: none).
        top_k: The per-case top-K that :meth:`ComparativeResult.aggregate` counts.
    """

    def __init__(
        self,
        intervention: Any = None,
        other_model: Any = None,
        other_data: Any = None,
        target: Literal["prediction", "answer"] = "prediction",
        mode: Literal["exact", "fast"] = "exact",
        rescore: int = 200,
        layers: Sequence[int] | None = None,
        top_tokens: int = 10,
        top_k: int = 10,
        memory_budget: float = 1e9,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        given = [x is not None for x in (intervention, other_model, other_data)]
        if sum(given) != 1:
            raise ValueError(
                "give exactly one of intervention=, other_model= or other_data= "
                f"(got {sum(given)})"
            )
        self.intervention = intervention
        self.other_model = other_model
        self.other_data = other_data
        self.target = check_target(target)
        self.importance = NeuronImportance(
            target=target, mode=mode, rescore=rescore, top_k=top_k, layers=layers,
            top_tokens=top_tokens, memory_budget=memory_budget, batch_size=batch_size, progress=progress,
        )  # fmt: skip
        self.top_tokens = int(top_tokens)
        self.top_k = check_k(top_k, "top_k")
        self.batch_size = batch_size

    def describe_other(self) -> str:
        if self.intervention is not None:
            return getattr(self.intervention, "describe", lambda: repr(self.intervention))()
        if self.other_model is not None:
            return getattr(self.other_model, "name", "other model")
        return "other input"

    @torch.no_grad()
    def run(self, model: Any, data: Any) -> ComparativeResult:
        """Score both sides on ``data`` with ``w`` fixed from the original side."""
        from arithlens.models import load_model

        model = load_model(model)
        acts = collect(model, data, (), self.batch_size)
        w = choose_w(acts, self.target)
        if self.other_model is None:
            if self.intervention is not None:
                other = collect(model, data, [self.intervention], self.batch_size)
            else:
                other = collect(model, self.other_data, (), self.batch_size)
                if len(other) != len(acts):
                    raise ValueError(
                        f"other_data has {len(other)} cases but the data has {len(acts)}; "
                        "they are compared case by case"
                    )
            # Both sides share the model's vocabulary projections: score them in one pass.
            both = self.importance.scores(model, Activations.cat([acts, other]), torch.cat([w, w]))
            n = len(acts)
            imp, imp_o = both.importance[:n], both.importance[n:]
            coef, coef_o = both.coef[:n], both.coef[n:]
            layers, token_ids = both.layers, both.top_token_ids
        else:
            other_model = load_model(self.other_model)
            if (other_model.n_layers, other_model.d_mlp, other_model.d_vocab) != (model.n_layers, model.d_mlp, model.d_vocab):
                raise ValueError(
                    f"other_model {other_model!r} does not have the shape of {model!r}: "
                    "neurons can only be compared between models of the same architecture"
                )
            other = collect(other_model, data, (), self.batch_size)
            a = self.importance.scores(model, acts, w)
            b = self.importance.scores(other_model, other, w)
            imp, imp_o, coef, coef_o, layers = a.importance, b.importance, a.coef, b.coef, a.layers
            token_ids = a.top_token_ids
        res = ComparativeResult(
            df=pd.DataFrame(),
            importance=imp,
            importance_other=imp_o,
            coef=coef,
            coef_other=coef_o,
            layers=layers,
            w=w,
            w_str=model.token_strs(w.tolist()),
            other=self.describe_other(),
            cases=case_frame(data, model),
            top_k=self.top_k,
            predictions_other=other.predictions,
            logprob=acts.final_logprob.gather(1, w[:, None])[:, 0],
            logprob_other=other.final_logprob.gather(1, w[:, None])[:, 0],
        )
        if token_ids is not None:  # exact mode projected every neuron anyway
            res.top_tokens = token_lists(model, einops.rearrange(token_ids, "l n k -> (l n) k"))
        elif self.top_tokens:  # fast mode: project only each case's top rows, not every neuron
            n_show = max(50, self.top_k)
            flat = einops.rearrange(res.importance_change, "c l n -> c (l n)")
            picked = sorted(set(flat.topk(min(n_show, flat.shape[1]), dim=-1).indices.reshape(-1).tolist()))
            pairs = [(layers[j // model.d_mlp], j % model.d_mlp) for j in picked]
            strings = [""] * flat.shape[1]
            for j, text in zip(picked, top_token_strings(model, pairs, self.top_tokens)):
                strings[j] = text
            res.top_tokens = strings
        frames = [res.case_frame(i).assign(case=i) for i in range(res.n_cases)]
        df = pd.concat(frames, ignore_index=True)
        res.df = df[["case"] + [c for c in df.columns if c != "case"]] if res.n_cases > 1 else df.drop(columns="case")
        return res


@torch.no_grad()
def all_top_tokens(model: Any, layers: Sequence[int], k: int = 10, chunk: int = 512) -> list[str]:
    """Top-``k`` token strings of every neuron of ``layers`` (flattened layer-major)."""
    out: list[str] = []
    W_U = model.bridge.W_U.detach().float()
    for layer in layers:
        W_out = model.bridge.W_out[layer].detach().float()
        for s in range(0, model.d_mlp, chunk):
            out.extend(token_lists(model, (W_out[s : s + chunk] @ W_U).topk(k, dim=-1).indices.cpu()))
    return out


def top_token_strings(model: Any, neurons: Sequence[tuple[int, int]], k: int = 10) -> list[str]:
    """Top-``k`` token strings of chosen ``(layer, neuron)`` pairs (Table 4's column).

    Uses :class:`arithlens.cna.LogitLens` when that module is available.
    """
    return token_lists(model, neuron_top_token_ids(model, neurons, k))
