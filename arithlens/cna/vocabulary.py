"""Vocabulary projections of model vectors — Yu & Ananiadou §4.2 (Table 4).

Any `d_model` vector `v` — an FFN value vector `fc2_k = W_out[l, k]`, a subvalue
`m_k · fc2_k`, a residual stream state, a head's output `z_h W_O[h]`, a word embedding
`W_E[t]` — is read in vocabulary space as the paper does, `P_v = softmax(E v)` (Geva et
al., 2022), here through the model's own final norm and unembedding:

    logits(v) = ln_final(v) @ W_U + b_U

computed by [`readout.top_token_ids`][arithlens.core.readout.top_token_ids] (TransformerLens's
`logit_readout`, final-norm statistics recomputed per vector, `b_U` included). On RMSNorm
models `b_U` is zero and the norm contributes its gain and the positive scalar
`1 / rms(v)`: the ranking of tokens is exactly the ranking of `(g ⊙ v) @ W_U`. On LayerNorm models (GPT-2 style, `b_U ≠ 0` after
folding) the norm and `b_U` change the ranking, and this is the ranking the model itself
would produce. Table 4's "top10 tokens" are the `k` largest logits (`direction="top"`);
the `k` smallest (`direction="bottom"`) are also listed.

Tokens are tagged with [`NumberConceptTagger`][arithlens.cna.concepts.NumberConceptTagger]
(numbers and operations in several languages and scripts).

Example:
    ```python
    import arithlens
    from arithlens.cna import VocabularyProjection

    model = arithlens.load_model()
    lens = VocabularyProjection(k=10)
    result = lens.run(model, [VocabularyProjection.neuron(model, 28, 1234),
                              VocabularyProjection.embedding(model, "3"),
                              VocabularyProjection.residual(model, 20, "3+5=")])
    result.table()                  # Table 4's layout: one row per component
    result.df                       # component, direction, rank, token, logit, concept
    lens.top_tokens(model, model.bridge.W_out[28, :5])   # five token lists
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from arithlens.core import names, readout, validate
from arithlens.core.cache import DatasetCache, ensure_cache
from arithlens.cna.concepts import NumberConceptTagger
from arithlens.cna.inputs import neuron_label
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.loading import load_model

Direction = Literal["top", "bottom"]
_DIRECTIONS = ("top", "bottom")
_STAGES = {"pre": names.resid_pre, "mid": names.resid_mid, "post": names.resid_post}


# ---------------------------------------------------------------------------- components
@dataclass(frozen=True)
class NamedVector:
    """A named `d_model` vector to read through the lens.

    Attributes:
        name: The label tables and plots show (`"28_1234"`, `"word '3'"`).
        vector: The `[d_model]` vector.
        kind: `"neuron"`, `"subvalue"`, `"head"`, `"residual"`, `"embedding"` or `"vector"`.
    """

    name: str
    vector: Float[torch.Tensor, "d_model"]
    kind: str = "vector"


def _one_prompt(prompt: Any) -> Any:
    """A single prompt as data for [`as_dataset`][arithlens.data.as_dataset] (token ids kept as one case)."""
    if isinstance(prompt, torch.Tensor) and prompt.ndim == 1:
        return [prompt.tolist()]
    if isinstance(prompt, (list, tuple)) and prompt and all(not isinstance(t, (str, list, tuple)) for t in prompt):
        return [list(prompt)]
    return prompt


def _activation(
    model: Any, prompt: Any, hook: str, position: Any, cache: DatasetCache | None
) -> Float[torch.Tensor, "..."]:
    """Activation `hook` of one prompt at `position`, read off a `positions="all"` cache."""
    data = _one_prompt(prompt)
    cache = ensure_cache(model, data, cache, {hook}, positions="all")
    if len(cache) != 1:
        raise ValueError(f"a component is read off one prompt; got {len(cache)}")
    acts = cache.per_position(hook)[0]
    n = acts.shape[0]
    position = validate.integer(position, "position", low=-n, high=n - 1)
    return acts[position].to(model.device)


def as_vectors(model: Any, components: Any) -> tuple[list[str], Float[torch.Tensor, "n d_model"]]:
    """Names and stacked vectors of a NamedVector, a list of them, a `{name: vector}` dict,
    or a `[d_model]` / `[n, d_model]` tensor (named `"0"`, `"1"`, …)."""
    if isinstance(components, NamedVector):
        components = [components]
    if isinstance(components, torch.Tensor):
        vecs = components[None] if components.ndim == 1 else components
        labels = [str(i) for i in range(vecs.shape[0])]
    elif isinstance(components, dict):
        labels = [str(k) for k in components]
        vecs = torch.stack([torch.as_tensor(v).reshape(-1) for v in components.values()]) if components else None
    elif isinstance(components, (str, bytes)) or not isinstance(components, Sequence):
        raise ValueError(
            f"components={type(components).__name__} must be Components, a {{name: vector}} dict, or a [n, d_model] tensor"
        )
    else:
        items = list(components)
        if not all(isinstance(c, NamedVector) for c in items):
            raise ValueError("components must be Components, a {name: vector} dict, or a [n, d_model] tensor")
        labels = [c.name for c in items]
        vecs = torch.stack([c.vector.reshape(-1) for c in items]) if items else None
    if vecs is None or vecs.shape[0] == 0:
        raise ValueError("no vectors to read: pass at least one component")
    if vecs.ndim != 2 or vecs.shape[-1] != model.d_model:
        raise ValueError(f"vectors must be [n, d_model={model.d_model}], got shape {tuple(vecs.shape)}")
    validate.check_finite(vecs.float(), "the vectors to read")
    return labels, vecs.to(device=model.device, dtype=model.bridge.W_U.dtype)


def _check_direction(direction: Any) -> str:
    return validate.choice(direction, "direction", _DIRECTIONS)


# ---------------------------------------------------------------------------- figure
def _token_grid(
    columns: list[str], tokens: list[list[str]], concepts: list[list[bool]], values: list[list[float]], title: str
) -> Any:
    """A figure of token lists: one column per list, its tokens by rank downwards, concepts shaded.

    Args:
        columns: Column labels (x axis), left to right.
        tokens: Per column, its tokens by rank.
        concepts: Per column, whether each token is a number/operation concept.
        values: Per column, each token's logit (shown on hover).
        title: The figure's title.
    """
    import plotly.graph_objects as go

    k = max((len(t) for t in tokens), default=0)

    def rows(per_column: list[list[Any]], fill: Any) -> list[list[Any]]:  # [rank][column]
        padded = [list(c) + [fill] * (k - len(c)) for c in per_column]
        return [list(r) for r in zip(*padded)] if padded else []

    fig = go.Figure(
        go.Heatmap(
            z=rows([[1.0 if c else 0.0 for c in col] for col in concepts], None),
            x=columns,
            y=list(range(1, k + 1)),
            text=rows([[repr(t) for t in col] for col in tokens], ""),
            customdata=rows(values, None),
            texttemplate="%{text}",
            textfont={"size": 12},
            zmin=0,
            zmax=1,
            colorscale=[[0.0, "#f4f4f4"], [1.0, "#fdae6b"]],
            showscale=False,
            xgap=3,
            ygap=2,
            hovertemplate="%{x}<br>rank %{y}: %{text}<br>logit %{customdata:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": f"{title}<br><sup>shaded: a number or operation concept</sup>"},
        xaxis={"title": "", "side": "top", "automargin": True},
        yaxis={"title": "rank", "autorange": "reversed", "dtick": 1},
        height=170 + 26 * k,
        margin={"t": 110, "b": 20},
    )
    return fig


# ---------------------------------------------------------------------------- result
@dataclass
class VocabularyProjectionResult(Result):
    """Top and bottom tokens of each component.

    Attributes:
        df: One row per (component, direction, rank) with `token`, `token_id`, `logit`
            (the logit `ln_final(v) @ W_U + b_U`), `concept` (the tagger's concept or
            None) and `is_number_concept`.
        k: Tokens listed per component and direction.
    """

    k: int = 10

    def tokens(self, direction: Direction = "top") -> dict[str, list[str]]:
        """`{component: [tokens by rank]}` for one direction."""
        _check_direction(direction)
        part = self.df[self.df["direction"] == direction]
        return {c: list(g.sort_values("rank")["token"]) for c, g in part.groupby("component", sort=False)}

    def concept_counts(self) -> pd.DataFrame:
        """Number of concept tokens per component and direction."""
        return (
            self.df.groupby(["component", "direction"], sort=False)["is_number_concept"]
            .sum()
            .rename("n_concepts")
            .reset_index()
        )

    def top(self, k: int = 10, direction: Direction = "top") -> pd.DataFrame:
        """The first `k` tokens of each component in one direction (rows of `df`)."""
        k = validate.positive_int(k, "k")
        _check_direction(direction)
        part = self.df[(self.df["direction"] == direction) & (self.df["rank"] <= k)]
        return part.reset_index(drop=True)

    def table(self, direction: Direction = "top") -> pd.DataFrame:
        """Table 4's layout: one row per component with its tokens as a list string."""
        rows = [{"component": c, f"{direction}{self.k} tokens": ", ".join(repr(t) for t in toks)}
                for c, toks in self.tokens(direction).items()]  # fmt: skip
        return pd.DataFrame(rows)

    def plot(self, direction: Direction = "top", **kwargs: Any) -> Any:
        """Each component's tokens by rank (one column per component), concept tokens shaded."""
        _check_direction(direction)
        part = self.df[self.df["direction"] == direction]
        groups = [(c, g.sort_values("rank")) for c, g in part.groupby("component", sort=False)]
        fig = _token_grid(
            [c for c, _ in groups],
            [list(g["token"]) for _, g in groups],
            [list(g["is_number_concept"]) for _, g in groups],
            [list(g["logit"]) for _, g in groups],
            f"Logit lens: {direction}-{self.k} tokens of each component",
        )
        fig.update_layout(**kwargs)
        return fig


