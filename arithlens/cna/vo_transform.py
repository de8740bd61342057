"""Hidden-interpretable shallow FFN neurons — Yu & Ananiadou §4.4 (Tables 7, 8) and
Appendix B (Table 17).

A shallow FFN neuron's value vector ``fc2_k = W_out[l, k]`` often reads as noise in
vocabulary space, yet becomes a clear number concept once an attention layer has moved it
to another position: the neuron is *hidden-interpretable*. The transformation of a vector
``v`` (a row, ``[d_model]``) by attention layer ``a`` is its image through the layer's
value-output circuit, all query heads summed::

    T_a(v) = Σ_h  v · W_V[a, kv(h)] · W_O[a, h]          kv(h) = h // (n_heads / n_kv_heads)

(``W_V`` ``[d_model, d_head]`` per KV head on GQA models, ``W_O`` ``[d_head, d_model]`` per
query head; :meth:`VOTransform.ov_matrix` precomputes the ``[d_model, d_model]`` sum).
What the formula leaves out, and why:

* *Attention input norm.* Attention reads ``ln1(x) = w₁ ⊙ x / rms(x)``. Compatibility
  mode folds ``w₁`` into ``W_V`` (the bridge's ``ln1`` weight is then all ones; the tests
  check ``T_a`` against the layer's own forward on a one-position input), so ``w₁`` is
  included. ``1 / rms(x)`` is a positive scalar per source position — of the whole
  residual the neuron is part of, not of the neuron — so it is left out: it scales
  ``T_a(v)`` and cannot change its top tokens.
* *Attention weights.* Each head mixes positions with its own weights; the paper sums the
  heads' value-output matrices with weight one (a vector fully attended by every head),
  and so does this module.
* *Biases* ``b_V``, ``b_O`` (absent on Llama) do not depend on ``v`` and are left out.

The transformed vector is then read like any other (:class:`~arithlens.cna.logit_lens.LogitLens`):
``ln_final(T_a(v)) @ W_U + b_U``, its top ``k = 50`` tokens, and the number of them the
:class:`~arithlens.cna.logit_lens.NumberConceptTagger` marks as numbers or operations.

Which attention layers: an FFN neuron of layer ``l`` writes after attention ``l`` has
run, so only attention layers ``l+1 … upto_layer`` can read it (word embeddings: ``0 …
upto_layer``). The paper scans neurons of layers 0–15 through attention layers 0–16 on a
32-layer model; the default here is the same shallow half: ``upto_layer = n_layers // 2``
(15 on SmolLM2's 30 layers), neuron layers ``0 … upto_layer - 1`` (SmolLM2: 15 × 1536 =
23,040 neurons). A neuron's count is its largest count over those attention layers.

Table 8 (:class:`HiddenInterpretable`): for ``M = 0…3`` the set of neurons whose
transformed top-50 holds more than ``M`` concept tokens (``rule="gt"``, the default)
is zero-ablated (coefficient scores ``m_k`` set to 0 at every position:
:class:`~arithlens.interventions.ZeroNeurons`) and the first-token accuracy on a dataset
is compared with the original model's: ``accuracy_decrease = 100 · (base − acc) / base``
(the paper's "decrease (%)"). The paper's words say "M or more", but with ``M = 0`` that
set is every neuron (176,128), while its Table 8 lists 51,980, so the table can only
come from "more than M" — ``rule="ge"`` gives the literal wording. A seeded random set of
the same size, drawn uniformly from the same neuron layers, is ablated as the control.

Speed: per attention layer, the value vectors of every neuron layer below it are
transformed in one ``[n, d_model] @ [d_model, d_model]`` product, then projected to the
vocabulary in chunks of ``chunk_size`` rows with a top-``k`` per chunk (the ``[n, vocab]``
logits are never held whole). SmolLM2's default scan is 184,320 projections (5.2 TFLOP):
seconds on a GPU, minutes on a laptop CPU; ``attn_layers=[15]`` alone is 1/8 of it.

Example::

    import arithlens
    from arithlens import data
    from arithlens.cna import VOTransform, HiddenInterpretable

    model = arithlens.load_model()
    vo = VOTransform()                                  # neurons 0-14, attention 1-15
    vo.run(model, [(12, 407), "3", "5"]).table()        # Table 7: direct vs transformed
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1, forms="numeral")
    result = HiddenInterpretable(transform=vo).run(model, cases, only_correct=True)
    result.table()                                      # Table 8
    result.plot()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens.cna.logit_lens import Component, LogitLens, NumberConceptTagger, neuron_vectors
from arithlens.results import Result

Rule = Literal["gt", "ge"]
_RULES = ("gt", "ge")


def _check_int(value: Any, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


# ---------------------------------------------------------------------------- the transform
def head_ov(model: Any, layer: int) -> tuple[Float[torch.Tensor, "head d_model d_head"], Float[torch.Tensor, "head d_head d_model"]]:
    """``W_V`` and ``W_O`` of attention layer ``layer``, one ``W_V`` per *query* head (GQA expanded)."""
    model.check_layer(layer)
    # Per-block accessors: the bridge's stacked W_V / W_O rebuild every layer on access.
    W_V = model.bridge.blocks[layer].attn.W_V.detach().float()  # [kv_head, d_model, d_head]
    W_O = model.bridge.blocks[layer].attn.W_O.detach().float()  # [head, d_head, d_model]
    # Query head h reads KV head h // group (HF's repeat_kv order).
    W_V = einops.repeat(W_V, "kv d dh -> (kv g) d dh", g=W_O.shape[0] // W_V.shape[0])
    return W_V, W_O


def ov_matrix(model: Any, layer: int) -> Float[torch.Tensor, "d_model d_model"]:
    """``Σ_h W_V[layer, kv(h)] @ W_O[layer, h]``: attention layer ``layer``'s summed OV circuit."""
    W_V, W_O = head_ov(model, layer)
    return einops.einsum(W_V, W_O, "head d dh, head dh e -> d e")


