"""Importance scores of FFN neurons, heads and layers — Yu & Ananiadou §4.1 (Eq. 5–6).

The importance of FFN neuron ``k`` of layer ``l`` for a case is the increase of the log
probability of a token ``w`` when the neuron's subvalue ``m_k · fc2_k`` is added to the
residual stream it is added to, read out at the last position (Yu & Ananiadou 2024b)::

    imp(l, k) = log p(w | x_mid + m_k · fc2_k) − log p(w | x_mid)

* ``x_mid`` — ``blocks.l.hook_resid_mid`` (layer input plus attention output, the
  "residual output" ``x^{l-1} + A^l``) at the last position;
* ``m_k`` — the coefficient score, ``blocks.l.mlp.hook_post[..., k]`` (Eq. 6; for SwiGLU
  ``silu(gate·x) · (up·x)``);
* ``fc2_k`` — the FFN value, ``W_out[l, k]`` (Eq. 5);
* ``p(· | v) = softmax((v / σ) W_U + b_U)`` — the unembedding after the final RMSNorm,
  whose scale ``σ`` is frozen at the value of the same forward pass at the last position
  (``ln_final.hook_scale``, the reference code's ``final_var``). Compatibility mode folds
  the final norm's weight into ``W_U``, so this is exactly the model's own readout (the
  tests check it reproduces the model's logits from the final residual).

``w`` is the model's top prediction (the paper) or, with ``target="answer"``, the case's
correct token.

The same score is given for each attention head — the head's output vector at the last
position, ``z_h W_O[l, h]`` (its share of ``hook_attn_out``), added to
``blocks.l.hook_resid_pre`` — and for each whole layer: the attention output added to
``resid_pre`` (which gives ``resid_mid``) and the MLP output added to ``resid_mid``.

Speed: ``logits(x_mid + m·fc2) = base + (m/σ) · (fc2 @ W_U)``, so the vocabulary
projections ``W_out[l] @ W_U`` are model constants computed once per chunk of neurons and
reused for every case (and both sides of a comparison); only a log-sum-exp per (case,
neuron) remains. Chunks are sized so the working set stays under ``memory_budget`` bytes.
``mode="fast"`` scores every neuron to first order (``m_k fc2_k · ∇_x log p(w)``, a
``d_model`` dot product) and re-scores the top ``rescore`` candidates of each case
exactly; :meth:`NeuronImportance.fast_agreement` says how often the fast top-k equals
the exact top-k.

Example::

    import arithlens
    from arithlens.cna import NeuronImportance

    model = arithlens.load_model()
    result = NeuronImportance().run(model, ["3+5="])
    result.top(10)          # layer, neuron, importance, coef, top_tokens
    result.plot()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from arithlens.results import Result, case_frame

Target = Literal["prediction", "answer"]
_TARGETS = ("prediction", "answer")
_MODES = ("exact", "fast")


# ---------------------------------------------------------------------------- validation
def check_target(target: str) -> str:
    """Validate ``target``: ``'prediction'`` or ``'answer'``."""
    if target not in _TARGETS:
        raise ValueError(f"target {target!r} is not one of {_TARGETS}")
    return target


def check_k(k: Any, name: str = "k") -> int:
    """Validate a positive integer ``k``."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"{name}={k!r} must be a positive integer")
    return int(k)


def check_ks(ks: Any) -> tuple[int, ...]:
    """Validate a non-empty sequence of positive integers."""
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one K, e.g. (99, 50, 30, 20, 10)")
    return tuple(check_k(k, "K") for k in ks)


def check_head_arg(model: Any, head: Any) -> tuple[int, int]:
    """``(layer, head)``, ``"L.H"`` or ``[L, H]`` → validated ``(layer, head)``."""
    if isinstance(head, str):
        parts = head.split(".")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"head {head!r} is not of the form 'LAYER.HEAD', e.g. '17.22'")
        head = (int(parts[0]), int(parts[1]))
    if not isinstance(head, (tuple, list)) or len(head) != 2:
        raise ValueError(f"head {head!r} must be a (layer, head) pair")
    return model.check_head(int(head[0]), int(head[1]))