# ---------------------------------------------------------------------------- the lens
@dataclass(frozen=True, kw_only=True)
class VocabularyProjection(Analysis):
    """Read vectors in vocabulary space through the final norm and unembedding (Table 4).

    A weights analysis: `run(model, data)` reads no activations; its `data` are the
    directions to read — [`NamedVector`][arithlens.cna.vocabulary.NamedVector]s, a list of
    them, a `{name: vector}` dict or a `[n, d_model]` tensor.

    [`top_tokens`][arithlens.cna.vocabulary.VocabularyProjection.top_tokens] and
    [`top_ids`][arithlens.cna.vocabulary.VocabularyProjection.top_ids] read a `[n, d_model]` tensor
    directly; [`run`][arithlens.cna.vocabulary.VocabularyProjection.run] returns a tidy
    [`VocabularyProjectionResult`][arithlens.cna.vocabulary.VocabularyProjectionResult]. The static constructors
    build named components: `neuron`, `subvalue`, `head_output`, `residual`, `embedding`.

    Args:
        k: Tokens kept per direction.
        bottom: Also list the `k` lowest-logit tokens.
        tagger: The [`NumberConceptTagger`][arithlens.cna.concepts.NumberConceptTagger]
            marking concept tokens (default one).
        chunk_size: Vectors per unembedding matmul.
    """

    k: int = 10
    bottom: bool = True
    tagger: NumberConceptTagger | None = None
    chunk_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))
        object.__setattr__(self, "bottom", validate.boolean(self.bottom, "bottom"))
        if self.tagger is not None and not isinstance(self.tagger, NumberConceptTagger):
            raise ValueError(f"tagger={self.tagger!r} must be a NumberConceptTagger")
        object.__setattr__(self, "tagger", self.tagger or NumberConceptTagger())
        object.__setattr__(self, "chunk_size", validate.positive_int(self.chunk_size, "chunk_size"))

    # ------------------------------------------------------------------ vectors
    @torch.no_grad()
    def logits(self, model: Any, vectors: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n vocab"]:
        """`ln_final(v) @ W_U + b_U` of every vector (full vocabulary; mind the memory).

        The same TransformerLens `logit_readout` as
        [`readout.top_token_ids`][arithlens.core.readout.top_token_ids], without the top-k.
        """
        from transformer_lens.tools.analysis.logit_lens import logit_readout

        _, vecs = as_vectors(model, vectors)
        return logit_readout(model.bridge, vecs, chunk_size=self.chunk_size).values

    @torch.no_grad()
    def top_ids(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int | None = None, largest: bool = True
    ) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
        """Logits and ids of the `k` highest (`largest=False`: lowest) tokens per vector."""
        k = self.k if k is None else validate.integer(k, "k", low=1, high=model.d_vocab)
        _, vecs = as_vectors(model, vectors)
        return readout.top_token_ids(model, vecs, k, largest=validate.boolean(largest, "largest"), chunk_size=self.chunk_size)

    def top_tokens(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int | None = None, largest: bool = True
    ) -> list[list[str]]:
        """Decoded top-`k` (or bottom-`k`) tokens of each vector: `n` lists of `k`."""
        _, ids = self.top_ids(model, vectors, k=k, largest=largest)
        return [model.token_strs(row) for row in ids.tolist()]

    @torch.no_grad()
    def run(self, model: Any, data: Any, *, cache: DatasetCache | None = None) -> VocabularyProjectionResult:
        """Top (and bottom) `k` tokens of named directions or vectors (`data`), tagged.

        `cache` is not read (a weights analysis); it is accepted for the common contract.
        """
        model = load_model(model)
        labels, vecs = as_vectors(model, data)
        rows = []
        for direction in ("top", "bottom") if self.bottom else ("top",):
            values, ids = self.top_ids(model, vecs, largest=direction == "top")
            for label, vals, row in zip(labels, values.tolist(), ids.tolist()):
                rows += [{"component": label, "direction": direction, **r} for r in tagged_tokens(model, self.tagger, vals, row)]
        return VocabularyProjectionResult(df=pd.DataFrame(rows), k=self.k)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def neuron(model: Any, layer: int, neuron: int) -> NamedVector:
        """FFN neuron `layer_neuron`'s value vector `fc2_k = W_out[layer, neuron]` (Table 4)."""
        layer = model.check_layer(layer)
        idx = int(model.check_neurons(layer, [neuron])[0])
        return NamedVector(neuron_label(layer, idx), _w_out(model, layer)[idx], "neuron")

    @staticmethod
    def subvalue(
        model: Any, layer: int, neuron: int, prompt: Any, position: int = -1, *, cache: DatasetCache | None = None
    ) -> NamedVector:
        """The subvalue `m_k · fc2_k` of a neuron on a prompt (`m_k`: `mlp.hook_post`).

        `cache`: a `positions="all"` cache of the prompt holding `mlp.hook_post` of `layer`.
        """
        layer = model.check_layer(layer)
        idx = int(model.check_neurons(layer, [neuron])[0])
        m = _activation(model, prompt, names.post(layer), position, cache)[idx]
        return NamedVector(f"{neuron_label(layer, idx)} on {prompt!r}", m * _w_out(model, layer)[idx].float(), "subvalue")

    @staticmethod
    def head_output(
        model: Any, layer: int, head: int, prompt: Any, position: int = -1, *, cache: DatasetCache | None = None
    ) -> NamedVector:
        """Head `layer.head`'s output `z_h W_O[layer, head]` on a prompt at `position`.

        `cache`: a `positions="all"` cache of the prompt holding `attn.hook_z` of `layer`.
        """
        layer, head = model.check_head(layer, head)
        z = _activation(model, prompt, names.z(layer), position, cache)[head]
        W_O = model.bridge.blocks[layer].attn.W_O[head].detach().float()
        return NamedVector(f"head {layer}.{head} on {prompt!r}", z @ W_O, "head")

    @staticmethod
    def residual(
        model: Any, layer: int, prompt: Any, position: int = -1, stage: str = "pre", *, cache: DatasetCache | None = None
    ) -> NamedVector:
        """The residual stream of a prompt entering (`pre`), inside (`mid`, after
        attention) or leaving (`post`) block `layer`.

        `cache`: a `positions="all"` cache of the prompt holding that residual hook.
        """
        layer = model.check_layer(layer)
        stage = validate.choice(stage, "stage", tuple(_STAGES))
        x = _activation(model, prompt, _STAGES[stage](layer), position, cache)
        return NamedVector(f"resid_{stage} {layer} on {prompt!r}", x, "residual")

    @staticmethod
    def embedding(model: Any, token: str | int) -> NamedVector:
        """The word embedding `W_E[t]` of a single-token string or a token id."""
        if isinstance(token, str):
            ids = model.encode(token)
            if len(ids) != 1:
                raise ValueError(f"{token!r} is {len(ids)} tokens ({model.token_strs(ids)}); pass a single token or an id")
            tid, label = ids[0], token
        else:
            tid = validate.integer(token, "token", low=0, high=model.bridge.W_E.shape[0] - 1)
            label = model.decode([tid])
        return NamedVector(f"word {label!r}", model.bridge.W_E[tid].detach(), "embedding")


def tagged_tokens(model: Any, tagger: NumberConceptTagger, values: list[float], ids: list[int]) -> list[dict[str, Any]]:
    """One row per ranked token: `rank`, `token`, `token_id`, `value`, `concept`, `is_number_concept`."""
    rows = []
    for rank, (v, t) in enumerate(zip(values, ids), start=1):
        token = model.decode([t])
        concept = tagger(token)
        rows.append({"rank": rank, "token": token, "token_id": t, "logit": v, "concept": concept,
                     "is_number_concept": concept is not None})  # fmt: skip
    return rows


def top_token_lists(model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int = 10) -> list[str]:
    """Each vector's top-`k` tokens ([`readout.top_token_ids`][arithlens.core.readout.top_token_ids])
    as one printable list string, `"['8', ' eight', …]"` (the tables' `top_tokens` column)."""
    if vectors.shape[0] == 0:
        return []
    _, ids = readout.top_token_ids(model, vectors, k)
    return ["[" + ", ".join(repr(t) for t in model.token_strs(row)) + "]" for row in ids.tolist()]


def neuron_vectors(model: Any, layer: int, neurons: Sequence[int] | None = None) -> Float[torch.Tensor, "n d_model"]:
    """`W_out[layer, neurons]` (all neurons when `neurons` is None)."""
    layer = model.check_layer(layer)
    if neurons is None:
        return _w_out(model, layer)
    return _w_out(model, layer)[model.check_neurons(layer, neurons).to(model.device)]


def _w_out(model: Any, layer: int) -> Float[torch.Tensor, "d_mlp d_model"]:
    """`W_out[layer]` from the block itself (the bridge's stacked `W_out` rebuilds every layer)."""
    return model.bridge.blocks[layer].mlp.W_out.detach()