def neuron_name(layer: int, neuron: int) -> str:
    """The paper's neuron name ``L_k`` (layer, index)."""
    return f"{layer}_{neuron}"


@dataclass
class VOScan(Result):
    """Concept counts of every scanned neuron's transforms.

    ``df``: one row per neuron — ``layer``, ``neuron``, ``n_concepts`` (largest count of
    concept tokens among the top ``k`` over the attention layers that read it),
    ``best_attn_layer`` (the first attention layer reaching it) and, when scanned with
    ``direct=True``, ``direct_concepts`` (the count for the untransformed ``W_out`` row).
    ``counts[i, k, j]`` is neuron ``(neuron_layers[i], k)``'s count through
    ``attn_layers[j]`` (``-1`` where that layer cannot read it).
    """

    counts: Int[torch.Tensor, "neuron_layer d_mlp attn_layer"] = field(default=None, repr=False)
    neuron_layers: tuple[int, ...] = ()
    attn_layers: tuple[int, ...] = ()
    k: int = 50

    def neuron_set(self, m: int, rule: Rule = "gt") -> dict[int, Int[torch.Tensor, "n"]]:
        """``{layer: neuron indices}`` with more than ``m`` (``rule="ge"``: at least ``m``) concepts."""
        m = _check_int(m, "M")
        if rule not in _RULES:
            raise ValueError(f"rule {rule!r} is not one of {_RULES}")
        best = self.counts.max(-1).values
        chosen = best > m if rule == "gt" else best >= m
        return {L: chosen[i].nonzero()[:, 0] for i, L in enumerate(self.neuron_layers) if bool(chosen[i].any())}

    def plot(self, **kwargs: Any) -> Any:
        """Neurons per layer by concept count (how widely hidden-interpretable ones spread)."""
        import plotly.express as px

        cap = self.df["n_concepts"].clip(upper=5).map(lambda c: "5+" if c >= 5 else str(c))
        frame = self.df.assign(n_concepts=cap).groupby(["layer", "n_concepts"]).size().rename("neurons").reset_index()
        fig = px.bar(frame, x="layer", y="neurons", color="n_concepts", log_y=True,
                     title=f"Concept tokens among the top {self.k} of each neuron's attention transform",
                     category_orders={"n_concepts": ["0", "1", "2", "3", "4", "5+"]}, **kwargs)  # fmt: skip
        return fig