# ---------------------------------------------------------------------------- activations
@dataclass
class Activations:
    """Last-position activations of a set of cases (all on CPU, float32).

    ``resid_pre``/``resid_mid``/``attn_out``/``mlp_out``: ``[case, layer, d_model]``;
    ``post``: coefficient scores ``[case, layer, d_mlp]``; ``z``: ``[case, layer, head,
    d_head]``; ``scale``: the final norm's scale at the last position ``[case]``;
    ``predictions``/``targets``: ``[case]`` (targets ``-1`` where a case has none).
    """

    resid_pre: Float[torch.Tensor, "case layer d_model"]
    resid_mid: Float[torch.Tensor, "case layer d_model"]
    attn_out: Float[torch.Tensor, "case layer d_model"]
    mlp_out: Float[torch.Tensor, "case layer d_model"]
    post: Float[torch.Tensor, "case layer d_mlp"]
    z: Float[torch.Tensor, "case layer head d_head"]
    scale: Float[torch.Tensor, "case"]
    predictions: Int[torch.Tensor, "case"]
    targets: Int[torch.Tensor, "case"]
    final_logprob: Float[torch.Tensor, "case vocab"] = field(repr=False, default=None)
    ln2_scale: Float[torch.Tensor, "case layer"] = field(repr=False, default=None)

    def __len__(self) -> int:
        return int(self.scale.shape[0])

    @staticmethod
    def cat(parts: Sequence["Activations"]) -> "Activations":
        names = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "post", "z", "scale", "predictions", "targets", "final_logprob", "ln2_scale"]
        return Activations(**{n: torch.cat([getattr(p, n) for p in parts]) for n in names})


_ACT_HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "post": "blocks.{}.mlp.hook_post",
    "z": "blocks.{}.attn.hook_z",
}


@torch.no_grad()
def collect(model: Any, data: Any, interventions: Sequence[Any] = (), batch_size: int | None = None) -> Activations:
    """Forward every case once (under ``interventions``) and keep last-position activations."""
    ids, targets = model._cases(data)
    n, L = len(ids), model.n_layers
    out = {
        "resid_pre": torch.empty(n, L, model.d_model),
        "resid_mid": torch.empty(n, L, model.d_model),
        "attn_out": torch.empty(n, L, model.d_model),
        "mlp_out": torch.empty(n, L, model.d_model),
        "post": torch.empty(n, L, model.d_mlp),
        "z": torch.empty(n, L, model.n_heads, model.d_head),
    }
    scale = torch.empty(n)
    ln2_scale = torch.empty(n, L)
    final_lp = torch.empty(n, model.d_vocab)
    current: dict[str, torch.Tensor] = {}

    # One closure per (kind, layer): inside a hook, hook.name is the canonical name, not
    # the alias registered, so the key is bound here instead of read from the hook.
    def grabber(kind: str, layer: int):
        def fn(act: torch.Tensor, hook: Any) -> None:
            out[kind][current["rows"], layer] = act[:, -1].detach().float().cpu()

        return fn

    def grab_scale(act: torch.Tensor, hook: Any) -> None:
        scale[current["rows"]] = act[:, -1, 0].detach().float().cpu()

    hooks = [(name.format(L_), grabber(kind, L_)) for kind, name in _ACT_HOOKS.items() for L_ in range(L)]
    hooks.append(("ln_final.hook_scale", grab_scale))

    def grab_ln2(layer: int):
        def fn(act: torch.Tensor, hook: Any) -> None:
            ln2_scale[current["rows"], layer] = act[:, -1, 0].detach().float().cpu()

        return fn

    hooks += [(f"blocks.{L_}.ln2.hook_scale", grab_ln2(L_)) for L_ in range(L)]
    with model.intervened(*interventions), model.hooked(hooks):
        for rows, tokens in model.batches(ids, batch_size):
            current["rows"] = rows
            with model.on_rows(rows):
                final_lp[rows] = model.last_logits(tokens).float().log_softmax(-1).cpu()
    return Activations(
        **out,
        scale=scale,
        predictions=final_lp.argmax(-1),
        targets=torch.tensor(targets, dtype=torch.long),
        final_logprob=final_lp,
        ln2_scale=ln2_scale,
    )


