"""What CNA reads from a forward pass, and the shared argument checks of the CNA analyses.

[`Activations`][arithlens.cna.inputs.Activations] is a view of an
[`DatasetCache`][arithlens.core.cache.DatasetCache] — nothing is copied — that adds what a
side of a comparison needs on top of the cache: the scored token of each case (`w`) and
the final-norm scale its residual vectors are read with (the cache's own, or the original
side's under `CNAAnalysis(scale="original")`). The score kernels
([`arithlens.cna.scores`][arithlens.cna.scores]) read one layer at a time from it, so no
`[case, layer, …]` stack is ever built.

Neuron labels: the paper writes FFN neuron `k` of layer `l` as `l_k` (Table 4's "28_3696");
[`neuron_label`][arithlens.cna.inputs.neuron_label] makes that label, both indices counted
from 0.

Example:
    ```python
    import arithlens
    from arithlens.cna.inputs import Activations, cna_hooks

    model = arithlens.load_model()
    cache = model.cache(["3+5="], names=cna_hooks(model, range(model.n_layers)))
    acts = Activations(cache, w=cache.predictions)
    acts.at("resid_mid", 20).shape      # [case, d_model]
    ```
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import einops
import torch
from jaxtyping import Float, Int

from arithlens.core import names, validate
from arithlens.core.blocks import mlp_base_hooks, write_scale_hooks
from arithlens.core.cache import DatasetCache
from arithlens.cna.base import TARGETS

_KINDS: dict[str, Callable[[int], str]] = {
    "resid_pre": names.resid_pre,
    "resid_mid": names.resid_mid,
    "attn_out": names.attn_out,
    "mlp_out": names.mlp_out,
    "post": names.post,
    "z": names.z,
    "ln2_scale": names.ln2_scale,
}


def neuron_label(layer: int, neuron: int) -> str:
    """The paper's label of FFN neuron `neuron` of layer `layer`: `"L_N"` (e.g. `"29_545"`)."""
    return f"{int(layer)}_{int(neuron)}"


def neuron_hooks(model: Any, layers: Iterable[int]) -> set[str]:
    """Hooks the neuron scores read: the residual each layer's neurons are added to, their
    coefficient scores, and (post-norm families) the post-MLP norm's scale."""
    layers = [int(L) for L in layers]
    out = {names.post(L) for L in layers} | write_scale_hooks(model, layers)
    for L in layers:
        out |= mlp_base_hooks(model, L)
    return out


def component_hooks(model: Any) -> set[str]:
    """Hooks the head and layer scores read, at every layer."""
    kinds = ("resid_pre", "attn_out", "mlp_out", "z")
    every = range(model.n_layers)
    out = {_KINDS[k](L) for k in kinds for L in every} | write_scale_hooks(model, every)
    for L in every:
        out |= mlp_base_hooks(model, L)
    return out


def cna_hooks(model: Any, layers: Iterable[int]) -> set[str]:
    """Every hook [`NeuronImportance`][arithlens.cna.importance.NeuronImportance] reads."""
    return neuron_hooks(model, layers) | component_hooks(model)


