"""The parameters of a component: a head's slices of the attention projections, an MLP's matrices.

Precise SFT (Zhang et al., ICML 2024, §4.3) trains only the key components. A head's
parameters are its rows of `q_proj`, its KV group's rows of `k_proj` / `v_proj` (shared by
the group on GQA models) and its columns of `o_proj`; an MLP's are all of `gate_proj`,
`up_proj` and `down_proj` (and biases). [`component_masks`][arithlens.circuits.components.component_masks]
returns them as 0/1 masks over the bridge's parameters, for gradient masking.

Example:
    ```python
    from arithlens.circuits.components import component_masks, n_params
    from arithlens.core.names import Component
    from arithlens.testing import tiny_llama

    model = tiny_llama()
    masks = component_masks(model, model.bridge, [Component(1, 3), Component(2)])
    n_params(masks)          # trainable entries of head 1.3 and MLP 2
    ```
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from arithlens.core.names import parse_components

_ATTN = re.compile(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)$")
_MLP = re.compile(r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)$")


def canonical_name(name: str) -> str:
    return name.replace("._original_component", "")


def component_masks(model: Any, bridge: torch.nn.Module, nodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """0/1 gradient masks `{parameter name: mask}` selecting the parameters of `nodes`.

    Raises:
        ValueError: The model has no Llama-style projection modules for a node.
    """
    nodes = [nd.check(model) for nd in parse_components(list(nodes), "nodes")]
    n_heads, n_kv, d_head = model.n_heads, model.n_kv_heads, model.d_head
    group = n_heads // n_kv
    params = dict(bridge.named_parameters())
    by_layer: dict[int, dict[str, tuple[str, str]]] = {}
    for name in params:
        c = canonical_name(name)
        for pattern, kind in ((_ATTN, "attn"), (_MLP, "mlp")):
            m = pattern.search(c)
            if m:
                by_layer.setdefault(int(m.group(1)), {})[f"{kind}.{m.group(2)}.{m.group(3)}"] = (name, m.group(3))
    masks: dict[str, torch.Tensor] = {}

    def mask_of(name: str) -> torch.Tensor:
        if name not in masks:
            masks[name] = torch.zeros_like(params[name], dtype=torch.bool)
        return masks[name]

    for nd in nodes:
        L, h = nd.layer, nd.head
        found = by_layer.get(L, {})
        if nd.is_mlp:
            keys = [k for k in found if k.startswith("mlp.")]
            if not keys:
                raise ValueError(f"layer {L} has no gate/up/down_proj parameters: precise SFT needs a Llama-style MLP")
            for k in keys:
                mask_of(found[k][0])[...] = True
            continue
        g = h // group
        for proj, index in (("q", h), ("k", g), ("v", g), ("o", h)):
            for kind in ("weight", "bias"):
                key = f"attn.{proj}.{kind}"
                if key not in found:
                    if kind == "weight":
                        raise ValueError(f"layer {L} has no {proj}_proj weight: precise SFT needs Llama-style attention")
                    continue
                rows = slice(index * d_head, (index + 1) * d_head)
                mask = mask_of(found[key][0])
                if proj == "o" and kind == "weight":
                    mask[:, rows] = True  # o_proj is [d_model, heads*d_head]: a head owns columns
                elif proj != "o":
                    mask[rows] = True  # q/k/v_proj are [heads*d_head, d_model]: a head owns rows
    return masks


def n_params(masks: dict[str, torch.Tensor]) -> int:
    """Number of trainable entries selected by gradient masks."""
    return int(sum(int(m.sum()) for m in masks.values()))
