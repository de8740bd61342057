"""Fast mode of the neuron scores: first order for every neuron, exact for the top candidates.

[`first_order_scores`][arithlens.cna.fast.first_order_scores] is `m_k fc2_k · ∇_x log p(w | x)`
at `x = x_mid` (the final norm's scale frozen), a `d_model` dot product per neuron;
[`rescore`][arithlens.cna.fast.rescore] computes the exact §4.1 score of chosen neurons.
`CNAConfig(mode="fast")` ranks every neuron by the first, then re-scores each case's top
`rescore` candidates by the second.

Example:
    ```python
    import arithlens
    from arithlens.cna.fast import first_order_scores
    from arithlens.cna.inputs import Activations, cna_hooks

    model = arithlens.load_model()
    cache = model.cache(["3+5="], names=cna_hooks(model, [29]))
    first_order_scores(model, Activations(cache), [29]).shape    # [case, layer, d_mlp]
    ```
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from arithlens import validate
from arithlens.cna.inputs import Activations
from arithlens.cna.scores import layer_w_out
from arithlens.readout import Readout


@torch.no_grad()
def first_order_scores(
    model: Any, acts: Activations, layers: Sequence[int], memory_budget: float = 1e9
) -> Float[torch.Tensor, "case layer d_mlp"]:
    """`m_k fc2_k · ∇_x log p(w | x)` at `x = x_mid` (frozen scale): the first-order score.

    `∇_x log p(w) = (W_U[:, w] − W_U p) / σ`, with `p` the readout at `x_mid`.
    """
    ro = Readout(model)
    dev = ro.device
    n = len(acts)
    step = int(max(1, min(n, memory_budget // (5 * 4 * ro.W_U.shape[1]))))  # logits, p and temporaries
    out = torch.empty(n, len(layers), model.d_mlp)
    for li, layer in enumerate(layers):
        x, post = acts.at("resid_mid", layer), acts.at("post", layer)
        for c0 in range(0, n, step):
            sl = slice(c0, min(n, c0 + step))
            s, w = acts.scale[sl].to(dev), acts.w[sl].to(dev)
            p = validate.check_finite(ro.logits(x[sl].to(dev), s), "the base logits").softmax(-1)
            grad = (ro.W_U[:, w].T - p @ ro.W_U.T) / s[:, None]  # [b, d_model]
            out[sl, li] = (post[sl].to(dev) * (grad @ layer_w_out(model, layer).float().T)).cpu()
    return out


@torch.no_grad()
def rescore(
    model: Any,
    acts: Activations,
    layers: Sequence[int],
    candidates: Int[torch.Tensor, "case r"],
    memory_budget: float = 1e9,
    progress: bool = False,
) -> Float[torch.Tensor, "case r"]:
    """Exact importance of chosen neurons per case; `candidates` index the flattened `(layer, neuron)` grid."""
    ro = Readout(model)
    dev, V = ro.device, ro.W_U.shape[1]
    layer_t = torch.tensor(list(layers))
    step = int(max(1, memory_budget // (6 * 4 * V)))
    out = torch.empty(candidates.shape, dtype=torch.float32)
    xs = torch.stack([acts.at("resid_mid", L) for L in layers], dim=1)  # [case, layer, d_model]: the cache's own rows
    posts = torch.stack([acts.at("post", L) for L in layers], dim=1)
    for i in tqdm(range(len(acts)), desc="re-scoring candidates", unit="case", disable=not progress):
        s, wi = acts.scale[i].to(dev), int(acts.w[i])
        for r0 in range(0, candidates.shape[1], step):
            cand = candidates[i, r0 : r0 + step]
            li, k = cand // model.d_mlp, cand % model.d_mlp
            lay = layer_t[li]
            x = xs[i, li].to(dev)
            m = posts[i, li, k].to(dev)
            base = ro.logits(x, s.expand(len(lay)))  # [r, V]
            fc2 = torch.stack([layer_w_out(model, L)[kk] for L, kk in zip(lay.tolist(), k.tolist())]).float()
            new = base + (m / s)[:, None] * (fc2 @ ro.W_U)
            delta = (new[:, wi] - new.logsumexp(-1)) - (base[:, wi] - base.logsumexp(-1))
            out[i, r0 : r0 + len(cand)] = validate.check_finite(delta, "the re-scored importances").cpu()
    return out