class Activations:
    """One side of a comparison as the score kernels read it: a view of an `DatasetCache`.

    Attributes:
        cache: The forward pass the activations come from.
        w: `[case]` the token each case is scored on.
        scale: `[case]` the final-norm scale residual vectors are divided by (frozen).
    """

    def __init__(
        self,
        cache: DatasetCache,
        w: Int[torch.Tensor, "case"] | None = None,
        scale: Float[torch.Tensor, "case"] | None = None,
    ):
        self.cache = cache
        n = len(cache)
        self.w = einops.rearrange(cache.scoring_ids if w is None else torch.as_tensor(w, dtype=torch.long), "... -> (...)").clone()
        self.scale = einops.rearrange((cache.final_scale if scale is None else torch.as_tensor(scale)).float(), "... -> (...)").clone()
        if len(self.w) != n or len(self.scale) != n:
            raise ValueError(f"w has {len(self.w)} and scale {len(self.scale)} entries but the cache holds {n} cases")
        # An infinite scale means the pass overflowed (e.g. a neuron scaled by 1e30): its
        # activations would give finite but meaningless scores, whichever scale reads them.
        validate.check_finite(cache.final_scale[~torch.isnan(cache.final_scale)], "the forward pass's final-norm scales")
        validate.check_finite(self.scale, "the final-norm scales")
        if bool((self.scale <= 0).any()):
            raise ValueError("a final-norm scale is not positive: the model's final norm has no scale to freeze")

    def __len__(self) -> int:
        return len(self.cache)

    def at(self, kind: str, layer: int) -> torch.Tensor:
        """Last-position activations of one kind (`"resid_mid"`, `"post"`, `"z"`, …) at `layer`, float32.

        Two derived kinds follow [`arithlens.core.blocks`][arithlens.core.blocks]: `"mlp_base"`,
        the residual the layer's neurons are added to (`resid_mid`; `resid_pre + attn_out`
        in a parallel block), and `"write_coef"`, the coefficient scores as the residual
        receives them (`m / s₂`: divided by the post-MLP norm's frozen scale where there is one).
        """
        layer = int(layer)
        if kind == "mlp_base":
            if names.resid_mid(layer) in self.cache.names:
                return self.at("resid_mid", layer)
            return self.at("resid_pre", layer) + self.at("attn_out", layer)
        if kind == "write_coef":
            post = self.at("post", layer)
            scale = names.mlp_post_scale(layer)
            return post if scale not in self.cache.names else post / self._last(scale)[:, None]
        if kind == "attn_write_scale":
            scale = names.attn_post_scale(layer)
            return torch.ones(len(self)) if scale not in self.cache.names else self._last(scale)
        act = self.cache.last(_KINDS[kind](int(layer)))
        if isinstance(act, list):  # pragma: no cover - these hooks never vary in shape with the prompt
            act = torch.stack(act)
        act = act.float()
        return einops.rearrange(act, "c ... -> (c ...)") if kind == "ln2_scale" else act  # [case, 1] → [case]

    def _last(self, hook: str) -> Float[torch.Tensor, "case"]:
        """A `[case, 1]` scale hook at the last position as `[case]`, float32."""
        return einops.rearrange(self.cache.last(hook).float(), "c ... -> (c ...)")

    def stack(self, kind: str, layers: Iterable[int]) -> torch.Tensor:
        """`[case, layer, ...]` activations of one kind over `layers` (copies; prefer `at`)."""
        return torch.stack([self.at(kind, L) for L in layers], dim=1)

    @property
    def predictions(self) -> Int[torch.Tensor, "case"]:
        return self.cache.predictions


TARGET_WORDS = {"prediction": "the model's top prediction", "answer": "the correct answer's token", "given": "given by the caller"}
"""How a result's caption says where its scored token `w` came from (`target`)."""


def scored_tokens(w_str: Sequence[str]) -> str:
    """The scored tokens for a caption: the one token, or how many cases and the first few."""
    distinct = list(dict.fromkeys(w_str))
    if len(distinct) == 1:
        return repr(distinct[0])
    shown = ", ".join(repr(t) for t in distinct[:3])
    return f"one per case ({len(distinct)} distinct: {shown}{', …' if len(distinct) > 3 else ''})"


def choose_w(cache: DatasetCache, target: str) -> Int[torch.Tensor, "case"]:
    """The scored token of each case: the model's prediction, or the case's answer token."""
    validate.choice(target, "target", TARGETS)
    if target == "prediction":
        return cache.predictions.clone()
    missing = (cache.target_ids < 0).nonzero()
    if len(missing):
        raise ValueError(
            f"target='answer' needs every case to have an answer, but case {int(missing[0, 0])} has none; "
            "build cases with answers (arithlens.data) or use target='prediction'"
        )
    return cache.target_ids.clone()


def check_w(w: Any, n_cases: int, model: Any) -> Int[torch.Tensor, "case"]:
    """Fixed scored tokens `w` (one id per case), validated against the vocabulary."""
    ids = validate.int_sequence(w, "w", low=0, high=model.d_vocab - 1)
    if len(ids) != n_cases:
        raise ValueError(f"w has {len(ids)} tokens but there are {n_cases} cases")
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------- argument checks


def check_layers(model: Any, layers: Any) -> list[int]:
    """`layers` (default every layer) as distinct in-range layer indices."""
    if layers is None:
        return list(range(model.n_layers))
    return validate.int_sequence(layers, "layers", low=0, high=model.n_layers - 1, unique=True)


