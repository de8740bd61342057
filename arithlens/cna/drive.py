"""First-order drive of FFN coefficients — the arithmetic of §4.3's edges and §4.5's stage 1.

How much a vector `v` added to the residual stream raises FFN neuron `b`'s coefficient
score `m_b`, to first order, with `b`'s pre-MLP norm scale `σ_b` (the `ln2` scale)
frozen, is `v · ∇_x m_b` — [`neuron_keys`][arithlens.cna.drive.neuron_keys] gives that
key. For a SwiGLU neuron, `m_b = act(x̂·W_gate[:, b]) · (x̂·W_in[:, b])` with
`x̂ = g ⊙ x / σ_b` (the norm's gain `g` scales both key rows: folded into them on a
LayerNorm model, applied here on an RMSNorm one, [`arithlens.core.blocks`][arithlens.core.blocks]), so

    ∇_x m_b = (act'(g_b) u_b W_gate[:, b] + act(g_b) W_in[:, b]) / σ_b

(`g_b`, `u_b`: the gate and up pre-activations). A plain MLP (`m_b = act(x̂·W_in[:, b] +
b_in[b])`, GPT-2) has `∇_x m_b = act'(u_b) W_in[:, b] / σ_b`; a LayerNorm also centres
`x`, so the key is centred too.

The PE-DAG ([`pe_dag`][arithlens.cna.pe_dag]) scores an edge `a → b` with `v = m_a fc2_a`.
The logic chain's feature-enhancing stage ([`logic_chain`][arithlens.cna.logic_chain])
scores a shallow neuron `k` of layer `l` at an earlier position `p` with `v` its subvalue
carried to the last position by the attention layers up to the root's:

    T(l, k, p) = m_k(p) · Σ_{l < l' ≤ l_root} Σ_h A^{l'h}[last, p] / σ1^{l'}(p) · fc2_k W_V^{l'h} W_O^{l'h}
    score      = T(l, k, p) · ∇_x m_root

(`A`: attention pattern, `σ1`: the `ln1` scale at `p`; the `ln1` gain scales `W_V`'s rows).

Example:
    ```python
    import torch
    from arithlens.core import names
from arithlens.core.blocks import pre_norm_gain
    from arithlens.cna.drive import neuron_keys
    from arithlens.testing import tiny_llama

    model = tiny_llama()
    cache = model.cache("3+5=", names=[names.resid_mid(2), names.ln2_scale(2)])
    key = neuron_keys(model, cache.last(names.resid_mid(2))[0], cache.last(names.ln2_scale(2))[0], 2, torch.tensor([7]))
    ```
"""

from __future__ import annotations

from typing import Any, Callable

import einops
import torch
from jaxtyping import Float, Int

from arithlens.core import names
from arithlens.core.blocks import pre_norm_gain
from arithlens.core.cache import DatasetCache
from arithlens.cna.vo_transform import head_ov


