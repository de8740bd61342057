"""Importance scores of FFN neurons, heads and layers — Yu & Ananiadou §4.1 (Eq. 5–6).

The importance of FFN neuron `k` of layer `l` for a case is the increase of the log
probability of a token `w` when the neuron's subvalue `m_k · fc2_k` is added to the
residual stream it is added to, read out at the last position with the final norm's scale
frozen (Yu & Ananiadou 2024b):

    imp(l, k) = log p(w | x_mid + m_k fc2_k) − log p(w | x_mid),   p(· | v) = softmax((v / σ) W_U + b_U)

* `x_mid` — `blocks.l.hook_resid_mid` (layer input plus attention output) at the last position;
* `m_k` — the coefficient score, `blocks.l.mlp.hook_post[..., k]` (Eq. 6);
* `fc2_k` — the FFN value, `W_out[l, k]` (Eq. 5);
* `σ` — the final norm's scale of the same forward pass (`DatasetCache.final_scale`,
  the reference code's `final_var`); see [`arithlens.core.readout`][arithlens.core.readout].

`w` is the model's top prediction (the paper) or, with `target="answer"`, the case's
correct token. The same score is given for each attention head's output (added to
`resid_pre`) and each whole layer's attention and MLP outputs. How the scores are computed
fast and within `memory_budget` is described in [`arithlens.cna.scores`][arithlens.cna.scores].

Neuron labels `L_N` (e.g. `29_545`, the paper's "FFNv") name neuron `N` of the FFN of
layer `L`, both counted from 0 ([`neuron_label`][arithlens.cna.inputs.neuron_label]).

Example:
    ```python
    import arithlens
    from arithlens.cna import NeuronImportance

    model = arithlens.load_model()
    job = NeuronImportance(mode="fast", top_k=10)
    cache = model.cache(["3+5="], names=job)     # or let run() make it
    result = job.run(model, ["3+5="], cache=cache)
    result.top(10)          # layer, neuron, importance, coef, n_top, n_cases, top_tokens
    result.plot()
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from arithlens.core import validate
from arithlens.core.cache import DatasetCache
from arithlens.cna import components
from arithlens.cna import scores as kernels
from arithlens.cna.base import CNAAnalysis
from arithlens.core.interventions import as_intervention
from arithlens.cna.frames import aggregate_importance, label_pairs, neuron_frame
from arithlens.cna.inputs import TARGET_WORDS, Activations, check_layers, check_w, choose_w, cna_hooks, neuron_label, scored_tokens
from arithlens.cna.projections import projection_cache
from arithlens.cna.tokens import labelled_tokens
from arithlens.analysis.results import Result, case_frame

# Names other modules imported from here before the split: kept working.
from arithlens.core.loading import load_model


# ---------------------------------------------------------------------------- result
@dataclass
class NeuronImportanceResult(Result):
    """Importance of every FFN neuron (plus heads and layers) on a set of cases.

    Attributes:
        df: One row per neuron, sorted by `importance` descending: `layer`, `neuron`,
            `importance` (mean over cases of the §4.1 score, nats), `coef` (mean
            coefficient score `m_k`), `n_top` (in how many cases the neuron is among that
            case's `top_k` by importance), `n_cases`, and `top_tokens` (the neuron's top
            vocabulary tokens through the final norm and unembedding; filled for each
            case's top `max(top_k, 50)` neurons and the mean's, `""` elsewhere).
        importance: `[case, layer, d_mlp]` per-case scores (`layers` index the second axis).
        coef: `[case, layer, d_mlp]` per-case coefficient scores.
        layers: The scored layers.
        head_importance: `[case, layer, head]` — log-prob increase from one head's output added to `resid_pre`.
        attn_importance: `[case, layer]` — the whole attention output added to `resid_pre`.
        mlp_importance: `[case, layer]` — the whole MLP output added to `resid_mid`.
        w: `[case]` scored token ids.
        w_str: The scored tokens as text.
        logprob: `[case]` the model's own `log p(w)`.
        cases: One row per case (the dataset's labels).
        top_k: The per-case top-K `n_top` counts.
        mode: `"exact"` or `"fast"`.
        exact: In fast mode, which scores were re-scored exactly (others are first order); `None` in exact mode.
        neuron_tokens: `(layer, neuron)` → top tokens, for the labelled neurons.
        bound: Largest error (nats) the series evaluation may have added to a score (0: none used).
    """

    importance: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    coef: Float[torch.Tensor, "case layer d_mlp"] = field(repr=False, default=None)
    layers: list[int] = field(default_factory=list)
    head_importance: Float[torch.Tensor, "case layer head"] = field(repr=False, default=None)
    attn_importance: Float[torch.Tensor, "case layer"] = field(repr=False, default=None)
    mlp_importance: Float[torch.Tensor, "case layer"] = field(repr=False, default=None)
    w: Int[torch.Tensor, "case"] = field(repr=False, default=None)
    w_str: list[str] = field(default_factory=list)
    logprob: Float[torch.Tensor, "case"] = field(repr=False, default=None)
    cases: pd.DataFrame = field(repr=False, default=None)
    top_k: int = 10
    mode: str = "exact"
    exact: Bool[torch.Tensor, "case layer d_mlp"] | None = field(repr=False, default=None)
    neuron_tokens: dict[tuple[int, int], str] | None = field(repr=False, default=None)
    bound: float = 0.0
    target: str = "prediction"

    @property
    def n_cases(self) -> int:
        return int(self.importance.shape[0])

    def caption(self) -> str:
        return (
            f"scored token w = {scored_tokens(self.w_str)} ({TARGET_WORDS.get(self.target, self.target)}); "
            "importance = log p(w) with the neuron's subvalue added − without it (nats, mean over "
            f"{self.n_cases} case{'s' * (self.n_cases != 1)}): positive means the neuron raises w."
        )

    def _check_case(self, case: Any) -> int:
        return validate.integer(case, "case", low=0, high=self.n_cases - 1)

    def top(self, k: int = 10, case: int | None = None) -> pd.DataFrame:
        """The `k` most important neurons by mean importance, or of one case."""
        k = validate.positive_int(k, "k")
        if case is None:
            return self.df.head(k).reset_index(drop=True)
        i = self._check_case(case)
        df = neuron_frame(self.layers, {"importance": self.importance[i], "coef": self.coef[i]}, self.neuron_tokens)
        return df.sort_values("importance", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def per_case(self, k: int | None = None) -> pd.DataFrame:
        """Long frame `case, layer, neuron, importance, coef[, top_tokens]` (each case's top `k`, or all)."""
        k = None if k is None else validate.positive_int(k, "k")
        frames = []
        for i in range(self.n_cases):
            df = neuron_frame(self.layers, {"importance": self.importance[i], "coef": self.coef[i]}, self.neuron_tokens)
            df = df.sort_values("importance", ascending=False, kind="stable")
            frames.append((df.head(k) if k else df).assign(case=i))
        out = pd.concat(frames, ignore_index=True)
        return out[["case"] + [c for c in out.columns if c != "case"]]

    def heads_df(self) -> pd.DataFrame:
        """Mean importance of each head's output: `layer, head, importance`."""
        mean = self.head_importance.mean(0)
        L, H = mean.shape
        return pd.DataFrame(
            {
                "layer": einops.repeat(torch.arange(L), "l -> (l h)", h=H).numpy(),
                "head": einops.repeat(torch.arange(H), "h -> (l h)", l=L).numpy(),
                "importance": einops.rearrange(mean, "l h -> (l h)").numpy(),
            }
        )

    def layers_df(self) -> pd.DataFrame:
        """Mean importance of each layer's attention and MLP outputs: `layer, part, importance`."""
        L = self.attn_importance.shape[1]
        parts = [("attn", self.attn_importance), ("mlp", self.mlp_importance)]
        return pd.concat(
            [pd.DataFrame({"layer": range(L), "part": p, "importance": t.mean(0).numpy()}) for p, t in parts], ignore_index=True
        )

    def plot(self, n_label: int = 5, max_points: int | None = 5000, **kwargs: Any) -> Any:
        """Neurons' mean importance against their layer; the top `n_label` marked and named in the legend.

        The top neurons are named in the legend (one colour each), not beside their points,
        so no two names collide however close the points sit. `max_points` keeps the neurons
        with the largest `|importance|` (the rest sit in the band around 0); `None` plots
        every neuron.
        """
        import plotly.graph_objects as go
        from plotly.colors import qualitative

        n_label = validate.non_negative_int(n_label, "n_label")
        df = self.df
        top = df.head(n_label)
        span = max(1, int(df["neuron"].max()))

        def xpos(d: pd.DataFrame) -> Any:  # a layer's neurons spread across its x slot
            return d["layer"] + (d["neuron"] / span - 0.5) * 0.8

        def labels(d: pd.DataFrame) -> list[str]:
            return [neuron_label(L, n) for L, n in zip(d["layer"], d["neuron"])]

        shown = len(df) if max_points is None else min(len(df), validate.positive_int(max_points, "max_points"))
        if shown < len(df):
            df = df.loc[df["importance"].abs().nlargest(shown).index]
        fig = go.Figure()
        fig.add_trace(
            go.Scattergl(
                x=xpos(df), y=df["importance"], mode="markers", name="neurons", text=labels(df),
                marker={"size": 3, "color": df["importance"], "colorscale": "RdBu_r", "cmid": 0},
                hovertemplate="neuron %{text} (layer_neuron)<br>importance %{y:.3f} nats<extra></extra>",
            )
        )  # fmt: skip
        palette = qualitative.Dark24
        for i, (label, r) in enumerate(zip(labels(top), top.itertuples())):
            fig.add_trace(
                go.Scatter(
                    x=[r.layer + (r.neuron / span - 0.5) * 0.8], y=[r.importance], mode="markers",
                    marker={"size": 10, "color": palette[i % len(palette)], "line": {"width": 1, "color": "black"}},
                    name=f"{i + 1}. {label} ({r.importance:.3f})",
                    hovertemplate=f"neuron {label} (layer_neuron), rank {i + 1}<br>importance %{{y:.3f}} nats<extra></extra>",
                )
            )  # fmt: skip
        target = self.w_str[0] if len(set(self.w_str)) == 1 and self.w_str else "w"
        note = f"<br><sup>the {shown:,} largest |importance| of {len(self.df):,} neurons shown</sup>" if shown < len(self.df) else ""
        fig.update_layout(
            title=f"FFN neuron importance for {target!r} ({self.n_cases} case{'s' * (self.n_cases != 1)}){note}",
            xaxis_title="layer (neurons spread within each layer)",
            yaxis_title="importance (nats)",
            legend={"title": {"text": "top neurons (L_N: layer_neuron)"}},
            **kwargs,
        )
        return fig


# ---------------------------------------------------------------------------- analysis
def score_sides(model: Any, sides: Sequence[Activations], layers: list[int], config: CNAAnalysis) -> list[kernels.NeuronScores]:
    """Neuron scores of sides of the same model (sharing vocabulary projections), exact or fast."""
    if config.mode == "exact":
        kept = projection_cache(model, config.projection_bytes) if config.keep_projections else None
        return kernels.exact_neuron_scores(
            model, sides, layers, memory_budget=config.memory_budget, tolerance=config.tolerance, projections=kept,
            projection_dtype=config.projection_dtype if kept is not None else "float32", progress=config.progress,
        )  # fmt: skip
    out = []
    for acts in sides:
        fo = kernels.first_order_scores(model, acts, layers, config.memory_budget)
        flat = kernels.flatten(validate.check_finite(fo, "the first-order scores"))
        cand = flat.topk(min(config.rescore, flat.shape[1]), dim=-1).indices
        imp = flat.clone()
        imp.scatter_(1, cand, kernels.rescore(model, acts, layers, cand, config.memory_budget, config.progress))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask.scatter_(1, cand, True)
        unflat = lambda t: einops.rearrange(t, "c (l n) -> c l n", l=len(layers))  # noqa: E731
        coef = torch.stack([acts.at("post", L) for L in layers], dim=1)
        out.append(kernels.NeuronScores(unflat(imp), coef, list(layers), exact=unflat(mask), first_order=fo))
    return out


@dataclass(frozen=True, kw_only=True)
class NeuronImportance(CNAAnalysis):
    """§4.1 importance score of every FFN neuron (and head and layer) on a dataset.

    Args:
        target: `"prediction"` (the paper: the model's top token) or `"answer"` (see [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis]).
        mode: `"exact"` or `"fast"` (first order, then exact on `rescore` candidates per case).
        rescore: Candidates re-scored exactly per case in fast mode.
        top_k: The per-case top-K the `n_top` column counts.
        layers: FFN layers to score (default all).
        top_tokens: Top vocabulary tokens listed per labelled neuron (0: no `top_tokens` column).
        interventions: Score the model under these interventions (a new, unmemoized pass; an
            intervention, a head such as `"17.2"` for `ZeroHead`, or a list of them).
        memory_budget: Bytes the analysis's working set may take.
        batch_size: Cases per forward pass.
        progress: Show a progress bar.
        tolerance, scale, keep_projections, projection_dtype, projection_bytes: The other
            shared options of [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis].
    """

    top_k: int = 10
    layers: Sequence[int] | None = None
    top_tokens: int = 10
    interventions: Sequence[Any] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        items = self.interventions if isinstance(self.interventions, (list, tuple)) else [self.interventions]
        object.__setattr__(self, "interventions", tuple(as_intervention(i) for i in items if i is not None))
        object.__setattr__(self, "top_k", validate.positive_int(self.top_k, "top_k"))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(validate.int_sequence(self.layers, "layers", low=0, unique=True)))
        object.__setattr__(self, "top_tokens", validate.non_negative_int(self.top_tokens, "top_tokens"))

    def hook_names(self, model: Any) -> set[str]:
        """The hooks `run` reads from the cache: `resid_mid` and `post` of the scored layers, and every layer's components."""
        return cna_hooks(model, check_layers(model, self.layers))

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, w: Any = None
    ) -> NeuronImportanceResult:
        """Score every neuron on `data`.

        Args:
            model: A [`LensModel`][arithlens.core.model.LensModel] (or a name `load_model` takes).
            data: Prompts, token ids or a dataset.
            cache: A cache of `data` holding [`hook_names`][arithlens.cna.importance.NeuronImportance.hook_names];
                given one, no forward pass runs.
            w: Fixed token ids to score, one per case (default: from `target`).
        """

        model = load_model(model)
        layers = check_layers(model, self.layers)
        hooks = cna_hooks(model, layers)
        if self.interventions:
            if cache is not None:
                raise ValueError("give cache= or interventions=, not both (build the cache with model.cache(data, interventions=...))")
            cache = model.cache(data, names=hooks, interventions=list(self.interventions), batch_size=self.pass_batch(model))
        else:
            cache = self.prepare(model, data, cache, names=hooks, clean=False).cache
        target = self.target if w is None else "given"
        w = choose_w(cache, self.target) if w is None else check_w(w, len(cache), model)
        acts = Activations(cache, w)
        (sc,) = score_sides(model, [acts], layers, self)
        return self.result(model, data, acts, sc, target=target)

    def result(
        self, model: Any, data: Any, acts: Activations, sc: kernels.NeuronScores, *, target: str | None = None
    ) -> NeuronImportanceResult:
        """An [`NeuronImportanceResult`][arithlens.cna.importance.NeuronImportanceResult] from a side's activations and scores."""
        budget = self.memory_budget
        attn, mlp = components.layer_scores(model, acts, budget)
        label_k = max(self.top_k, 50)
        pairs = label_pairs(sc.layers, sc.importance, label_k)
        tokens = labelled_tokens(model, pairs, self.top_tokens, sc.layers, sc.coef) if self.top_tokens else None
        df = aggregate_importance(sc.layers, sc.importance, sc.coef, self.top_k, tokens)
        return NeuronImportanceResult(
            df=df,
            importance=sc.importance,
            coef=sc.coef,
            layers=sc.layers,
            head_importance=components.head_scores(model, acts, budget),
            attn_importance=attn,
            mlp_importance=mlp,
            w=acts.w,
            w_str=model.token_strs(acts.w.tolist()),
            logprob=components.final_logprob(model, acts, budget),
            cases=case_frame(data, model),
            top_k=self.top_k,
            mode=self.mode,
            exact=sc.exact,
            neuron_tokens=tokens,
            bound=sc.bound,
            target=self.target if target is None else target,
        )

    def fast_agreement(self, model: Any, data: Any, k: int = 10, *, cache: DatasetCache | None = None) -> pd.DataFrame:
        """Per case: is the fast mode's top-`k` the exact top-`k`? (and their overlap).

        Returns `case, same_topk, overlap` (fraction of the exact top-k the fast one
        finds); `.attrs["agreement"]` holds the fraction of cases with equal sets.
        """
        from dataclasses import replace


        k = validate.positive_int(k, "k")
        model = load_model(model)
        layers = check_layers(model, self.layers)
        cache = self.prepare(model, data, cache, names=cna_hooks(model, layers)).cache
        acts = Activations(cache, choose_w(cache, self.target))
        (exact,) = score_sides(model, [acts], layers, replace(self, mode="exact"))
        (fast,) = score_sides(model, [acts], layers, replace(self, mode="fast"))
        a, b = kernels.flatten(exact.importance).topk(k).indices, kernels.flatten(fast.importance).topk(k).indices
        rows = [{"case": i, "same_topk": set(x) == set(y), "overlap": len(set(x) & set(y)) / k} for i, (x, y) in enumerate(zip(a.tolist(), b.tolist()))]
        df = pd.DataFrame(rows)
        df.attrs["agreement"] = float(df["same_topk"].mean())
        return df

