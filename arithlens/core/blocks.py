"""How a block writes to the residual stream: the one place that knows it.

The papers' formulas add a component's vector to the residual stream as it is: a neuron's
subvalue `m_k · fc2_k` (CNA §4.1), a head's output `z_h W_O[h]`. Model families differ in
what the block really adds, and [`block_writes`][arithlens.core.blocks.block_writes] reads
the difference off the TransformerLens bridge (its modules and hooks, not a list of model
names):

| family | attention → residual | MLP → residual | residual a neuron is added to | final logits |
|---|---|---|---|---|
| Llama, Qwen 2/3, Mistral, Phi-3, GPT-2 | `z W_O` | `m W_out` | `resid_mid` | `(x/σ) W_U + b_U` |
| GPT-NeoX / Pythia (parallel) | `z W_O` | `m W_out` | `resid_pre + attn_out` of the layer | `(x/σ) W_U + b_U` |
| Gemma 3, OLMo 2 (post-norms) | `g₁ ⊙ (z W_O) / s₁` | `g₂ ⊙ (m W_out) / s₂` | `resid_mid` | `(x/σ) W_U + b_U` |
| Gemma 2 (post-norms, soft-capping) | `g₁ ⊙ (z W_O) / s₁` | `g₂ ⊙ (m W_out) / s₂` | `resid_mid` | `c · tanh(((x/σ) W_U + b_U) / c)` |

Through a post-norm a component's vector passes the norm with the **scale of the whole
sublayer output at that position frozen** (`s₁`, `s₂`: the norms' `hook_scale` of the same
forward pass) and the norm's gain `g` applied — linear, like the final norm's frozen `σ`
in the paper's formula. The sum of every head's (or neuron's) vector so read is exactly
what the model adds. The gain `g` is measured on the norm module itself (it is `1 + w` on
Gemma, `w` on OLMo 2), so no family's weight convention is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from jaxtyping import Float

from arithlens.core import names

# A norm applied to c·1 returns c·g / sqrt(c² + eps): with c this large the eps is below
# float32 resolution, so the output is the gain itself.
_PROBE = 1e4


@dataclass(frozen=True)
class BlockWrites:
    """What the model's blocks add to the residual stream (see the module docstring).

    Attributes:
        family: The Hugging Face architecture (for messages).
        parallel: Attention and MLP both read the block's input residual (GPT-NeoX);
            there is no `resid_mid` between them.
        attn_post_norm: The attention output passes a norm before it is added.
        mlp_post_norm: The MLP output passes a norm before it is added.
        softcap: The final logits are soft-capped `c · tanh(logits / c)` (Gemma 2), else `None`.
    """

    family: str
    parallel: bool
    attn_post_norm: bool
    mlp_post_norm: bool
    softcap: float | None

    @property
    def plain(self) -> bool:
        """The paper's block: sublayer outputs added as they are, sequentially, no soft-capping."""
        return not (self.parallel or self.attn_post_norm or self.mlp_post_norm or self.softcap)

    def describe(self) -> str:
        """One phrase for messages: what sets this family apart."""
        parts = [p for p, on in (("parallel attention and MLP", self.parallel),
                                 ("post-sublayer norms", self.attn_post_norm or self.mlp_post_norm),
                                 ("logit soft-capping", bool(self.softcap))) if on]  # fmt: skip
        return f"{self.family} ({', '.join(parts) or 'sequential, no post-norms'})"

    def refuse(self, analysis: str, reason: str, *, parallel: bool = True, post_norm: bool = True, softcap: bool = True) -> None:
        """`ValueError` when this family has a feature `analysis` cannot handle (before any work)."""
        hits = (parallel and self.parallel) or (post_norm and (self.attn_post_norm or self.mlp_post_norm)) or (softcap and bool(self.softcap))
        if hits:
            raise ValueError(f"{analysis} is not defined for {self.describe()}: {reason}")


def block_writes(model: Any) -> BlockWrites:
    """The [`BlockWrites`][arithlens.core.blocks.BlockWrites] of a [`LensModel`][arithlens.core.model.LensModel], read off its
    bridge (`LensModel.writes` keeps it)."""
    bridge = model.bridge
    hooks = bridge.hook_dict
    block = bridge.blocks[0]
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    family = (getattr(config, "architectures", None) or [type(getattr(bridge, "original_model", bridge)).__name__])[0]
    return BlockWrites(
        family=str(family),
        parallel=names.resid_mid(0) not in hooks,
        attn_post_norm=hasattr(block, "ln1_post") and names.attn_post_scale(0) in hooks,
        mlp_post_norm=hasattr(block, "ln2_post") and names.mlp_post_scale(0) in hooks,
        softcap=cap if cap > 0 else None,
    )