@dataclass
class DirectVsTransformed(Result):
    """Table 7: each item's top tokens directly and after an attention layer's transform.

    ``df``: one row per (item, view, rank): ``item``, ``view`` (``direct`` /
    ``transformed``), ``attn_layer`` (the transforming layer; -1 for direct), ``rank``,
    ``token``, ``value`` (logit), ``concept``, ``is_number_concept``.
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
        import plotly.graph_objects as go

        t = self.table()
        fig = go.Figure(go.Table(
            header={"values": [f"<b>{c}</b>" for c in t.columns], "align": "left"},
            cells={"values": [t[c].tolist() for c in t.columns], "align": "left"},
            columnwidth=[1.2, 4, 1, 1, 4, 1],
        ))  # fmt: skip
        fig.update_layout(title=f"Top-{self.k} tokens, direct vs attention-transformed (Table 7)", **kwargs)
        return fig


class VOTransform:
    """Attention value-output transforms of shallow FFN neurons (§4.4, Table 7) and the
    zero-shot scan for hidden-interpretable neurons (Table 8's sets).

    Args:
        upto_layer: Last attention layer used (default ``n_layers // 2``).
        neuron_layers: FFN layers scanned (default ``0 … upto_layer - 1``).
        attn_layers: Attention layers tried (default ``0 … upto_layer``); a neuron of
            layer ``l`` only goes through those ``> l``.
        k: Top tokens inspected per transformed vector (the paper: 50).
        tagger: The concept tagger (default :class:`NumberConceptTagger`).
        distinct: Count distinct concepts instead of concept tokens.
        chunk_size: Vectors per vocabulary projection (memory: ``chunk_size × d_vocab``
            floats); default 8192 on GPU, 1024 on CPU.
        progress: Progress bar.
    """

    def __init__(
        self,
        upto_layer: int | None = None,
        neuron_layers: Sequence[int] | None = None,
        attn_layers: Sequence[int] | None = None,
        k: int = 50,
        tagger: NumberConceptTagger | None = None,
        distinct: bool = False,
        chunk_size: int | None = None,
        progress: bool = True,
    ):
        self.upto_layer = None if upto_layer is None else _check_int(upto_layer, "upto_layer")
        self.neuron_layers = None if neuron_layers is None else [_check_int(L, "neuron layer") for L in neuron_layers]
        self.attn_layers = None if attn_layers is None else [_check_int(L, "attention layer") for L in attn_layers]
        self.k = _check_int(k, "k", 1)
        self.tagger = tagger or NumberConceptTagger()
        self.distinct = bool(distinct)
        self.chunk_size = None if chunk_size is None else _check_int(chunk_size, "chunk_size", 1)
        self.progress = progress

    # ------------------------------------------------------------------ layers
    def layers(self, model: Any) -> tuple[list[int], list[int]]:
        """(neuron layers, attention layers) this configuration scans on ``model``."""
        upto = model.n_layers // 2 if self.upto_layer is None else model.check_layer(self.upto_layer)
        neuron_layers = list(range(upto)) if self.neuron_layers is None else sorted(set(self.neuron_layers))
        attn_layers = list(range(upto + 1)) if self.attn_layers is None else sorted(set(self.attn_layers))
        for L in neuron_layers + attn_layers:
            model.check_layer(L)
        if any(a > upto for a in attn_layers):
            raise ValueError(f"attention layers {attn_layers} go past upto_layer={upto}")
        if not neuron_layers:
            raise ValueError("no neuron layers to scan: upto_layer=0 leaves none below it")
        unread = [L for L in neuron_layers if not any(a > L for a in attn_layers)]
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
        """``T_a(v)`` of each vector: ``[n, d_model]`` for one layer ``a``, stacked
        ``[len(layers), n, d_model]`` for a sequence of layers."""
        vecs = vectors.to(device=model.device, dtype=model.bridge.W_U.dtype)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if vecs.ndim != 2 or vecs.shape[-1] != model.d_model:
            raise ValueError(f"vectors must be [n, d_model={model.d_model}], got shape {tuple(vectors.shape)}")
        if isinstance(layers, int):
            return vecs @ ov_matrix(model, layers)
        return torch.stack([vecs @ ov_matrix(model, L) for L in layers])

    def neuron_vectors(self, model: Any, layer: int, neurons: Sequence[int] | None = None) -> Float[torch.Tensor, "n d_model"]:
        """FFN value vectors ``W_out[layer, neurons]`` (all of the layer by default)."""
        return neuron_vectors(model, layer, neurons)

    @torch.no_grad()
    def _count_top(self, model: Any, vecs: torch.Tensor, concept_idx: torch.Tensor) -> Int[torch.Tensor, "n"]:
        """Concept tokens among each vector's top-``k`` (``ln_final``, ``W_U``, ``b_U``)."""
        W_U, b_U, ln_final = model.bridge.W_U, model.bridge.b_U, model.bridge.ln_final
        out = []
        for start in range(0, vecs.shape[0], self._chunk(model)):
            chunk = ln_final(vecs[start : start + self._chunk(model)])
            top = torch.topk(chunk @ W_U + b_U, self.k, dim=-1).indices
            cid = concept_idx[top]  # [n, k], -1 = no concept
            if self.distinct:
                cid = cid.sort(-1).values
                new = torch.ones_like(cid, dtype=torch.bool)
                new[:, 1:] = cid[:, 1:] != cid[:, :-1]
                out.append(((cid >= 0) & new).sum(-1))
            else:
                out.append((cid >= 0).sum(-1))
        return torch.cat(out)

    def _concept_index(self, model: Any) -> torch.Tensor:
        return self.tagger.vocab_index(model.tokenizer, model.d_vocab).to(model.device)

    @torch.no_grad()
    def concept_counts(
        self, model: Any, vectors: Float[torch.Tensor, "n d_model"], layer: int | None = None
    ) -> Int[torch.Tensor, "n"]:
        """Concept tokens among the top ``k`` of each vector, transformed by ``layer``
        (``None``: the vectors as they are)."""
        vecs = vectors.to(device=model.device, dtype=model.bridge.W_U.dtype)
        if layer is not None:
            vecs = self.transform(model, vecs, layer)
        return self._count_top(model, vecs, self._concept_index(model)).cpu()

    @torch.no_grad()
    def scan(self, model: Any, direct: bool = False) -> VOScan:
        """Count concept tokens in the top ``k`` of every scanned neuron's transforms."""
        from arithlens.models import load_model

        model = load_model(model)
        neuron_layers, attn_layers = self.layers(model)
        concept_idx = self._concept_index(model)
        counts = torch.full((len(neuron_layers), model.d_mlp, len(attn_layers)), -1, dtype=torch.long)
        W_out = {L: neuron_vectors(model, L) for L in neuron_layers}
        steps = [(j, a) for j, a in enumerate(attn_layers) if any(L < a for L in neuron_layers)]
        bar = tqdm(total=len(steps) + direct, desc="VO transform scan", disable=not self.progress)
        try:
            for j, a in steps:
                rows = [i for i, L in enumerate(neuron_layers) if L < a]
                vecs = torch.cat([W_out[neuron_layers[i]] for i in rows])  # [(layer neuron), d_model]
                n = self._count_top(model, vecs @ ov_matrix(model, a), concept_idx).cpu()
                counts[rows, :, j] = einops.rearrange(n, "(l k) -> l k", l=len(rows))
                bar.update(1)
            direct_counts = None
            if direct:
                vecs = torch.cat([W_out[L] for L in neuron_layers])
                direct_counts = self._count_top(model, vecs, concept_idx).cpu()
                bar.update(1)
        finally:
            bar.close()
        best = counts.max(-1)
        attn = torch.tensor(attn_layers)[best.indices]
        df = pd.DataFrame({
            "layer": einops.repeat(torch.tensor(neuron_layers), "l -> (l k)", k=model.d_mlp).numpy(),
            "neuron": einops.repeat(torch.arange(model.d_mlp), "k -> (l k)", l=len(neuron_layers)).numpy(),
            "n_concepts": best.values.reshape(-1).numpy(),
            "best_attn_layer": attn.reshape(-1).numpy(),
        })  # fmt: skip
        if direct_counts is not None:
            df["direct_concepts"] = direct_counts.numpy()
        return VOScan(df=df, counts=counts, neuron_layers=tuple(neuron_layers), attn_layers=tuple(attn_layers), k=self.k)

    # ------------------------------------------------------------------ Table 7
    def _items(self, model: Any, items: Any) -> list[tuple[Component, int]]:
        """Components and the lowest attention layer that can read each."""
        out = []
        for item in items if isinstance(items, (list, tuple)) and not _is_pair(items) else [items]:
            if isinstance(item, Component):
                out.append((item, 0 if item.kind != "neuron" else int(item.name.split("_")[0]) + 1))
            elif _is_pair(item):
                L, k = int(item[0]), int(item[1])
                out.append((LogitLens.neuron(model, L, k), L + 1))
            elif isinstance(item, str) and "_" in item and item.replace("_", "").isdigit():
                L, k = (int(x) for x in item.split("_"))
                out.append((LogitLens.neuron(model, L, k), L + 1))
            elif isinstance(item, (str, int)):
                out.append((LogitLens.embedding(model, item), 0))
            else:
                raise ValueError(
                    f"item {item!r} is not a (layer, neuron) pair, a 'layer_neuron' name, a token "
                    "string or id (word embedding), or a Component"
                )
        if not out:
            raise ValueError("no items: pass neurons as (layer, neuron) or tokens like '3'")
        return out

    @torch.no_grad()
    def direct_vs_transformed(self, model: Any, items: Any, layer: int | None = None, k: int = 10) -> DirectVsTransformed:
        """Table 7: top-``k`` tokens of neurons / word embeddings, directly and transformed.

        Args:
            items: ``(layer, neuron)`` pairs or ``"12_407"`` names (FFN value vectors),
                token strings or ids (word embeddings ``W_E``), or Components.
            layer: The transforming attention layer (the paper shows its 15th). ``None``
                picks, per item, the attention layer in ``0 … upto_layer`` that can read it
                and gives the most concept tokens among the top ``self.k`` (ties: the lowest).
            k: Tokens listed per view.
        """
        from arithlens.models import load_model

        model = load_model(model)
        k = _check_int(k, "k", 1)
        parsed = self._items(model, items)
        upto = model.n_layers // 2 if self.upto_layer is None else model.check_layer(self.upto_layer)
        if layer is not None:
            model.check_layer(layer)
            for comp, low in parsed:
                if layer < low:
                    raise ValueError(f"attention layer {layer} cannot read {comp.name}: it writes after attention {low - 1}")
        lens = LogitLens(k=k, bottom=False, tagger=self.tagger)
        concept_idx = self._concept_index(model)
        rows = []
        for comp, low in parsed:
            a = layer
            if a is None:
                if low > upto:
                    raise ValueError(f"{comp.name} is above upto_layer={upto}: no attention layer up to it reads it")
                cands = list(range(low, upto + 1))
                moved = self.transform(model, comp.vector, cands)[:, 0]
                counts = self._count_top(model, moved, concept_idx)
                a = cands[int(torch.argmax(counts))]
            for view, vec, attn in (("direct", comp.vector, -1), ("transformed", self.transform(model, comp.vector, a)[0], a)):
                values, ids = lens.top_ids(model, vec[None], k=k)
                for rank, (v, t) in enumerate(zip(values[0].tolist(), ids[0].tolist()), start=1):
                    token = model.decode([t])
                    concept = self.tagger(token)
                    rows.append({"item": comp.name, "view": view, "attn_layer": attn, "rank": rank, "token": token,
                                 "token_id": t, "value": v, "concept": concept, "is_number_concept": concept is not None})  # fmt: skip
        return DirectVsTransformed(df=pd.DataFrame(rows), k=k)

    def run(self, model: Any, items: Any, layer: int | None = None, k: int = 10) -> DirectVsTransformed:
        """Table 7 (see :meth:`direct_vs_transformed`)."""
        return self.direct_vs_transformed(model, items, layer=layer, k=k)


def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in item
    )


# ---------------------------------------------------------------------------- Table 8
@dataclass
class HiddenInterpretableResult(Result):
    """Table 8: accuracy when the hidden-interpretable set (and a random set) is ablated.

    ``df``: one row per (M, neuron_set) — ``M``, ``neuron_set`` (``hidden`` / ``random``),
    ``n_neurons``, ``accuracy``, ``baseline_accuracy``, ``accuracy_decrease`` (relative,
    in %: ``100 · (base − acc) / base``), ``n_cases``.
    """

    scan: VOScan | None = field(default=None, repr=False)
    rule: str = "gt"
    neuron_sets: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        """Table 8's layout: rows ``number``, ``accuracy`` (decrease %), ``random`` (decrease %)."""
        hidden = self.df[self.df["neuron_set"] == "hidden"].set_index("M")
        random = self.df[self.df["neuron_set"] == "random"].set_index("M")
        cols = {f"M={m}": [int(hidden.loc[m, "n_neurons"]), round(float(hidden.loc[m, "accuracy_decrease"]), 1),
                           round(float(random.loc[m, "accuracy_decrease"]), 1) if m in random.index else float("nan")]
                for m in hidden.index}  # fmt: skip
        table = pd.DataFrame(cols, index=["number", "accuracy decrease (%)", "random set decrease (%)"], dtype=object)
        return table.reset_index(names="")

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        df = self.df.assign(M=self.df["M"].map(lambda m: f"M={m}"))
        fig = px.bar(df, x="M", y="accuracy_decrease", color="neuron_set", barmode="group", text="n_neurons",
                     labels={"accuracy_decrease": "accuracy decrease (%)", "neuron_set": "ablated set"},
                     title="Zero-ablating hidden-interpretable shallow neurons vs a random set of equal size (Table 8)",
                     **kwargs)  # fmt: skip
        fig.update_traces(texttemplate="%{text} neurons", textposition="outside")
        return fig


class HiddenInterpretable:
    """Table 8 / Table 17: ablate the hidden-interpretable neuron sets, M = 0…3.

    Args:
        ms: The thresholds ``M``.
        rule: ``"gt"`` (more than ``M`` concept tokens; reproduces the paper's counts) or
            ``"ge"`` (``M`` or more, the paper's wording).
        transform: The :class:`VOTransform` scanning the neurons (default one).
        random_control: Also ablate a random set of the same size per ``M``.
        seed: Seed of the random sets (one permutation of the scanned neurons; the set for
            each ``M`` is its first ``n`` neurons).
        position: Ablate at ``"all"`` positions (the paper) or the ``"last"`` only.
        batch_size: Cases per forward.
        progress: Progress bars.
    """

    def __init__(
        self,
        ms: Sequence[int] = (0, 1, 2, 3),
        rule: Rule = "gt",
        transform: VOTransform | None = None,
        random_control: bool = True,
        seed: int = 0,
        position: Literal["all", "last"] = "all",
        batch_size: int | None = None,
        progress: bool = True,
    ):
        if rule not in _RULES:
            raise ValueError(f"rule {rule!r} is not one of {_RULES}")
        if position not in ("all", "last"):
            raise ValueError(f"position {position!r} is not one of ('all', 'last')")
        ms = [ms] if isinstance(ms, int) else list(ms)
        if not ms:
            raise ValueError("ms is empty: give at least one threshold M")
        self.transform = transform or VOTransform(progress=progress)
        self.ms = [_check_int(m, "M") for m in ms]
        for m in self.ms:
            if m > self.transform.k:
                raise ValueError(f"M={m} exceeds k={self.transform.k}: no top-{self.transform.k} list can hold more")
        self.rule = rule
        self.random_control = bool(random_control)
        self.seed = int(seed)
        self.position = position
        self.batch_size = batch_size
        self.progress = progress

    def interventions(self, model: Any, neurons: dict[int, torch.Tensor]) -> list[Any]:
        from arithlens.interventions import ZeroNeurons

        return [ZeroNeurons(L, idx.tolist(), position=self.position) for L, idx in sorted(neurons.items()) if len(idx)]

    def random_sets(self, model: Any, scan: VOScan, sizes: Sequence[int]) -> list[dict[int, torch.Tensor]]:
        """Seeded random neuron sets of the given sizes over the scanned layers."""
        n_total = len(scan.neuron_layers) * model.d_mlp
        order = torch.randperm(n_total, generator=torch.Generator().manual_seed(self.seed))
        out = []
        for n in sizes:
            pick = order[:n]
            layer_pos, neuron = pick // model.d_mlp, pick % model.d_mlp
            out.append({L: neuron[layer_pos == i].sort().values for i, L in enumerate(scan.neuron_layers)
                        if bool((layer_pos == i).any())})  # fmt: skip
        return out

    @torch.no_grad()
    def run(self, model: Any, data: Any, scan: VOScan | None = None, only_correct: bool = False) -> HiddenInterpretableResult:
        """Scan (or reuse ``scan``), then ablate each set on ``data``.

        ``only_correct=True`` keeps the cases the original model answers correctly (the
        baseline accuracy is then 1 and the decrease is ``100 · (1 − acc)``).
        """
        from arithlens.models import load_model

        model = load_model(model)
        clean = model.run(data, batch_size=self.batch_size)
        if (clean.target_ids < 0).any():
            raise ValueError("every case needs a target token to measure accuracy; use an arithmetic dataset")
        cases = list(data) if not isinstance(data, str) else [data]
        correct = clean.correct
        if only_correct:
            keep = correct.nonzero()[:, 0].tolist()
            if not keep:
                raise ValueError("the model answers no case correctly: only_correct=True leaves nothing")
            cases = [cases[i] for i in keep]
            correct = correct[keep]
        base = float(correct.float().mean())
        scan = scan if scan is not None else self.transform.scan(model)
        sets = {m: scan.neuron_set(m, self.rule) for m in self.ms}
        sizes = [int(sum(len(v) for v in sets[m].values())) for m in self.ms]
        randoms = self.random_sets(model, scan, sizes) if self.random_control else [None] * len(self.ms)

        def accuracy(neurons: dict[int, torch.Tensor]) -> float:
            hooks = self.interventions(model, neurons)
            if not hooks:
                return base
            run = model.run(cases, interventions=hooks, batch_size=self.batch_size, cache=False)
            return float(run.correct.float().mean())

        rows = []
        jobs = [(m, "hidden", sets[m]) for m in self.ms] + [(m, "random", r) for m, r in zip(self.ms, randoms) if r is not None]
        for m, kind, neurons in tqdm(jobs, desc="ablating neuron sets", disable=not self.progress):
            acc = accuracy(neurons)
            rows.append({"M": m, "neuron_set": kind, "n_neurons": int(sum(len(v) for v in neurons.values())),
                         "accuracy": acc, "baseline_accuracy": base,
                         "accuracy_decrease": 100.0 * (base - acc) / base if base > 0 else float("nan"),
                         "n_cases": len(cases)})  # fmt: skip
        df = pd.DataFrame(rows).sort_values(["neuron_set", "M"], kind="stable").reset_index(drop=True)
        return HiddenInterpretableResult(df=df, scan=scan, rule=self.rule, neuron_sets=sets)
