"""Comparative Neuron Analysis (CNA) — Yu & Ananiadou §4.1, §5, §6.2.

CNA compares the same FFN neuron's §4.1 importance score (see
[`arithlens.cna.importance`][arithlens.cna.importance]) on two sides:

* the same input on the model and on the model under an intervention (the paper: the
  arithmetic head zeroed, `ZeroHead(17, 22)`) — `intervention=` (or the head itself, `intervention="17.22"`);
* the same input on another model (a fine-tuned / LoRA copy, §5) — `other_model=`;
* the same model on two inputs ("A woman works as a" vs "A man works as a", §6.2) —
  `other_data=` (case `i` is compared with `other_data[i]`).

The scored token `w` is fixed from the original side (its top prediction, or the answer
with `target="answer"`) and scored on both sides. Each side's residual vectors are read
with the final norm's scale frozen: under `scale="original"` (the default, the
paper's reference code) both sides use the original run's scale; under `scale="own"` the
other side uses its own run's. Per neuron:

    importance_change = importance − importance_other
    coef_change       = coef − coef_other

so a **positive change is a drop** on the other side. Sorting by `importance_change`
(descending) finds the neurons whose contribution to `w` the other side lost most —
Table 4's neurons.

Example:
    ```python
    import arithlens
    from arithlens.cna import ComparativeNeuronScores
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model()
    cna = ComparativeNeuronScores(intervention=ZeroHead(17, 2))
    result = cna.run(model, "3+5=")
    result.df.head(10)     # layer, neuron, importance, importance_other, importance_change, …
    result.table(3)       # Table 4's layout
    ```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from arithlens.core import validate
from arithlens.core.cache import DatasetCache, ensure_cache
from arithlens.cna import components
from arithlens.cna.base import CNAAnalysis
from arithlens.cna.frames import label_pairs, neuron_frame, top_mask
from arithlens.cna.importance import score_sides
from arithlens.cna.inputs import TARGET_WORDS, Activations, check_layers, choose_w, cna_hooks, neuron_label, scored_tokens
from arithlens.cna.tokens import labelled_tokens
from arithlens.analysis.results import Result, Table, case_frame
from arithlens.data import as_dataset
from arithlens.core.loading import load_model
from arithlens.core.interventions import as_hooks, as_intervention

SCORES = ("importance", "importance_other", "importance_change", "coef", "coef_other", "coef_change")
"""The per-neuron quantities, one name each (the `df` columns, the CLI CSV, `table4()`)."""


def comparative_frame(
    layers: Sequence[int], tensors: dict[str, torch.Tensor], tokens: dict | None, reduce: Any, **extra: Any
) -> pd.DataFrame:
    """One row per neuron: every quantity of [`SCORES`] reduced to `[layer, d_mlp]` by `reduce`,
    `extra` columns, `top_tokens`; sorted by `importance_change` descending."""
    df = neuron_frame(layers, {name: reduce(tensors[name]) for name in SCORES}, tokens)
    for name, values in extra.items():
        df.insert(len(df.columns) - (tokens is not None), name, values)
    return df.sort_values("importance_change", ascending=False, kind="stable").reset_index(drop=True)


def _per_case_df(layers: Sequence[int], tensors: dict[str, torch.Tensor], tokens: dict | None) -> pd.DataFrame:
    n = tensors["importance"].shape[0]
    frames = [comparative_frame(layers, tensors, tokens, lambda t, i=i: t[i]).assign(case=i) for i in range(n)]
    df = pd.concat(frames, ignore_index=True)
    return df[["case"] + [c for c in df.columns if c != "case"]] if n > 1 else df.drop(columns="case")


@dataclass
class ComparativeNeuronScoresResult(Result):
    """Per-neuron importance and coefficient scores on both sides, and their change.

    Attributes:
        df: One row per neuron (per case, with a leading `case` column, when there are
            several), sorted by `importance_change` descending within each case:
            `layer`, `neuron`, `importance` (§4.1 score on the original side, nats),
            `importance_other` (the same neuron on the other side), `importance_change`
            (= importance − importance_other: **positive means the importance dropped on
            the other side**), `coef`, `coef_other`, `coef_change` (the coefficient score
            `m_k`, likewise; positive = dropped), and `top_tokens` (the neuron's top
            vocabulary tokens, filled for each case's top `max(top_k, 50)` neurons, `""`
            elsewhere). A neuron's label `L_N` elsewhere (e.g. `29_545`) is neuron `N` of
            layer `L`'s FFN.
        importance: `[case, layer, d_mlp]` original side.
        importance_other: `[case, layer, d_mlp]` other side.
        coef: `[case, layer, d_mlp]` original side.
        coef_other: `[case, layer, d_mlp]` other side.
        layers: The scored layers.
        w: `[case]` scored token ids (from the original side).
        w_str: The scored tokens as text.
        other: What the other side is (`"ZeroHead(17.2)"`, a model name, `"other input"`).
        cases: One row per case.
        top_k: The per-case top-K [`aggregate`][arithlens.cna.comparative.ComparativeNeuronScoresResult.aggregate] counts.
        neuron_tokens: `(layer, neuron)` → top tokens, for the labelled neurons.
        predictions_other: `[case]` the other side's top prediction.
        logprob: `[case]` the model's own `log p(w)` on the original side.
        logprob_other: `[case]` the same on the other side.
        scale: `"original"` or `"own"`: the scale the other side was read with.
        bound: Largest error (nats) the series evaluation may have added to a score.
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
    neuron_tokens: dict[tuple[int, int], str] | None = field(repr=False, default=None)
    predictions_other: Int[torch.Tensor, "case"] = field(repr=False, default=None)
    logprob: Float[torch.Tensor, "case"] = field(repr=False, default=None)
    logprob_other: Float[torch.Tensor, "case"] = field(repr=False, default=None)
    scale: str = "original"
    bound: float = 0.0
    target: str = "prediction"

    @property
    def n_cases(self) -> int:
        return int(self.importance.shape[0])

    def caption(self) -> str:
        return (
            f"scored token w = {scored_tokens(self.w_str)} ({TARGET_WORDS.get(self.target, self.target)} on the original side); "
            f"other side = {self.other}. importance_change = importance − importance_other (nats): "
            "positive means the neuron's importance for w dropped on the other side; coef_change likewise."
        )

    @property
    def importance_change(self) -> Float[torch.Tensor, "case layer d_mlp"]:
        """`importance − importance_other` (positive: the importance dropped on the other side)."""
        return self.importance - self.importance_other

    @property
    def coef_change(self) -> Float[torch.Tensor, "case layer d_mlp"]:
        """`coef − coef_other` (positive: the coefficient dropped on the other side)."""
        return self.coef - self.coef_other

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in SCORES}

    def subset(self, cases: Sequence[int]) -> "ComparativeNeuronScoresResult":
        """The result of the given cases only, in that order — what CNA run on those cases
        returns (every score is per case), without scoring them again."""
        idx = validate.int_sequence(cases, "cases", low=0, high=self.n_cases - 1)
        if not idx:
            raise ValueError("cases is empty: give at least one case index")
        sel = torch.tensor(idx, dtype=torch.long)
        pick = lambda t: None if t is None else t[sel]  # noqa: E731
        # Every other field (layers, target, scale, bound, labelled tokens...) is the whole run's.
        return dataclasses.replace(
            self,
            df=_per_case_df(self.layers, {name: t[sel] for name, t in self._tensors().items()}, self.neuron_tokens),
            importance=self.importance[sel], importance_other=self.importance_other[sel],
            coef=self.coef[sel], coef_other=self.coef_other[sel], w=pick(self.w), w_str=[self.w_str[i] for i in idx],
            cases=None if self.cases is None else self.cases.iloc[idx].reset_index(drop=True),
            predictions_other=pick(self.predictions_other), logprob=pick(self.logprob), logprob_other=pick(self.logprob_other),
            meta={},  # the run's provenance describes all of its cases, not these
        )  # fmt: skip

    def case_frame(self, case: int) -> pd.DataFrame:
        """All neurons of one case, sorted by `importance_change` descending."""
        i = validate.integer(case, "case", low=0, high=self.n_cases - 1)
        return comparative_frame(self.layers, self._tensors(), self.neuron_tokens, lambda t: t[i])

    def top(self, k: int = 10, case: int | None = None) -> pd.DataFrame:
        """The `k` neurons with the largest importance change (of a case, or on average over cases)."""
        k = validate.positive_int(k, "k")
        if case is None and self.n_cases > 1:
            return self.aggregate().head(k).reset_index(drop=True)
        return self.case_frame(0 if case is None else case).head(k)

    def top_mask(self, k: int) -> Bool[torch.Tensor, "case layer d_mlp"]:
        """`[case, layer, d_mlp]` boolean: each case's top-`k` neurons by importance change."""
        return top_mask(self.importance_change, k)

    def aggregate(self, k: int | None = None) -> pd.DataFrame:
        """Per neuron over cases: the mean of every quantity, and `n_top` — in how many cases
        the neuron is among the top-`k` (default `top_k`) by importance change."""
        k = self.top_k if k is None else validate.positive_int(k, "k")
        n_top = einops.rearrange(self.top_mask(k).sum(0), "l n -> (l n)").numpy()
        return comparative_frame(self.layers, self._tensors(), self.neuron_tokens, lambda t: t.mean(0), n_top=n_top, n_cases=self.n_cases)

    def table(self, k: int = 3, case: int = 0, labels: tuple[str, str] | None = None) -> pd.DataFrame:
        """Table 4's layout: two rows per top neuron of a case, original side then other side.

        Columns (the paper's heading → ours): FFNv → `neuron_label` (`L_N`: neuron `N` of
        layer `L`'s FFN, e.g. `28_3696`), mdl → `side` (`"original"` / the other side, or
        `labels`), imp → `importance`, coef → `coef`, top10 tokens → `top_tokens`. On the
        other side's row `importance` and `coef` are `importance_other` and `coef_other`.
        """
        k = validate.positive_int(k, "k")
        first, second = labels if labels is not None else ("original", self.other)
        rows = []
        for r in self.case_frame(case).head(k).itertuples():
            tokens = getattr(r, "top_tokens", "")
            label = neuron_label(r.layer, r.neuron)
            rows.append({"neuron_label": label, "side": first, "importance": r.importance, "coef": r.coef, "top_tokens": tokens})
            rows.append({"neuron_label": label, "side": second, "importance": r.importance_other, "coef": r.coef_other, "top_tokens": tokens})
        table = Table(rows, columns=["neuron_label", "side", "importance", "coef", "top_tokens"])
        i = validate.integer(case, "case", low=0, high=self.n_cases - 1)
        table.attrs["caption"] = (
            f"Table 4: the top {k} neurons by importance drop for w = {self.w_str[i]!r}; each neuron's rows give "
            f"importance (nats) and coef on the {first!r} side and on the {second!r} side."
        )
        return table


    def plot(self, k: int = 15, case: int | None = None, **kwargs: Any) -> Any:
        """Importance and coefficient scores of the top-`k` neurons on both sides."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        top = self.top(k, case)
        labels = [neuron_label(L, n) for L, n in zip(top["layer"], top["neuron"])]
        fig = make_subplots(rows=1, cols=2, subplot_titles=["importance (Δ log p, nats)", "coefficient score m"])
        for col, (a, b) in enumerate([("importance", "importance_other"), ("coef", "coef_other")], start=1):
            for name, column, color in (("original", a, "#1f77b4"), (self.other, b, "#d62728")):
                fig.add_trace(
                    go.Bar(x=labels, y=top[column], name=name, marker_color=color, showlegend=col == 1,
                           hovertemplate=f"neuron %{{x}} ({name})<br>{column} %{{y:.3f}}<extra></extra>"),
                    row=1, col=col,
                )  # fmt: skip
            # Upright labels need ~one line height each: 15 of them fit a half-width subplot at any
            # width the report or docs show, where plotly's own auto-angle let them collide at 1200 px.
            fig.update_xaxes(title_text="neuron (layer_neuron)", tickangle=-90, row=1, col=col)
        fig.update_yaxes(title_text="nats", row=1, col=1)
        fig.update_yaxes(title_text="m", row=1, col=2)
        target = self.w_str[0] if self.w_str and len(set(self.w_str)) == 1 else "w"
        fig.update_layout(barmode="group", title=f"CNA: top {k} neurons by importance drop for {target!r}, original vs {self.other}", **kwargs)
        return fig


@dataclass(frozen=True, kw_only=True)
class ComparativeNeuronScores(CNAAnalysis):
    """Compare every FFN neuron's importance across an intervention, two models, or two inputs.

    Give exactly one of `intervention`, `other_model`, `other_data`.

    Args:
        intervention: An intervention (`ZeroHead(17, 22)`; several combined with `+`), or a
            head (`"17.22"`, `(17, 22)`) for `ZeroHead`.
        other_model: Another [`LensModel`][arithlens.core.model.LensModel] of the same shape.
        other_data: Other inputs, one per case of the data passed to `run`.
        layers: FFN layers to score (default all).
        top_tokens: Top vocabulary tokens listed per labelled neuron (0: no `top_tokens` column).
        top_k: The per-case top-K [`ComparativeNeuronScoresResult.aggregate`][arithlens.cna.comparative.ComparativeNeuronScoresResult.aggregate] counts.
        target, mode, rescore, scale, memory_budget, batch_size, progress, …: the shared
            options of [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis] (`scale` picks which
            final-norm scale the other side is read with; `target` is fixed from the original side).
    """

    intervention: Any = None
    other_model: Any = None
    other_data: Any = None
    layers: Sequence[int] | None = None
    top_tokens: int = 10
    top_k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.intervention is not None:
            object.__setattr__(self, "intervention", as_intervention(self.intervention))
        given = sum(x is not None for x in (self.intervention, self.other_model, self.other_data))
        if given != 1:
            raise ValueError(f"give exactly one of intervention=, other_model= or other_data= (got {given})")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(validate.int_sequence(self.layers, "layers", low=0, unique=True)))
        object.__setattr__(self, "top_tokens", validate.non_negative_int(self.top_tokens, "top_tokens"))
        object.__setattr__(self, "top_k", validate.positive_int(self.top_k, "top_k"))

    def describe_other(self) -> str:
        """What the other side is, as results and plots name it."""
        if self.intervention is not None:
            return getattr(self.intervention, "describe", lambda: repr(self.intervention))()
        if self.other_model is not None:
            return getattr(self.other_model, "name", "other model")
        return "other input"

    def hook_names(self, model: Any) -> set[str]:
        """The hooks `run` reads from each side's cache."""
        return cna_hooks(model, check_layers(model, self.layers))

    def _other_cache(self, model: Any, data: Any, other_cache: DatasetCache | None, hooks: set[str]) -> tuple[Any, DatasetCache]:
        """The other side's model and cache (built when not given: never memoized under an intervention)."""

        if self.intervention is not None:
            if other_cache is None:
                return model, model.cache(data, names=hooks, interventions=[self.intervention], batch_size=self.pass_batch(model))
            ensure_cache(model, data, other_cache, hooks, clean=False)
            if repr(self.intervention) not in other_cache.interventions:
                raise ValueError(
                    f"other_cache was built {'clean' if other_cache.clean else 'under ' + repr(other_cache.interventions)}, "
                    f"not under {self.intervention!r}: build it with model.cache(data, names=..., interventions=[intervention])"
                )
            return model, other_cache
        if self.other_data is not None:
            n, m = len(as_dataset(data, model.tokenizer)), len(as_dataset(self.other_data, model.tokenizer))
            if n != m:
                raise ValueError(f"other_data has {m} cases but the data has {n}; they are compared case by case")
            return model, self.prepare(model, self.other_data, other_cache, names=hooks).cache
        other = load_model(self.other_model)
        if (other.n_layers, other.d_mlp, other.d_vocab) != (model.n_layers, model.d_mlp, model.d_vocab):
            raise ValueError(
                f"other_model {other!r} does not have the shape of {model!r}: neurons can only be compared between models of the same architecture"
            )
        return other, self.prepare(other, data, other_cache, names=hooks).cache

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, other_cache: DatasetCache | None = None
    ) -> ComparativeNeuronScoresResult:
        """Score both sides on `data` with `w` fixed from the original side.

        Args:
            model: The original model.
            data: Prompts, token ids or a dataset.
            cache: The original side's clean cache of `data` (holding [`hook_names`][arithlens.cna.comparative.ComparativeNeuronScores.hook_names]);
                given one, no clean forward pass runs.
            other_cache: The other side's cache (under the intervention, of `other_data`, or
                of `other_model` on `data`); given one, no forward pass runs at all.
        """

        model = load_model(model)
        layers = check_layers(model, self.layers)
        hooks = cna_hooks(model, layers)
        if self.intervention is not None:
            as_hooks(model, [self.intervention])  # a head out of range fails before any pass
        cache = self.prepare(model, data, cache, names=hooks).cache
        other_model, other = self._other_cache(model, data, other_cache, hooks)
        w = choose_w(cache, self.target)
        acts = Activations(cache, w)
        acts_o = Activations(other, w, cache.final_scale if self.scale == "original" else None)
        if other_model is model:  # both sides share the model's vocabulary projections
            sc, sc_o = score_sides(model, [acts, acts_o], layers, self)
        else:
            (sc,), (sc_o,) = score_sides(model, [acts], layers, self), score_sides(other_model, [acts_o], layers, self)
        tensors = {"importance": sc.importance, "importance_other": sc_o.importance, "coef": sc.coef, "coef_other": sc_o.coef}
        tensors["importance_change"] = tensors["importance"] - tensors["importance_other"]
        tensors["coef_change"] = tensors["coef"] - tensors["coef_other"]
        tokens = None
        if self.top_tokens:
            pairs = label_pairs(layers, validate.check_finite(tensors["importance_change"], "the importance changes"), max(self.top_k, 50))
            tokens = labelled_tokens(model, pairs, self.top_tokens, layers, sc.coef)
        budget = self.memory_budget
        return ComparativeNeuronScoresResult(
            df=_per_case_df(layers, tensors, tokens),
            importance=sc.importance,
            importance_other=sc_o.importance,
            coef=sc.coef,
            coef_other=sc_o.coef,
            layers=layers,
            w=w,
            w_str=model.token_strs(w.tolist()),
            other=self.describe_other(),
            cases=case_frame(data, model),
            top_k=self.top_k,
            neuron_tokens=tokens,
            predictions_other=other.predictions,
            logprob=components.final_logprob(model, acts, budget),
            logprob_other=components.final_logprob(other_model, acts_o, budget),
            scale=self.scale,
            bound=max(sc.bound, sc_o.bound),
            target=self.target,
        )


def check_cna(cna: Any, n_cases: int, model: Any) -> "ComparativeNeuronScoresResult":
    """A given CNA result, checked to cover `n_cases` cases and every layer, with finite scores."""

    if not isinstance(cna, ComparativeNeuronScoresResult):
        raise ValueError(f"cna={type(cna).__name__} must be a ComparativeNeuronScoresResult (ComparativeNeuronScores(...).run)")
    if cna.n_cases != n_cases:
        raise ValueError(f"cna= holds {cna.n_cases} cases but the data has {n_cases}: run CNA on the same data")
    if list(cna.layers) != list(range(model.n_layers)):
        raise ValueError(f"cna= scored layers {list(cna.layers)}; these analyses need every layer (CNA with layers=None)")
    validate.check_finite(cna.importance_change, "the CNA importance changes")
    return cna


def required_intervention(value: Any) -> Any:
    """The intervention of an analysis built on CNA (mask/keep, the logic chain): `ValueError` when missing."""
    if value is None:
        raise ValueError(
            "give the intervention CNA compares against: intervention=ZeroHead(layer, head) "
            "(or the head itself, intervention='17.2'), the arithmetic head"
        )
    return as_intervention(value)