def choose_w(acts: Activations, target: str) -> Int[torch.Tensor, "case"]:
    """The scored token of each case: the prediction, or the correct answer token."""
    check_target(target)
    if target == "prediction":
        return acts.predictions.clone()
    if bool((acts.targets < 0).any()):
        bad = int((acts.targets < 0).nonzero()[0, 0])
        raise ValueError(
            f"target='answer' needs every case to have an answer, but case {bad} has none; "
            "build cases with answers (arithlens.data) or use target='prediction'"
        )
    return acts.targets.clone()


# ---------------------------------------------------------------------------- the scores
class _Readout:
    """``log p(w | v)`` with the final norm's scale frozen, on the model's device."""

    def __init__(self, model: Any):
        self.W_U: Float[torch.Tensor, "d_model vocab"] = model.bridge.W_U.detach().float()
        self.b_U: Float[torch.Tensor, "vocab"] = model.bridge.b_U.detach().float()
        self.device = self.W_U.device

    def logits(self, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."]) -> torch.Tensor:
        return (v / scale[..., None]) @ self.W_U + self.b_U

    def logprob(self, v: torch.Tensor, scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = self.logits(v, scale)
        return logits.gather(-1, w[..., None])[..., 0] - logits.logsumexp(-1)


def _chunk_sizes(budget: float, vocab: int, d_mlp: int, n_cases: int) -> tuple[int, int]:
    """Neurons per vocabulary-projection chunk and cases per log-sum-exp block.

    A quarter of the budget holds the ``[neurons, vocab]`` projection, the rest the
    ``[cases, neurons, vocab]`` logits (×2: the exp inside logsumexp is a second copy).
    """
    row = vocab * 4
    n_neurons = int(max(1, min(d_mlp, budget // 4 // row)))
    n_case = int(max(1, min(n_cases, (budget * 3 // 4) // (2 * n_neurons * row))))
    return n_neurons, n_case


@dataclass
class NeuronScores:
    """Raw per-case tensors (``layers``: the scored layers, in order)."""

    importance: Float[torch.Tensor, "case layer d_mlp"]
    coef: Float[torch.Tensor, "case layer d_mlp"]
    layers: list[int]
    exact: Bool[torch.Tensor, "case layer d_mlp"] | None = None
    first_order: Float[torch.Tensor, "case layer d_mlp"] | None = None
    top_token_ids: Int[torch.Tensor, "layer d_mlp k"] | None = None


@torch.no_grad()
def exact_neuron_scores(
    model: Any,
    acts: Activations,
    w: Int[torch.Tensor, "case"],
    layers: Sequence[int],
    memory_budget: float = 1e9,
    top_tokens: int = 0,
    progress: bool = False,
) -> NeuronScores:
    """Exact §4.1 importance of every neuron of ``layers`` for every case.

    ``top_tokens > 0`` also keeps the ids of each neuron's top tokens (``fc2_k @ W_U``),
    nearly free since the projection is built anyway.
    """
    ro = _Readout(model)
    dev = ro.device
    n, V = len(acts), ro.W_U.shape[1]
    n_chunk, c_chunk = _chunk_sizes(memory_budget, V, model.d_mlp, n)
    W_out = model.bridge.W_out.detach()
    imp = torch.empty(n, len(layers), model.d_mlp)
    top_ids = torch.empty(len(layers), model.d_mlp, top_tokens, dtype=torch.long) if top_tokens else None
    scale, w_dev = acts.scale.to(dev), w.to(dev)
    steps = len(layers) * math.ceil(model.d_mlp / n_chunk)
    bar = tqdm(total=steps, desc="neuron importance", disable=not progress)
    try:
        for li, layer in enumerate(layers):
            base = ro.logits(acts.resid_mid[:, layer].to(dev), scale)  # [case, vocab]
            base_lse = base.logsumexp(-1)
            # The subvalue enters the logits divided by the frozen scale: c = m / σ.
            c_all = acts.post[:, layer].to(dev) / scale[:, None]  # [case, d_mlp]
            for start in range(0, model.d_mlp, n_chunk):
                stop = min(model.d_mlp, start + n_chunk)
                U = W_out[layer, start:stop].float() @ ro.W_U  # [neuron, vocab], shared by all cases
                if top_ids is not None:
                    top_ids[li, start:stop] = U.topk(top_tokens, dim=-1).indices.cpu()
                for c0 in range(0, n, c_chunk):
                    c1 = min(n, c0 + c_chunk)
                    c = c_all[c0:c1, start:stop]  # [b, neuron]
                    logits = torch.addcmul(base[c0:c1, None, :], c[:, :, None], U[None])  # [b, neuron, vocab]
                    lse = logits.logsumexp(-1)
                    del logits
                    u_w = U[:, w_dev[c0:c1]].T  # [b, neuron]: fc2_k @ W_U at w
                    # log p(w|x+m fc2) - log p(w|x) = c·u_w - lse_new + lse_base (base_w cancels)
                    imp[c0:c1, li, start:stop] = (c * u_w - lse + base_lse[c0:c1, None]).cpu()
                bar.update(1)
    finally:
        bar.close()
    coef = acts.post[:, list(layers)].clone()
    return NeuronScores(imp, coef, list(layers), top_token_ids=top_ids)


@torch.no_grad()
def first_order_scores(
    model: Any, acts: Activations, w: Int[torch.Tensor, "case"], layers: Sequence[int]
) -> Float[torch.Tensor, "case layer d_mlp"]:
    """``m_k fc2_k · ∇_x log p(w | x)`` at ``x = x_mid`` (frozen scale): the first-order score.

    ``∇_x log p(w) = (W_U[:, w] − W_U p) / σ`` with ``p`` the readout at ``x_mid``.
    """
    ro = _Readout(model)
    dev = ro.device
    scale, w_dev = acts.scale.to(dev), w.to(dev)
    out = torch.empty(len(acts), len(layers), model.d_mlp)
    W_out = model.bridge.W_out.detach().float()
    for li, layer in enumerate(layers):
        p = ro.logits(acts.resid_mid[:, layer].to(dev), scale).softmax(-1)  # [case, vocab]
        grad = (ro.W_U[:, w_dev].T - p @ ro.W_U.T) / scale[:, None]  # [case, d_model]
        out[:, li] = (acts.post[:, layer].to(dev) * (grad @ W_out[layer].T)).cpu()
    return out


@torch.no_grad()
def rescore(
    model: Any,
    acts: Activations,
    w: Int[torch.Tensor, "case"],
    layers: Sequence[int],
    candidates: Int[torch.Tensor, "case r"],
) -> Float[torch.Tensor, "case r"]:
    """Exact importance of chosen neurons per case; ``candidates`` index the flattened (layer, neuron) grid."""
    ro = _Readout(model)
    dev = ro.device
    layer_t = torch.tensor(list(layers))
    W_out = model.bridge.W_out.detach().float()
    out = torch.empty(candidates.shape, dtype=torch.float32)
    for i in range(len(acts)):
        li, k = candidates[i] // model.d_mlp, candidates[i] % model.d_mlp
        lay = layer_t[li]
        s = acts.scale[i].to(dev)
        base = ro.logits(acts.resid_mid[i, lay].to(dev), s.expand(len(lay)))  # [r, vocab]
        U = W_out[lay.to(dev), k.to(dev)] @ ro.W_U  # [r, vocab]
        c = (acts.post[i, lay, k].to(dev) / s)[:, None]
        wi = int(w[i])
        new = base + c * U
        lp_new = new[:, wi] - new.logsumexp(-1)
        lp_old = base[:, wi] - base.logsumexp(-1)
        out[i] = (lp_new - lp_old).cpu()
    return out


@torch.no_grad()
def head_scores(model: Any, acts: Activations, w: Int[torch.Tensor, "case"]) -> Float[torch.Tensor, "case layer head"]:
    """Importance of each head's output ``z_h W_O[l,h]`` added to ``resid_pre`` of its layer."""
    ro = _Readout(model)
    dev = ro.device
    W_O = model.bridge.W_O.detach().float()  # [layer, head, d_head, d_model]
    out = torch.empty(len(acts), model.n_layers, model.n_heads)
    for i in range(len(acts)):
        s, wi = acts.scale[i].to(dev), w[i : i + 1].to(dev)
        head_out = torch.einsum("lhd,lhdm->lhm", acts.z[i].to(dev), W_O)  # [layer, head, d_model]
        x = acts.resid_pre[i].to(dev)
        lp_new = ro.logprob(x[:, None] + head_out, s, wi.expand(model.n_layers, model.n_heads))
        lp_old = ro.logprob(x, s, wi.expand(model.n_layers))
        out[i] = (lp_new - lp_old[:, None]).cpu()
    return out


@torch.no_grad()
def layer_scores(model: Any, acts: Activations, w: Int[torch.Tensor, "case"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance of each layer's attention output (on ``resid_pre``) and MLP output (on ``resid_mid``)."""
    ro = _Readout(model)
    dev = ro.device
    s = acts.scale.to(dev)[:, None].expand(-1, model.n_layers)
    wl = w.to(dev)[:, None].expand(-1, model.n_layers)
    pre, mid = acts.resid_pre.to(dev), acts.resid_mid.to(dev)
    attn = ro.logprob(pre + acts.attn_out.to(dev), s, wl) - ro.logprob(pre, s, wl)
    mlp = ro.logprob(mid + acts.mlp_out.to(dev), s, wl) - ro.logprob(mid, s, wl)
    return attn.cpu(), mlp.cpu()


# ---------------------------------------------------------------------------- tokens
def vocab_strings(model: Any) -> list[str]:
    """Every token decoded once (cached on the model), so top-token columns are cheap."""
    cached = getattr(model, "_arithlens_vocab_strs", None)
    if cached is None or len(cached) != model.d_vocab:
        n_tok = len(model.tokenizer)
        cached = [model.tokenizer.decode([i]) if i < n_tok else f"<{i}>" for i in range(model.d_vocab)]
        model._arithlens_vocab_strs = cached
    return cached


@torch.no_grad()
def neuron_top_token_ids(model: Any, neurons: Sequence[tuple[int, int]], k: int = 10) -> Int[torch.Tensor, "n k"]:
    """Ids of the top-``k`` tokens of each neuron's FFN value projected by ``W_U`` (Table 4)."""
    if not neurons:
        return torch.empty(0, k, dtype=torch.long)
    W_out = model.bridge.W_out.detach().float()
    idx = torch.tensor(list(neurons))
    vecs = W_out[idx[:, 0].to(W_out.device), idx[:, 1].to(W_out.device)]
    return (vecs @ model.bridge.W_U.float()).topk(k, dim=-1).indices.cpu()


def token_lists(model: Any, ids: Int[torch.Tensor, "n k"]) -> list[str]:
    """Each row of token ids as a printable list of token strings."""
    strs = vocab_strings(model)
    return ["[" + ", ".join(repr(strs[int(t)]) for t in row) + "]" for row in ids]


# ---------------------------------------------------------------------------- result
@dataclass
class ImportanceResult(Result):
    """Importance of every FFN neuron (plus heads and layers) on a set of cases.

    Attributes:
        df: One row per neuron: ``layer, neuron, importance`` (mean over cases of the
            §4.1 score, nats), ``coef`` (mean coefficient score ``m_k``), ``n_top`` (in how
            many cases the neuron is among that case's ``top_k`` by importance),
            ``n_cases``; sorted by ``importance`` descending.
        importance, coef: ``[case, layer, d_mlp]`` per-case scores (``layers`` index the
            second axis).
        head_importance: ``[case, layer, head]`` — log-prob increase from one head's
            output added to ``resid_pre``.
        attn_importance, mlp_importance: ``[case, layer]`` — whole attention output added
            to ``resid_pre``; whole MLP output added to ``resid_mid``.
        w: ``[case]`` scored token ids.
        exact: in ``mode="fast"``, which scores were re-scored exactly (others are first
            order); ``None`` in exact mode.
    """

    importance: torch.Tensor = field(repr=False, default=None)
    coef: torch.Tensor = field(repr=False, default=None)
    layers: list[int] = field(default_factory=list)
    head_importance: torch.Tensor = field(repr=False, default=None)
    attn_importance: torch.Tensor = field(repr=False, default=None)
    mlp_importance: torch.Tensor = field(repr=False, default=None)
    w: torch.Tensor = field(repr=False, default=None)
    w_str: list[str] = field(default_factory=list)
    cases: pd.DataFrame = field(repr=False, default=None)
    top_k: int = 10
    mode: str = "exact"
    exact: torch.Tensor | None = field(repr=False, default=None)
    top_tokens: list[str] | None = field(repr=False, default=None)  # per flattened (layer, neuron)

    @property
    def n_cases(self) -> int:
        return int(self.importance.shape[0])

    def _frame(self, values: torch.Tensor, coef: torch.Tensor) -> pd.DataFrame:
        lay = einops.repeat(torch.tensor(self.layers), "l -> (l n)", n=values.shape[-1])
        neu = einops.repeat(torch.arange(values.shape[-1]), "n -> (l n)", l=len(self.layers))
        df = pd.DataFrame(
            {
                "layer": lay.numpy(),
                "neuron": neu.numpy(),
                "importance": einops.rearrange(values, "l n -> (l n)").numpy(),
                "coef": einops.rearrange(coef, "l n -> (l n)").numpy(),
            }
        )
        if self.top_tokens is not None:
            df["top_tokens"] = self.top_tokens
        return df

    def top(self, k: int = 10, case: int | None = None) -> pd.DataFrame:
        """The ``k`` most important neurons of one case, or by mean importance."""
        check_k(k)
        if case is None:
            return self.df.head(k).reset_index(drop=True)
        if not 0 <= case < self.n_cases:
            raise ValueError(f"case {case} is out of range: there are {self.n_cases} cases")
        df = self._frame(self.importance[case], self.coef[case])
        return df.sort_values("importance", ascending=False).head(k).reset_index(drop=True)

    def per_case(self, k: int | None = None) -> pd.DataFrame:
        """Long frame ``case, layer, neuron, importance, coef`` (each case's top ``k`` or all)."""
        frames = []
        for i in range(self.n_cases):
            df = self._frame(self.importance[i], self.coef[i]).sort_values("importance", ascending=False)
            frames.append((df.head(k) if k else df).assign(case=i))
        out = pd.concat(frames, ignore_index=True)
        return out[["case"] + [c for c in out.columns if c != "case"]]

    def heads_df(self) -> pd.DataFrame:
        """Mean importance of each head's output: ``layer, head, importance``."""
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
        """Mean importance of each layer's attention and MLP outputs: ``layer, part, importance``."""
        L = self.attn_importance.shape[1]
        return pd.concat(
            [
                pd.DataFrame({"layer": range(L), "part": "attn", "importance": self.attn_importance.mean(0).numpy()}),
                pd.DataFrame({"layer": range(L), "part": "mlp", "importance": self.mlp_importance.mean(0).numpy()}),
            ],
            ignore_index=True,
        )

    def plot(self, n_label: int = 10, max_points: int | None = 5000, **kwargs: Any) -> Any:
        """Neurons' mean importance against their layer; the top ``n_label`` labelled.

        ``max_points`` keeps the neurons with the largest ``|importance|`` (the rest sit in
        the band around 0, and 46,080 points would make a notebook megabytes long);
        ``None`` plots every neuron.
        """
        import plotly.graph_objects as go

        df = self.df
        top = df.head(n_label)
        span = max(1, int(df["neuron"].max()))

        def xpos(d: pd.DataFrame) -> Any:  # a layer's neurons spread across its x slot
            return d["layer"] + (d["neuron"] / span - 0.5) * 0.8

        def names(d: pd.DataFrame) -> list[str]:
            return [f"{L}_{n}" for L, n in zip(d["layer"], d["neuron"])]

        shown = len(df) if max_points is None else min(len(df), int(max_points))
        if shown < len(df):
            df = df.loc[df["importance"].abs().nlargest(shown).index]
        fig = go.Figure()
        fig.add_trace(
            go.Scattergl(
                x=xpos(df),
                y=df["importance"],
                mode="markers",
                marker={"size": 3, "color": df["importance"], "colorscale": "RdBu_r", "cmid": 0},
                text=names(df),
                hovertemplate="%{text}<br>importance %{y:.3f}<extra></extra>",
                name="neurons",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=xpos(top),
                y=top["importance"],
                mode="markers+text",
                text=names(top),
                textposition="top center",
                marker={"size": 8, "color": "black"},
                name=f"top {n_label}",
            )
        )
        target = self.w_str[0] if len(set(self.w_str)) == 1 and self.w_str else "w"
        fig.update_layout(
            title=f"FFN neuron importance: Δ log p({target!r}) ({self.n_cases} case{'s' * (self.n_cases != 1)}"
            + (f"; the {shown:,} largest |importance| of {len(self.df):,} neurons)" if shown < len(self.df) else ")"),
            xaxis_title="layer",
            yaxis_title="importance (nats)",
            **kwargs,
        )
        return fig


class NeuronImportance:
    """§4.1 importance score of every FFN neuron (and head and layer) on a dataset.

    Args:
        target: ``"prediction"`` (the paper: the model's top token) or ``"answer"``.
        mode: ``"exact"`` or ``"fast"`` (first order, then exact on ``rescore`` per case).
        rescore: Candidates re-scored exactly per case in fast mode.
        top_k: The per-case top-K the ``n_top`` aggregate counts.
        layers: FFN layers to score (default all).
        top_tokens: Top vocabulary tokens per neuron in ``df`` (0: none).
        memory_budget: Bytes the exact computation's working set may take.
        batch_size: Cases per forward pass.
        progress: Show a progress bar.
    """

    def __init__(
        self,
        target: Target = "prediction",
        mode: Literal["exact", "fast"] = "exact",
        rescore: int = 200,
        top_k: int = 10,
        layers: Sequence[int] | None = None,
        top_tokens: int = 10,
        memory_budget: float = 1e9,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        self.target = check_target(target)
        if mode not in _MODES:
            raise ValueError(f"mode {mode!r} is not one of {_MODES}")
        self.mode = mode
        self.rescore = check_k(rescore, "rescore")
        self.top_k = check_k(top_k, "top_k")
        self.layers = None if layers is None else list(layers)
        if top_tokens < 0:
            raise ValueError(f"top_tokens={top_tokens} must be >= 0")
        self.top_tokens = int(top_tokens)
        if memory_budget <= 0:
            raise ValueError(f"memory_budget={memory_budget} must be positive (bytes)")
        self.memory_budget = float(memory_budget)
        self.batch_size = batch_size
        self.progress = progress

    def _layers(self, model: Any) -> list[int]:
        layers = list(range(model.n_layers)) if self.layers is None else [model.check_layer(int(L)) for L in self.layers]
        if not layers:
            raise ValueError("layers is empty: give at least one layer to score")
        return layers

    def scores(self, model: Any, acts: Activations, w: torch.Tensor) -> NeuronScores:
        """Neuron scores of collected activations for tokens ``w`` (exact or fast)."""
        layers = self._layers(model)
        if self.mode == "exact":
            return exact_neuron_scores(model, acts, w, layers, self.memory_budget, self.top_tokens, self.progress)
        fo = first_order_scores(model, acts, w, layers)
        flat = einops.rearrange(fo, "c l n -> c (l n)")
        r = min(self.rescore, flat.shape[1])
        cand = flat.topk(r, dim=-1).indices
        exact_vals = rescore(model, acts, w, layers, cand)
        imp = flat.clone()
        imp.scatter_(1, cand, exact_vals)
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask.scatter_(1, cand, True)
        shape = dict(l=len(layers))
        return NeuronScores(
            importance=einops.rearrange(imp, "c (l n) -> c l n", **shape),
            coef=acts.post[:, layers].clone(),
            layers=layers,
            exact=einops.rearrange(mask, "c (l n) -> c l n", **shape),
            first_order=fo,
        )

    @torch.no_grad()
    def run(self, model: Any, data: Any, interventions: Sequence[Any] = (), w: Any = None) -> ImportanceResult:
        """Score every neuron on ``data`` (optionally under ``interventions``, for fixed ``w``)."""
        from arithlens.models import load_model

        model = load_model(model)
        acts = collect(model, data, interventions, self.batch_size)
        w = choose_w(acts, self.target) if w is None else torch.as_tensor(w, dtype=torch.long).reshape(-1)
        if len(w) != len(acts):
            raise ValueError(f"w has {len(w)} tokens but there are {len(acts)} cases")
        return self.result(model, data, acts, w, self.scores(model, acts, w))

    def result(self, model: Any, data: Any, acts: Activations, w: torch.Tensor, sc: NeuronScores) -> ImportanceResult:
        """Assemble an :class:`ImportanceResult` from collected activations and scores."""
        attn, mlp = layer_scores(model, acts, w)
        top_tokens = None
        if self.top_tokens and sc.top_token_ids is not None:
            top_tokens = token_lists(model, einops.rearrange(sc.top_token_ids, "l n k -> (l n) k"))
        res = ImportanceResult(
            df=pd.DataFrame(),
            importance=sc.importance,
            coef=sc.coef,
            layers=sc.layers,
            head_importance=head_scores(model, acts, w),
            attn_importance=attn,
            mlp_importance=mlp,
            w=w,
            w_str=model.token_strs(w.tolist()),
            cases=case_frame(data, model),
            top_k=self.top_k,
            mode=self.mode,
            exact=sc.exact,
            top_tokens=top_tokens,
        )
        res.df = _aggregate(res, self.top_k)
        if self.top_tokens and top_tokens is None:  # fast mode: project only the top rows
            head = res.df.head(max(50, self.top_k))
            ids = neuron_top_token_ids(model, list(zip(head["layer"], head["neuron"])), self.top_tokens)
            res.df["top_tokens"] = ""
            res.df.loc[head.index, "top_tokens"] = token_lists(model, ids)
        return res

    def fast_agreement(self, model: Any, data: Any, k: int = 10) -> pd.DataFrame:
        """Per case: is the fast mode's top-``k`` the exact top-``k``? (also the overlap).

        Returns ``case, same_topk, overlap`` (fraction of the exact top-k the fast one
        finds); ``.attrs["agreement"]`` holds the fraction of cases with equal sets.
        """
        from arithlens.models import load_model

        check_k(k)
        model = load_model(model)
        acts = collect(model, data, (), self.batch_size)
        w = choose_w(acts, self.target)
        layers = self._layers(model)
        exact = exact_neuron_scores(model, acts, w, layers, self.memory_budget, 0, self.progress).importance
        fast = NeuronImportance(self.target, "fast", self.rescore, layers=layers).scores(model, acts, w).importance
        rows = []
        for i in range(len(acts)):
            a = set(einops.rearrange(exact[i], "l n -> (l n)").topk(k).indices.tolist())
            b = set(einops.rearrange(fast[i], "l n -> (l n)").topk(k).indices.tolist())
            rows.append({"case": i, "same_topk": a == b, "overlap": len(a & b) / k})
        df = pd.DataFrame(rows)
        df.attrs["agreement"] = float(df["same_topk"].mean())
        return df


def _aggregate(res: ImportanceResult, top_k: int) -> pd.DataFrame:
    """Per-neuron mean importance and coefficient, and the per-case top-K count."""
    flat = einops.rearrange(res.importance, "c l n -> c (l n)")
    k = min(top_k, flat.shape[1])
    counts = torch.zeros(flat.shape[1])
    counts.index_add_(0, flat.topk(k, dim=-1).indices.reshape(-1), torch.ones(flat.shape[0] * k))
    df = res._frame(res.importance.mean(0), res.coef.mean(0))
    df["n_top"] = counts.long().numpy()
    df["n_cases"] = res.n_cases
    return df.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def importance_scores(
    model: Any,
    data: Any,
    *,
    target: Target = "prediction",
    w: Any = None,
    interventions: Sequence[Any] = (),
    layers: Sequence[int] | None = None,
    mode: Literal["exact", "fast"] = "exact",
    memory_budget: float = 1e9,
    top_tokens: int = 0,
    progress: bool = False,
) -> ImportanceResult:
    """Functional form of :class:`NeuronImportance` (``w``: fixed token ids per case)."""
    return NeuronImportance(
        target=target, mode=mode, layers=layers, top_tokens=top_tokens, memory_budget=memory_budget, progress=progress
    ).run(model, data, interventions=interventions, w=w)
