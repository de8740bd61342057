"""Attention value-output transforms of shallow FFN neurons — Yu & Ananiadou §4.4 (Table 7).

A shallow FFN neuron's value vector `fc2_k = W_out[l, k]` often reads as noise in
vocabulary space, yet becomes a clear number concept once an attention layer has moved it
to another position: the neuron is *hidden-interpretable*. The transformation of a vector
`v` (a row, `[d_model]`) by attention layer `a` is its image through the layer's
value-output circuit, all query heads summed:

    T_a(v) = Σ_h  v · W_V[a, kv(h)] · W_O[a, h]          kv(h) = h // (n_heads / n_kv_heads)

(`W_V` `[d_model, d_head]` per KV head on GQA models, `W_O` `[d_head, d_model]` per
query head; [`ov_matrix`][arithlens.cna.vo_transform.ov_matrix] precomputes the
`[d_model, d_model]` sum). What the formula leaves out, and why:

* *Attention input norm.* Attention reads `ln1(x) = w₁ ⊙ x / rms(x)`. `w₁` scales
  `W_V`'s rows ([`arithlens.core.blocks`][arithlens.core.blocks]; the tests check `T_a`
  against the layer's own forward on a one-position input), so `w₁` is included. `1 / rms(x)` is a positive scalar per source position — of the whole
  residual the neuron is part of, not of the neuron — so it is left out: it scales
  `T_a(v)` and cannot change its top tokens.
* *Attention weights.* Each head mixes positions with its own weights; the paper sums the
  heads' value-output matrices with weight one (a vector fully attended by every head),
  and so does this module.
* *Biases* `b_V`, `b_O` (absent on Llama) do not depend on `v` and are left out.

The transformed vector is then read like any other, through
[`readout.top_token_ids`][arithlens.core.readout.top_token_ids]: `ln_final(T_a(v)) @ W_U + b_U`,
its top `k = 50` tokens, and the number of them the
[`NumberConceptTagger`][arithlens.cna.concepts.NumberConceptTagger] marks as numbers or
operations.

Which attention layers: the paper (§4.4) "for each FFN neuron on 0th–15th layer …
compute[s] the transformation by 0th–16th attention layers' value-output matrices" of a
32-layer model; the default here is the same shallow half: `upto_layer = n_layers // 2`
(15 on SmolLM2's 30 layers), neuron layers `0 … upto_layer - 1` (SmolLM2: 15 × 1536 =
23,040 neurons). The sentence leaves open whether a neuron goes through *every* one of
those attention layers or only those that can read it (the reference notebooks have no
scan; their Table 7 example moves layer-11/12 neurons through attention 15). `reach`
chooses: `"above"` (default) — an FFN neuron of layer `l` writes after attention `l` has
run, so only attention layers `l+1 … upto_layer` can read it (word embeddings: `0 …
upto_layer`); `"all"` — the sentence read literally, every neuron through every
attention layer `0 … upto_layer` (the paper profile, `VOTransform.paper()`). A neuron's
count is its largest count over the attention layers it goes through.
Table 8 (ablating the neurons found) is
[`HiddenInterpretable`][arithlens.cna.hidden_interpretable.HiddenInterpretable].

Speed: per attention layer, the value vectors of every neuron layer below it are
transformed in one matmul, then read in chunks of `chunk_size` rows with a top-`k` per
chunk (`[n, vocab]` logits are never held whole). SmolLM2's default scan is 184,320
projections: seconds on a GPU, minutes on a laptop CPU; `attn_layers=[15]` is 1/8 of it.

Example:
    ```python
    import arithlens
    from arithlens.cna import VOTransform

    model = arithlens.load_model()
    vo = VOTransform()                                  # neurons 0-14, attention 1-15
    table7 = vo.run(model, [(12, 407), "3", "5"])
    table7.table()                                      # Table 7: direct vs transformed
    scan = vo.scan(model)                               # every shallow neuron's count
    scan.top(10)
    ```
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens.core import readout, validate
from arithlens.core.blocks import attn_gain, pre_norm_gain
from arithlens.cna.concepts import NumberConceptTagger
from arithlens.cna.vocabulary import NamedVector, VocabularyProjection, neuron_vectors, tagged_tokens
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.cache import DatasetCache
from arithlens.core.loading import load_model
from arithlens.analysis.figures import format_hovers

Rule = Literal["gt", "ge"]
RULES: tuple[str, ...] = ("gt", "ge")


# ---------------------------------------------------------------------------- the transform
def head_ov(
    model: Any, layer: int
) -> tuple[Float[torch.Tensor, "head d_model d_head"], Float[torch.Tensor, "head d_head d_model"]]:
    """`W_V` and `W_O` of attention layer `layer`, one `W_V` per *query* head (GQA expanded)."""
    layer = model.check_layer(layer)
    # Per-block accessors: the bridge's stacked W_V / W_O rebuild every layer on access.
    W_V = model.bridge.blocks[layer].attn.W_V.detach().float()  # [kv_head, d_model, d_head]
    W_O = model.bridge.blocks[layer].attn.W_O.detach().float()  # [head, d_head, d_model]
    # Query head h reads KV head h // group (HF's repeat_kv order).
    W_V = einops.repeat(W_V, "kv d dh -> (kv g) d dh", g=W_O.shape[0] // W_V.shape[0])
    gain = pre_norm_gain(model, layer, "ln1")  # an unfolded pre-attention norm (Phi-3) scales W_V's rows
    if gain is not None:
        W_V = W_V * gain.to(W_V.device)[None, :, None]
    return W_V, W_O


def ov_matrix(model: Any, layer: int) -> Float[torch.Tensor, "d_model d_model"]:
    """`Σ_h W_V[layer, kv(h)] @ W_O[layer, h]`: attention layer `layer`'s summed OV circuit.

    On families that normalise the attention output before adding it (Gemma 2/3, OLMo 2)
    the path includes that norm's gain `g₁` ([`arithlens.core.blocks`][arithlens.core.blocks]);
    its frozen scale is one positive number per position, which the token ranking (through
    the final norm) does not see.
    """
    W_V, W_O = head_ov(model, layer)
    ov = einops.einsum(W_V, W_O, "head d dh, head dh e -> d e")
    gain = attn_gain(model, layer)
    return ov if gain is None else ov * gain.to(ov.device, ov.dtype)[None, :]


# ---------------------------------------------------------------------------- results
@dataclass
class VOScanResult(Result):
    """Concept counts of every scanned neuron's transforms.

    Attributes:
        df: One row per neuron — `layer`, `neuron`, `n_concepts` (largest count of concept
            tokens among the top `k` over the attention layers that read it),
            `best_attn_layer` (the first attention layer reaching it) and, when scanned
            with `direct=True`, `direct_concepts` (the count for the untransformed `W_out`
            row).
        counts: `counts[i, n, j]` is neuron `(neuron_layers[i], n)`'s count through
            `attn_layers[j]` (`-1` where that layer cannot read it).
        neuron_layers: The FFN layers scanned.
        attn_layers: The attention layers tried.
        k: Top tokens inspected per transformed vector.
    """

    counts: Int[torch.Tensor, "neuron_layer d_mlp attn_layer"] = field(default=None, repr=False)
    neuron_layers: tuple[int, ...] = ()
    attn_layers: tuple[int, ...] = ()
    k: int = 50

    def neuron_set(self, m: int, rule: Rule = "gt") -> dict[int, Int[torch.Tensor, "n"]]:
        """`{layer: neuron indices}` with more than `m` (`rule="ge"`: at least `m`) concepts."""
        m = validate.non_negative_int(m, "M")
        rule = validate.choice(rule, "rule", RULES)
        best = self.counts.max(-1).values
        chosen = best > m if rule == "gt" else best >= m
        return {L: chosen[i].nonzero()[:, 0] for i, L in enumerate(self.neuron_layers) if bool(chosen[i].any())}

    def top(self, k: int = 10) -> pd.DataFrame:
        """The `k` neurons with the most concept tokens among their transforms' top tokens."""
        k = validate.positive_int(k, "k")
        return self.df.sort_values("n_concepts", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def plot(self, **kwargs: Any) -> Any:
        """Neurons per layer by concept count (how widely hidden-interpretable ones spread)."""
        import plotly.express as px

        cap = self.df["n_concepts"].clip(upper=5).map(lambda c: "5+" if c >= 5 else str(c))
        frame = self.df.assign(n_concepts=cap).groupby(["layer", "n_concepts"]).size().rename("neurons").reset_index()
        fig = px.bar(
            frame, x="layer", y="neurons", color="n_concepts", log_y=True,
            title=f"Concept tokens among the top {self.k} of each neuron's attention transform",
            category_orders={"n_concepts": ["0", "1", "2", "3", "4", "5+"]},
            labels={"layer": "FFN layer", "neurons": "neurons (log scale)", "n_concepts": "concept tokens"},
        )  # fmt: skip
        fig.update_layout(**kwargs)
        return format_hovers(fig)


@dataclass
class VOTransformResult(Result):
    """Table 7: each item's top tokens directly and after an attention layer's transform.

    Attributes:
        df: One row per (item, view, rank): `item`, `view` (`direct` / `transformed`),
            `attn_layer` (the transforming layer; -1 for direct), `rank`, `token`,
            `token_id`, `value` (logit), `concept`, `is_number_concept`.
        k: Tokens listed per view.
    """

    k: int = 10

    def table(self) -> pd.DataFrame:
        """Table 7's layout: item, its origin top-k, the attention layer and transformed top-k."""
        rows = []
        for item, part in self.df.groupby("item", sort=False):
            direct = part[part["view"] == "direct"].sort_values("rank")
            moved = part[part["view"] == "transformed"].sort_values("rank")
            rows.append({
                "item": item,
                "origin": ", ".join(direct["token"].map(repr)),
                "origin concepts": int(direct["is_number_concept"].sum()),
                "attn layer": int(moved["attn_layer"].iloc[0]),
                "attn transform": ", ".join(moved["token"].map(repr)),
                "transform concepts": int(moved["is_number_concept"].sum()),
            })  # fmt: skip
        return pd.DataFrame(rows)

    def plot(self, **kwargs: Any) -> Any:
        """Number/operation tokens among each item's top-`k`, directly and transformed (bars; tokens on hover).

        The tokens themselves are [`table`][arithlens.cna.vo_transform.VOTransformResult.table].
        """
        import plotly.graph_objects as go

        t = self.table()
        fig = go.Figure()
        for view, count, tokens, color in (
            ("direct (W_out row / embedding)", "origin concepts", "origin", "#9e9e9e"),
            ("attention-transformed", "transform concepts", "attn transform", "#e6550d"),
        ):
            fig.add_trace(go.Bar(
                x=t["item"], y=t[count], name=view, marker_color=color, text=t[count], textposition="outside",
                cliponaxis=False, customdata=t[[tokens, "attn layer"]],
                hovertemplate="%{x}<br>%{y} concept tokens<br>%{customdata[0]}<extra>" + view + "</extra>",
            ))  # fmt: skip
        fig.update_layout(
            title={"text": f"Concept tokens in the top {self.k}: direct vs transformed (Table 7)"
                   "<br><sup>number/operation tokens; transformed by the attention layer in .table()'s 'attn layer'</sup>"},
            barmode="group",
            xaxis_title="item (FFN neuron layer_index, or word embedding)",
            yaxis={"title": f"concept tokens of {self.k}", "range": [0, self.k + 1]},
            legend={"orientation": "h", "y": -0.3},
            height=420,
        )  # fmt: skip
        fig.update_layout(**kwargs)
        return fig


# ---------------------------------------------------------------------------- the analysis
def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and all(
        isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in item
    )


@dataclass(frozen=True, kw_only=True)
class VOTransform(Analysis):
    """Attention value-output transforms of shallow FFN neurons (§4.4, Table 7) and the
    zero-shot scan for hidden-interpretable neurons (Table 8's sets).

    A weights analysis: `run(model, data)` reads no activations, its `data` are the
    vectors to transform — `(layer, neuron)` pairs or `"12_407"` names (FFN value
    vectors), token strings or ids (word embeddings `W_E`), or
    [`NamedVector`][arithlens.cna.vocabulary.NamedVector]s.

    Args:
        upto_layer: Last attention layer used (default `n_layers // 2`).
        neuron_layers: FFN layers scanned (default `0 … upto_layer - 1`).
        attn_layers: Attention layers tried (default `0 … upto_layer`); with
            `reach="above"` a neuron of layer `l` only goes through those `> l`.
        reach: `"above"` (default: only the attention layers that can read the neuron,
            those above its layer) or `"all"` (every attention layer in `attn_layers`: the
            paper's sentence read literally).
        k: Top tokens inspected per transformed vector (the paper: 50).
        tagger: The concept tagger (default
            [`NumberConceptTagger`][arithlens.cna.concepts.NumberConceptTagger]).
        distinct: Count distinct concepts instead of concept tokens.
        chunk_size: Vectors per vocabulary projection (memory: `chunk_size × d_vocab`
            floats); default 8192 on GPU, 1024 on CPU.
        progress: Progress bar.
        layer: Table 7's transforming attention layer (the paper shows its 15th). `None`
            picks, per item, the attention layer in `0 … upto_layer` that can read it and
            gives the most concept tokens among the top `k` (ties: the lowest).
        top_tokens: Tokens Table 7 lists per view.
    """

    upto_layer: int | None = None
    neuron_layers: Sequence[int] | None = None
    attn_layers: Sequence[int] | None = None
    k: int = 50
    tagger: NumberConceptTagger | None = None
    distinct: bool = False
    chunk_size: int | None = None
    progress: bool = True
    layer: int | None = None
    top_tokens: int = 10
    reach: Literal["above", "all"] = "above"

    @classmethod
    def paper(cls, **changes: Any) -> "VOTransform":
        """§4.4's setup: neurons of layers 0 … n/2 − 1 through every attention layer 0 … n/2 (on 32
        layers: 0–15 through 0–16), top 50 tokens, concept tokens counted."""
        return cls(**{"k": 50, "reach": "all", "distinct": False, **changes})

    def __post_init__(self) -> None:
        validate.choice(self.reach, "reach", ("above", "all"))
        if self.upto_layer is not None:
            object.__setattr__(self, "upto_layer", validate.non_negative_int(self.upto_layer, "upto_layer"))
        if self.neuron_layers is not None:
            object.__setattr__(self, "neuron_layers", tuple(validate.int_sequence(self.neuron_layers, "neuron_layers", low=0)))
        if self.attn_layers is not None:
            object.__setattr__(self, "attn_layers", tuple(validate.int_sequence(self.attn_layers, "attn_layers", low=0)))
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))
        if self.tagger is not None and not isinstance(self.tagger, NumberConceptTagger):
            raise ValueError(f"tagger={self.tagger!r} must be a NumberConceptTagger")
        object.__setattr__(self, "tagger", self.tagger or NumberConceptTagger())
        object.__setattr__(self, "distinct", validate.boolean(self.distinct, "distinct"))
        object.__setattr__(self, "chunk_size", validate.optional_positive_int(self.chunk_size, "chunk_size"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))
        if self.layer is not None:
            object.__setattr__(self, "layer", validate.non_negative_int(self.layer, "layer"))
        object.__setattr__(self, "top_tokens", validate.positive_int(self.top_tokens, "top_tokens"))

    # ------------------------------------------------------------------ layers
    def _upto(self, model: Any) -> int:
        return model.n_layers // 2 if self.upto_layer is None else model.check_layer(self.upto_layer, "upto_layer")

    def layers(self, model: Any) -> tuple[list[int], list[int]]:
        """(neuron layers, attention layers) this configuration scans on `model`."""
        upto = self._upto(model)
        neuron_layers = list(range(upto)) if self.neuron_layers is None else sorted(set(self.neuron_layers))
        attn_layers = list(range(upto + 1)) if self.attn_layers is None else sorted(set(self.attn_layers))
        for L in neuron_layers:
            model.check_layer(L, "neuron layer")
        for L in attn_layers:
            model.check_layer(L, "attention layer")
        if any(a > upto for a in attn_layers):
            raise ValueError(f"attention layers {attn_layers} go past upto_layer={upto}")
        if not neuron_layers:
            raise ValueError("no neuron layers to scan: upto_layer=0 leaves none below it")
        unread = [L for L in neuron_layers if not any(a > L for a in attn_layers)] if self.reach == "above" else []
        if unread:
            raise ValueError(
                f"FFN layers {unread} have no attention layer above them among {attn_layers}: "
                "an FFN neuron of layer l is only read by attention layers > l"
            )
        return neuron_layers, attn_layers

    def _chunk(self, model: Any) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return 8192 if model.device.type == "cuda" else 1024

    # ------------------------------------------------------------------ vectors
    ov_matrix = staticmethod(ov_matrix)

    @torch.no_grad()
    def transform(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], layers: int | Sequence[int]
    ) -> Float[torch.Tensor, "n d_model"] | Float[torch.Tensor, "layer n d_model"]:
        """`T_a(v)` of each vector: `[n, d_model]` for one layer `a`, stacked
        `[len(layers), n, d_model]` for a sequence of layers."""
        vecs = vectors.to(device=model.device, dtype=model.bridge.W_U.dtype)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if vecs.ndim != 2 or vecs.shape[-1] != model.d_model:
            raise ValueError(f"vectors must be [n, d_model={model.d_model}], got shape {tuple(vectors.shape)}")
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            return vecs @ ov_matrix(model, model.check_layer(layers))
        return torch.stack([vecs @ ov_matrix(model, L) for L in validate.int_sequence(layers, "layers")])

    def neuron_vectors(self, model: Any, layer: int, neurons: Sequence[int] | None = None) -> Float[torch.Tensor, "n d_model"]:
        """FFN value vectors `W_out[layer, neurons]` (all of the layer by default)."""
        return neuron_vectors(model, layer, neurons)

    @torch.no_grad()
    def _count_top(self, model: Any, vecs: torch.Tensor, concept_idx: torch.Tensor) -> Int[torch.Tensor, "n"]:
        """Concept tokens among each vector's top-`k` (`ln_final`, `W_U`, `b_U`)."""
        _, top = readout.top_token_ids(model, vecs, self.k, chunk_size=self._chunk(model))
        cid = concept_idx[top]  # [n, k], -1 = no concept
        if not self.distinct:
            return (cid >= 0).sum(-1)
        cid = cid.sort(-1).values
        new = torch.ones_like(cid, dtype=torch.bool)
        new[:, 1:] = cid[:, 1:] != cid[:, :-1]
        return ((cid >= 0) & new).sum(-1)

    def _concept_index(self, model: Any) -> torch.Tensor:
        return self.tagger.vocab_index(model.tokenizer, model.d_vocab)

    @torch.no_grad()
    def concept_counts(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], layer: int | None = None
    ) -> Int[torch.Tensor, "n"]:
        """Concept tokens among the top `k` of each vector, transformed by `layer`
        (`None`: the vectors as they are)."""
        vecs = vectors.to(device=model.device, dtype=model.bridge.W_U.dtype)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if layer is not None:
            vecs = self.transform(model, vecs, layer)
        return self._count_top(model, vecs, self._concept_index(model))

    @torch.no_grad()
    def scan(self, model: Any, direct: bool = False) -> VOScanResult:
        """Count concept tokens in the top `k` of every scanned neuron's transforms."""
        direct = validate.boolean(direct, "direct")
        neuron_layers, attn_layers = self.layers(model)
        concept_idx = self._concept_index(model)
        counts = torch.full((len(neuron_layers), model.d_mlp, len(attn_layers)), -1, dtype=torch.long)
        W_out = {L: neuron_vectors(model, L) for L in neuron_layers}
        reads = (lambda L, a: L < a) if self.reach == "above" else (lambda L, a: True)  # noqa: E731
        steps = [(j, a) for j, a in enumerate(attn_layers) if any(reads(L, a) for L in neuron_layers)]
        bar = tqdm(total=len(steps) + direct, desc="VO transform scan", unit="layer", disable=not self.progress)
        try:
            for j, a in steps:
                rows = [i for i, L in enumerate(neuron_layers) if reads(L, a)]
                vecs = torch.cat([W_out[neuron_layers[i]] for i in rows])  # [(layer neuron), d_model]
                n = self._count_top(model, vecs @ ov_matrix(model, a).to(vecs.dtype), concept_idx)
                counts[rows, :, j] = einops.rearrange(n, "(l k) -> l k", l=len(rows))
                bar.update(1)
            direct_counts = None
            if direct:
                direct_counts = self._count_top(model, torch.cat([W_out[L] for L in neuron_layers]), concept_idx)
                bar.update(1)
        finally:
            bar.close()
        best = counts.max(-1)
        attn = torch.tensor(attn_layers)[best.indices]
        columns = {
            "layer": einops.repeat(torch.tensor(neuron_layers), "l -> (l k)", k=model.d_mlp).numpy(),
            "neuron": einops.repeat(torch.arange(model.d_mlp), "k -> (l k)", l=len(neuron_layers)).numpy(),
            "n_concepts": best.values.reshape(-1).numpy(),
            "best_attn_layer": attn.reshape(-1).numpy(),
        }
        if direct_counts is not None:
            columns["direct_concepts"] = direct_counts.numpy()
        return VOScanResult(
            df=pd.DataFrame(columns), counts=counts, neuron_layers=tuple(neuron_layers), attn_layers=tuple(attn_layers), k=self.k
        )

    # ------------------------------------------------------------------ Table 7
    def _items(self, model: Any, items: Any) -> list[tuple[NamedVector, int]]:
        """Components and the lowest attention layer that can read each."""
        out = []
        for item in items if isinstance(items, (list, tuple)) and not _is_pair(items) else [items]:
            if isinstance(item, NamedVector):
                out.append((item, 0 if item.kind != "neuron" else int(item.name.split("_")[0]) + 1))
            elif _is_pair(item):
                comp = VocabularyProjection.neuron(model, item[0], item[1])
                out.append((comp, int(item[0]) + 1))
            elif isinstance(item, str) and "_" in item and item.replace("_", "").isdigit() and item.count("_") == 1:
                L, n = (int(x) for x in item.split("_"))
                out.append((VocabularyProjection.neuron(model, L, n), L + 1))
            elif isinstance(item, str) or (isinstance(item, numbers.Integral) and not isinstance(item, bool)):
                out.append((VocabularyProjection.embedding(model, item), 0))
            else:
                raise ValueError(
                    f"item {item!r} is not a (layer, neuron) pair, a 'layer_neuron' name, a token "
                    "string or id (word embedding), or a NamedVector"
                )
        if not out:
            raise ValueError("no items: pass neurons as (layer, neuron) or tokens like '3'")
        return out

    @torch.no_grad()
    def run(self, model: Any, data: Any, *, cache: DatasetCache | None = None) -> VOTransformResult:
        """Table 7: the top `top_tokens` tokens of neurons / word embeddings, directly and transformed.

        Args:
            model: The model.
            data: `(layer, neuron)` pairs or `"12_407"` names (FFN value vectors), token
                strings or ids (word embeddings `W_E`), or Directions.
            cache: Not read (a weights analysis); accepted for the common contract.
        """
        model = load_model(model)
        k = validate.integer(self.top_tokens, "top_tokens", low=1, high=model.d_vocab)
        layer = self.layer
        parsed = self._items(model, data)
        upto = self._upto(model)
        if layer is not None:
            layer = model.check_layer(layer)
            for comp, low in parsed:
                if layer < low:
                    raise ValueError(f"attention layer {layer} cannot read {comp.name}: it writes after attention {low - 1}")
        concept_idx = self._concept_index(model)
        rows = []
        for comp, low in parsed:
            a = layer
            if a is None:
                if low > upto:
                    raise ValueError(f"{comp.name} is above upto_layer={upto}: no attention layer up to it reads it")
                cands = list(range(low, upto + 1))
                moved = self.transform(model, comp.vector, cands)[:, 0]
                a = cands[int(torch.argmax(self._count_top(model, moved, concept_idx)))]
            views = (("direct", comp.vector[None], -1), ("transformed", self.transform(model, comp.vector, a), a))
            for view, vec, attn in views:
                values, ids = readout.top_token_ids(model, vec, k)
                tagged = tagged_tokens(model, self.tagger, values[0].tolist(), ids[0].tolist())
                rows += [{"item": comp.name, "view": view, "attn_layer": attn, **r} for r in tagged]
        return VOTransformResult(df=pd.DataFrame(rows), k=k)
