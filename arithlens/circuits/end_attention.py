"""END-position attention of key heads — Zhang et al. (ICML 2024) §4.2 (pattern analysis).

For each key head the attention pattern ``A`` (``blocks.L.attn.hook_pattern``, per query
head) is read on the reference prompts; its last row ``A^END`` (query = END, the last
prompt token) is split by key-token role and averaged over prompts:

    attention[role] = mean over prompts of  sum_{j : role(j) = role} A^END_j

Roles come from the tokenizer: tokens overlapping operand A, operand B or the operator
word (an operand may span several tokens, e.g. SmolLM2's one token per digit), and
``other`` for everything else — including SmolLM2's bare ``' '`` token before a number.
The four values of a head sum to 1. The paper reads a head's character off its largest
role (operand heads, operator heads).

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import EndAttention

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=20)
    result = EndAttention(heads=[(19, 3), (21, 0)]).run(model, cases)
    result.df; result.plot()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float

from arithlens.circuits.counterfactual import CounterfactualPairs, locate, token_roles
from arithlens.circuits.path_patching import MLP, PathPatchingResult
from arithlens.results import Result

ROLES = ("A", "B", "operator", "other")


def _items(data: Any) -> list[Any]:
    if isinstance(data, CounterfactualPairs):
        return list(data.cases)
    return [data] if isinstance(data, str) else list(data)


def role_masks(model: Any, data: Any) -> tuple[list[tuple[int, ...]], list[torch.Tensor]]:
    """Token ids of each case and its ``[pos, role]`` one-hot role mask (roles: :data:`ROLES`)."""
    ids_all, masks = [], []
    for item in _items(data):
        ids = tuple(model.encode(item)) if isinstance(item, str) else tuple(int(t) for t in item.input_ids)
        roles = token_roles(model.tokenizer, ids, locate(item))
        mask = torch.zeros(len(ids), len(ROLES))
        mask[torch.arange(len(ids)), torch.tensor([ROLES.index(r) for r in roles])] = 1.0
        ids_all.append(ids)
        masks.append(mask)
    return ids_all, masks


@dataclass
class EndAttentionResult(Result):
    """Attention from END to each token role.

    Attributes:
        df: One row per (layer, head, role): ``layer, head, head_label, role,
            attention`` (mean over prompts), ``n``.
        per_case: ``[head, case, role]`` attention sums.
        heads: ``(layer, head)`` of each row of ``per_case``.
    """

    per_case: torch.Tensor = field(default=None, repr=False)
    heads: list[tuple[int, int]] = field(default_factory=list)

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        return px.bar(
            self.df,
            x="head_label",
            y="attention",
            color="role",
            barmode="group",
            range_y=[0, 1],
            category_orders={"role": list(ROLES)},
            labels={"head_label": "head (layer.head)"},
            title="Attention from the END position to operands, operator and other tokens",
            **kwargs,
        )


class EndAttention:
    """Average END-row attention of key heads, by token role.

    Args:
        heads: ``(layer, head)`` pairs; or take them from a patching result.
        top_n: Heads taken from a patching result (largest |effect|, heads only).
    """

    def __init__(self, heads: Sequence[tuple[int, int]] | None = None, top_n: int = 5):
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        self.heads, self.top_n = heads, top_n

    @torch.no_grad()
    def run(self, model: Any, data: Any, patching: PathPatchingResult | None = None) -> EndAttentionResult:
        """Average END-position attention of the key heads to operand A, operand B, the operator and other tokens."""
        from arithlens.models import load_model

        model = load_model(model)
        if self.heads is not None:
            heads = [model.check_head(int(L), int(h)) for L, h in self.heads]
        elif patching is not None:
            heads = [(L, int(h)) for L, h in patching.top(self.top_n, kind="head") if h != MLP]
        else:
            raise ValueError("EndAttention needs heads=[(layer, head), ...] or a patching result")
        if not heads:
            raise ValueError("no heads to read: heads is empty")
        ids, masks = role_masks(model, data)
        per_case = torch.zeros(len(heads), len(ids), len(ROLES))
        layers = sorted({L for L, _ in heads})
        captured: dict[int, torch.Tensor] = {}

        def grab(layer: int):
            def fn(pattern: Float[torch.Tensor, "batch head q k"], hook: Any) -> None:
                captured[layer] = pattern[:, :, -1].detach().float().cpu()  # END query row

            return fn

        with model.hooked([(f"blocks.{L}.attn.hook_pattern", grab(L)) for L in layers]):
            for rows, tokens in model.batches(ids):
                model.bridge(tokens, stop_at_layer=max(layers) + 1)
                mask = torch.stack([masks[i] for i in rows.tolist()])  # [batch, pos, role]
                for k, (L, h) in enumerate(heads):
                    per_case[k, rows] = einops.einsum(captured[L][:, h], mask, "b k, b k r -> b r")
        mean = per_case.mean(1)
        df = pd.DataFrame(
            [
                {"layer": L, "head": h, "head_label": f"{L}.{h}", "role": role, "attention": float(mean[k, r]), "n": len(ids)}
                for k, (L, h) in enumerate(heads)
                for r, role in enumerate(ROLES)
            ]
        )
        return EndAttentionResult(df=df, per_case=per_case, heads=heads)
