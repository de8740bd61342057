"""The one residual → logits readout every analysis uses.

Two readouts, both with the model's own unembedding bias `b_U`:

* **Frozen-scale** ([`frozen_logits`][arithlens.core.readout.frozen_logits]):
  `logits(v) = (v / σ) W_U + b_U` (soft-capped, `c · tanh(· / c)`, on models that cap their
  logits: Gemma 2), with the final norm's scale `σ` frozen at the value of
  a forward pass (the reference code's `final_var`; `DatasetCache.final_scale`).
  The final norm's weight is in `W_U` / `b_U` (folded by compatibility mode on LayerNorm
  models, with the bias, the unembedding left uncentred; applied here as a gain on RMSNorm models, which
  arithlens wraps unprocessed), so at `σ` of the same pass this is exactly the model's own
  readout of the final residual — and it is linear in `v`, which is what makes adding one
  neuron's or head's vector to a residual (CNA §4.1, the VO transform, the logic chain)
   a cheap, exact computation.
* **Top tokens of a direction** ([`top_token_ids`][arithlens.core.readout.top_token_ids]): the
  model's final norm applied to each vector, then `W_U` and `b_U`, through
  TransformerLens's `logit_readout` (Table 4's and Table 7's token lists). For RMSNorm
  the norm does not change the ranking; for LayerNorm (GPT-2 style, `b_U ≠ 0` after
  folding) it does, and this is the ranking the model itself would produce.

Example:
    ```python
    import arithlens
    from arithlens.core import readout

    model = arithlens.load_model()
    cache = model.cache(["3+5="], names=["blocks.29.hook_resid_post"])
    x = cache.last("blocks.29.hook_resid_post")
    readout.frozen_logits(model, x, cache.final_scale).argmax(-1)   # the model's prediction
    readout.top_tokens(model, model.bridge.W_out[20, :3], k=5)        # three neurons' top tokens
    ```
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int

from arithlens.core import validate
from arithlens.core.blocks import final_gain


class Readout:
    """`W_U` and `b_U` in float32 on the model's device, for repeated frozen-scale readouts.

    On a model with final-logit soft-capping (Gemma 2) `logits` applies it,
    `c · tanh(raw / c)`; `raw` is the linear part before the cap.
    """

    def __init__(self, model: Any):
        W_U = model.bridge.W_U.detach().float()
        gain = final_gain(model)  # an unfolded final norm (OLMo 2): its gain joins W_U here
        self.W_U: Float[torch.Tensor, "d_model vocab"] = W_U if gain is None else gain.to(W_U.device)[:, None] * W_U
        self.b_U: Float[torch.Tensor, "vocab"] = model.bridge.b_U.detach().float()
        self.device = self.W_U.device
        self.cap: float | None = model.writes.softcap

    def raw(self, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."]) -> Float[torch.Tensor, "... vocab"]:
        """`(v / scale) @ W_U + b_U`: the logits before any soft-capping (linear in `v`)."""
        v = v.to(self.device, torch.float32)
        return (v / scale.to(self.device, torch.float32)[..., None]) @ self.W_U + self.b_U

    def capped(self, raw: Float[torch.Tensor, "... vocab"]) -> Float[torch.Tensor, "... vocab"]:
        """The model's soft-capping applied to raw logits (identity without one)."""
        return raw if self.cap is None else self.cap * torch.tanh(raw / self.cap)

    def cap_slope(self, logits: Float[torch.Tensor, "... vocab"]) -> Float[torch.Tensor, "... vocab"] | None:
        """`d logits / d raw` at capped `logits` (`None` without soft-capping: the slope is 1)."""
        return None if self.cap is None else 1.0 - (logits / self.cap) ** 2

    def logits(
        self, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."]
    ) -> Float[torch.Tensor, "... vocab"]:
        """The model's logits of `v` with the final norm's scale frozen: `(v / scale) @ W_U + b_U`, soft-capped when the model caps."""
        return self.capped(self.raw(v, scale))

    def logprob(
        self, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."], w: Int[torch.Tensor, "..."]
    ) -> Float[torch.Tensor, "..."]:
        """`log p(w | v)` under the frozen-scale readout."""
        logits = self.logits(v, scale)
        return logits.gather(-1, w.to(self.device)[..., None])[..., 0] - logits.logsumexp(-1)


def frozen_logits(
    model: Any, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."]
) -> Float[torch.Tensor, "... vocab"]:
    """`(v / σ) W_U + b_U`: the model's readout with the final norm's scale frozen at `scale`."""
    return Readout(model).logits(v, scale)


def frozen_logprob(
    model: Any, v: Float[torch.Tensor, "... d_model"], scale: Float[torch.Tensor, "..."], w: Int[torch.Tensor, "..."]
) -> Float[torch.Tensor, "..."]:
    """`log p(w | v)` under [`frozen_logits`][arithlens.core.readout.frozen_logits]."""
    return Readout(model).logprob(v, scale, w)


@torch.no_grad()
def top_token_ids(
    model: Any,
    vectors: Float[torch.Tensor, "n d_model"],
    k: int = 10,
    *,
    largest: bool = True,
    chunk_size: int = 256,
) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
    """Logits and ids of the `k` highest (`largest=False`: lowest) tokens of each vector.

    The vectors go through the model's final norm, `W_U` and `b_U`
    (TransformerLens's `logit_readout`), in chunks of `chunk_size` rows.
    """
    from transformer_lens.tools.analysis.logit_lens import logit_readout

    k = validate.integer(k, "k", low=1, high=model.d_vocab)
    chunk_size = validate.positive_int(chunk_size, "chunk_size")
    if vectors.ndim != 2 or vectors.shape[-1] != model.d_model:
        raise ValueError(f"vectors must be [n, d_model={model.d_model}], got shape {tuple(vectors.shape)}")
    vecs = vectors.detach().to(model.device, model.bridge.W_U.dtype)
    values, ids = [], []
    for start in range(0, vecs.shape[0], chunk_size):
        chunk = vecs[start : start + chunk_size]
        if largest:
            out = logit_readout(model.bridge, chunk, top_k=k, chunk_size=chunk_size)
            values.append(out.values.float().cpu())
            ids.append(out.top_ids.cpu())
        else:
            logits = logit_readout(model.bridge, chunk, chunk_size=chunk_size).values
            low = torch.topk(logits, k, dim=-1, largest=False, sorted=True)
            values.append(low.values.float().cpu())
            ids.append(low.indices.cpu())
    if not values:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(ids)


def top_tokens(model: Any, vectors: Float[torch.Tensor, "n d_model"], k: int = 10, *, largest: bool = True) -> list[list[str]]:
    """Decoded top-`k` (or bottom-`k`) tokens of each vector."""
    _, ids = top_token_ids(model, vectors, k, largest=largest)
    return [model.token_strs(row) for row in ids.tolist()]