def mlp_base_hooks(model: Any, layer: int) -> set[str]:
    """The hooks whose sum is the residual a neuron of `layer` is added to."""
    if model.writes.parallel:
        return {names.resid_pre(layer), names.attn_out(layer)}
    return {names.resid_mid(layer)}


def mlp_base(model: Any, read: Callable[[str], torch.Tensor], layer: int) -> torch.Tensor:
    """The residual a neuron of `layer` is added to, from `read(hook_name)`."""
    if model.writes.parallel:
        return read(names.resid_pre(layer)) + read(names.attn_out(layer))
    return read(names.resid_mid(layer))


def write_scale_hooks(model: Any, layers: Any) -> set[str]:
    """The post-norm scale hooks of `layers` (none for families without post-norms)."""
    bw = model.writes
    out: set[str] = set()
    for L in layers:
        if bw.attn_post_norm:
            out.add(names.attn_post_scale(int(L)))
        if bw.mlp_post_norm:
            out.add(names.mlp_post_scale(int(L)))
    return out


@torch.no_grad()
def _gain(norm: torch.nn.Module, d_model: int, like: torch.Tensor) -> Float[torch.Tensor, "d_model"]:
    probe = torch.full((1, 1, d_model), _PROBE, dtype=torch.float32, device=like.device)
    out = norm(probe.to(like.dtype)).float()[0, 0]
    return out


def _rms(model: Any) -> bool:
    return str(getattr(model.cfg, "normalization_type", "RMS")).startswith("RMS")


def layer_norms_folded(bridge: Any) -> bool:
    """Whether a bridge is in the state the readouts here assume: in compatibility mode, and on
    a LayerNorm model with its norms folded into the next weights (the final norm left as
    gain 1, bias 0). RMSNorm models qualify unprocessed: their gains are read off the modules."""
    if not getattr(bridge, "compatibility_mode", False):
        return False
    if str(getattr(bridge.cfg, "normalization_type", "RMS")).startswith("RMS"):
        return True
    w, b = getattr(bridge.ln_final, "w", None), getattr(bridge.ln_final, "b", None)
    return (w is None or bool((w == 1).all())) and (b is None or bool((b == 0).all()))


def final_gain(model: Any) -> Float[torch.Tensor, "d_model"] | None:
    """The final norm's gain where it is not folded into `W_U` (RMSNorm models, which arithlens
    wraps unprocessed), else `None` (a LayerNorm, folded by compatibility mode, or a gain of ones)."""
    if not _rms(model):
        return None
    gain = _gain(model.bridge.ln_final, model.d_model, model.bridge.W_U)
    return None if torch.allclose(gain, torch.ones_like(gain)) else gain


def pre_norm_gain(model: Any, layer: int, which: str) -> Float[torch.Tensor, "d_model"] | None:
    """Block `layer`'s pre-attention (`which="ln1"`) or pre-MLP (`"ln2"`) norm gain where it is
    not folded into the next weights (RMSNorm models), else `None` (a LayerNorm, folded; absent, as in OLMo 2; or ones)."""
    norm = getattr(model.bridge.blocks[int(layer)], which, None)
    if norm is None or not _rms(model):
        return None
    gain = _gain(norm, model.d_model, model.bridge.W_U)
    return None if torch.allclose(gain, torch.ones_like(gain)) else gain


def mlp_gain(model: Any, layer: int) -> Float[torch.Tensor, "d_model"] | None:
    """The post-MLP norm's gain `g₂` of `layer` (float32), or `None` without a post-norm."""
    if not model.writes.mlp_post_norm:
        return None
    W = model.bridge.blocks[int(layer)].mlp.W_out
    return _gain(model.bridge.blocks[int(layer)].ln2_post, model.d_model, W)


def attn_gain(model: Any, layer: int) -> Float[torch.Tensor, "d_model"] | None:
    """The post-attention norm's gain `g₁` of `layer` (float32), or `None` without a post-norm."""
    if not model.writes.attn_post_norm:
        return None
    W = model.bridge.W_O
    return _gain(model.bridge.blocks[int(layer)].ln1_post, model.d_model, W)
