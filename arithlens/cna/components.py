"""The §4.1 score of whole components: each head's output, each layer's attention and MLP output.

The same readout as the neuron scores ([`arithlens.cna.scores`][arithlens.cna.scores]): the
log-probability increase of `w` when a component's output vector is added to the residual
stream it is added to, read with the final norm's scale frozen. Every function streams per
case or per layer and block of cases, so at most `memory_budget` bytes of logits exist at once.

Example:
    ```python
    import arithlens
    from arithlens.cna.components import head_scores
    from arithlens.cna.inputs import Activations, component_hooks

    model = arithlens.load_model()
    cache = model.cache(["3+5="], names=component_hooks(model))
    head_scores(model, Activations(cache)).shape     # [case, layer, head]
    ```
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from arithlens.core import validate
from arithlens.cna.inputs import Activations
from arithlens.core.blocks import attn_gain
from arithlens.core.readout import Readout


@torch.no_grad()
def head_scores(model: Any, acts: Activations, memory_budget: float = 1e9) -> Float[torch.Tensor, "case layer head"]:
    """Importance of each head's output `z_h W_O[l, h]` added to `resid_pre` of its layer (streamed per case).

    Through a post-attention norm the head's vector is `g₁ ⊙ (z_h W_O[l, h]) / s₁`, the
    norm's gain and its frozen scale at that position ([`arithlens.core.blocks`][arithlens.core.blocks]).
    """
    ro = Readout(model)
    dev, V, H = ro.device, ro.W_U.shape[1], model.n_heads
    W_O = model.bridge.W_O.detach()  # [layer, head, d_head, d_model]
    n_layer = int(max(1, min(model.n_layers, memory_budget // (10 * 4 * V * (H + 1)))))  # logits and log-sum-exp temporaries, with room
    out = torch.empty(len(acts), model.n_layers, H)
    for l0 in range(0, model.n_layers, n_layer):
        ls = list(range(l0, min(model.n_layers, l0 + n_layer)))
        z = torch.stack([acts.at("z", L) for L in ls], dim=1)  # [case, l, head, d_head]
        pre = torch.stack([acts.at("resid_pre", L) for L in ls], dim=1)
        W = W_O[ls].float()
        gains = [attn_gain(model, L) for L in ls]
        if gains[0] is not None:
            W = W * torch.stack(gains).to(W.device)[:, None, None, :]
        post_scale = torch.stack([acts.at("attn_write_scale", L) for L in ls], dim=1)  # [case, l]
        for i in range(len(acts)):
            s, wi = acts.scale[i].to(dev), acts.w[i : i + 1].to(dev)
            head_out = torch.einsum("lhd,lhdm->lhm", z[i].to(dev), W) / post_scale[i].to(dev)[:, None, None]
            x = pre[i].to(dev)
            lp_new = ro.logprob(x[:, None] + head_out, s, wi.expand(len(ls), H))
            lp_old = ro.logprob(x, s, wi.expand(len(ls)))
            out[i, l0 : l0 + len(ls)] = (lp_new - lp_old[:, None]).cpu()
    return validate.check_finite(out, "the head importances")


@torch.no_grad()
def layer_scores(model: Any, acts: Activations, memory_budget: float = 1e9) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance of each layer's attention output (on `resid_pre`) and MLP output (on the residual
    its neurons are added to: `resid_mid`, or `resid_pre + attn_out` in a parallel block), `[case, layer]` each.

    Streamed per layer and block of cases: at most `memory_budget` bytes of logits at once.
    """
    ro = Readout(model)
    dev, V, n = ro.device, ro.W_U.shape[1], len(acts)
    step = int(max(1, min(n, memory_budget // (20 * 4 * V))))  # two logits and their log-sum-exp temporaries, with room
    attn, mlp = torch.empty(n, model.n_layers), torch.empty(n, model.n_layers)
    for L in range(model.n_layers):
        pre, a_out = acts.at("resid_pre", L), acts.at("attn_out", L)
        mid, m_out = acts.at("mlp_base", L), acts.at("mlp_out", L)
        for c0 in range(0, n, step):
            sl = slice(c0, min(n, c0 + step))
            s, w = acts.scale[sl].to(dev), acts.w[sl].to(dev)
            x, xm = pre[sl].to(dev), mid[sl].to(dev)
            attn[sl, L] = (ro.logprob(x + a_out[sl].to(dev), s, w) - ro.logprob(x, s, w)).cpu()
            mlp[sl, L] = (ro.logprob(xm + m_out[sl].to(dev), s, w) - ro.logprob(xm, s, w)).cpu()
    return validate.check_finite(attn, "the attention importances"), validate.check_finite(mlp, "the MLP importances")


@torch.no_grad()
def final_logprob(model: Any, acts: Activations, memory_budget: float = 1e9) -> Float[torch.Tensor, "case"]:
    """The model's own `log p(w)` at each case's last position (final residual at the pass's own scale)."""
    ro = Readout(model)
    dev, n, last = ro.device, len(acts), model.n_layers - 1
    step = int(max(1, min(n, memory_budget // (10 * 4 * ro.W_U.shape[1]))))  # logits and temporaries, with room
    final = acts.at("mlp_base", last) + acts.at("mlp_out", last)
    scale = acts.cache.final_scale.float()
    out = torch.empty(n)
    for c0 in range(0, n, step):
        sl = slice(c0, min(n, c0 + step))
        out[sl] = ro.logprob(final[sl].to(dev), scale[sl].to(dev), acts.w[sl].to(dev)).cpu()
    return out