# ---------------------------------------------------------------------------- FFN keys
def _activation(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP's activation function, by the config's name."""
    tanh_gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
    table = {
        "silu": torch.nn.functional.silu,
        "swish": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "gelu_new": tanh_gelu,
        "gelu_fast": tanh_gelu,
        "gelu_pytorch_tanh": tanh_gelu,
        "relu": torch.nn.functional.relu,
    }
    name = str(getattr(model.cfg, "act_fn", "silu"))
    if name not in table:
        raise ValueError(f"the MLP activation {name!r} is not supported by the DAG's drive (supported: {sorted(table)})")
    return table[name]


def _with_derivative(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn(x)` and `fn'(x)` elementwise."""
    with torch.enable_grad():
        t = x.detach().clone().requires_grad_(True)
        y = fn(t)
        (grad,) = torch.autograd.grad(y.sum(), t)
    return y.detach(), grad.detach()


@torch.no_grad()
def neuron_keys(
    model: Any,
    resid_mid: Float[torch.Tensor, "d_model"],
    ln2_scale: float | torch.Tensor,
    layer: int,
    neurons: Int[torch.Tensor, "n"],
) -> Float[torch.Tensor, "n d_model"]:
    """`∇_x m_k` of FFN neurons `neurons` of `layer` at `x = resid_mid`, the `ln2` scale frozen.

    The direction a vector added to the residual stream must have to raise each
    neuron's coefficient score, to first order (see the module docstring).
    """
    bridge = model.bridge
    # One block's weights: the bridge's stacked W_in / W_gate rebuild every layer per access.
    mlp = bridge.blocks[int(layer)].mlp
    W_in_l, W_gate_l = mlp.W_in.detach(), getattr(mlp, "W_gate", None)
    gain = pre_norm_gain(model, layer, "ln2")  # an unfolded pre-MLP norm (Phi-3) scales the key rows
    if gain is not None:
        W_in_l = W_in_l.float() * gain.to(W_in_l.device)[:, None]
        W_gate_l = None if W_gate_l is None else W_gate_l.detach().float() * gain.to(W_in_l.device)[:, None]
    dev = W_in_l.device
    neurons = neurons.to(dev)
    sigma = torch.as_tensor(ln2_scale, dtype=torch.float32, device=dev).reshape(())
    x = resid_mid.to(dev, torch.float32)
    centred = str(model.cfg.normalization_type).startswith("LN")
    if centred:
        x = x - x.mean()
    x_hat = x / sigma
    W_in = W_in_l[:, neurons].float()  # [d_model, n]
    b_in = getattr(bridge, "b_in", None)
    u = x_hat @ W_in + (b_in[layer, neurons].float() if b_in is not None else 0.0)
    act = _activation(model)
    if W_gate_l is not None:
        W_gate = W_gate_l.detach()[:, neurons].float()
        a_g, da_g = _with_derivative(act, x_hat @ W_gate)
        key = (da_g * u * W_gate + a_g * W_in) / sigma
    else:
        _, da_u = _with_derivative(act, u)
        key = da_u * W_in / sigma
    if centred:  # x̂ = (x − mean x)/σ: the Jacobian projects out the mean
        key = key - key.mean(0, keepdim=True)
    return einops.rearrange(key, "d n -> n d")



# ---------------------------------------------------------------------------- attention-carried subvalues
def position_hooks(model: Any) -> set[str]:
    """The hooks [`position_activations`][arithlens.cna.drive.position_activations] reads (at every position)."""
    return {h for L in range(model.n_layers) for h in (names.post(L), names.ln1_scale(L), names.pattern(L))}


def position_activations(model: Any, cache: DatasetCache) -> dict[str, torch.Tensor]:
    """Every-position activations of the cache's one prompt, stacked over layers.

    Returns `post` `[layer, pos, d_mlp]` (coefficient scores), `ln1` `[layer, pos]` (the
    attention input norm's scale) and `attn` `[layer, head, pos]` (the last query's
    attention pattern row).
    """
    L = range(model.n_layers)
    post = torch.stack([cache.per_position(names.post(l_))[0].float() for l_ in L])
    ln1 = torch.stack([cache.per_position(names.ln1_scale(l_))[0].float().reshape(-1) for l_ in L])
    attn = torch.stack([cache.last(names.pattern(l_))[0].float() for l_ in L])
    return {"post": post, "ln1": ln1, "attn": attn}


def root_key(model: Any, cache: DatasetCache, root: tuple[int, int]) -> Float[torch.Tensor, "d_model"]:
    """`∇_x m_root` at the root's activation (last position of the cache's case 0)."""
    lr, r = root
    resid_mid = cache.last(names.resid_mid(lr))[0].float()
    ln2 = cache.last(names.ln2_scale(lr))[0].reshape(-1)[0]
    return neuron_keys(model, resid_mid, ln2, lr, torch.tensor([r]))[0].cpu()


@torch.no_grad()
def shallow_scores(
    model: Any, pos_acts: dict[str, torch.Tensor], key: torch.Tensor, root_layer: int, layers: list[int]
) -> Float[torch.Tensor, "layer pos d_mlp"]:
    """Feature-enhancing score of every shallow neuron at every earlier position (module docstring)."""
    dev = model.device
    W_out = model.bridge.W_out.detach().float()
    n_pos = pos_acts["post"].shape[1] - 1  # earlier positions only
    key = key.to(dev)
    # E[l'][p] = Σ_h A[l',h,last,p]/σ1[l',p] · W_V W_O key: each attention layer's carried direction.
    E = torch.zeros(model.n_layers, n_pos, model.d_model, device=dev)
    for lp in range(root_layer + 1):
        W_V, W_O = head_ov(model, lp)
        e = einops.einsum(W_V, W_O, key, "head m dh, head dh n, n -> head m")
        weight = pos_acts["attn"][lp, :, :n_pos].to(dev) / pos_acts["ln1"][lp, :n_pos].to(dev)  # [head, pos]
        E[lp] = einops.einsum(weight, e, "head pos, head m -> pos m")
    out = torch.zeros(len(layers), n_pos, model.d_mlp)
    for i, layer in enumerate(layers):
        carried = E[layer + 1 : root_layer + 1].sum(0)  # attention layers after this FFN
        out[i] = (pos_acts["post"][layer, :n_pos].to(dev) * (carried @ W_out[layer].T)).cpu()
    return out


@torch.no_grad()
def transformed_vector(
    model: Any, pos_acts: dict[str, torch.Tensor], layer: int, neuron: int, position: int, root_layer: int
) -> Float[torch.Tensor, "d_model"]:
    """`T(l, k, p)`: the neuron's subvalue carried to the last position by attention layers `l+1 … l_root`."""
    fc2 = model.bridge.blocks[layer].mlp.W_out[neuron].detach().float()
    total = torch.zeros(model.d_model, device=fc2.device)
    for lp in range(layer + 1, root_layer + 1):
        W_V, W_O = head_ov(model, lp)
        heads = einops.einsum(fc2, W_V, W_O, "m, head m dh, head dh n -> head n")
        weight = pos_acts["attn"][lp, :, position].to(fc2) / pos_acts["ln1"][lp, position].to(fc2)
        total += einops.einsum(weight, heads, "head, head n -> n")
    return total * float(pos_acts["post"][layer, position, neuron])
