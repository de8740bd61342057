"""END-position attention of key heads — Zhang et al. (ICML 2024) §4.2 (pattern analysis).

For each key head the attention pattern `A` (`blocks.L.attn.hook_pattern`, per query
head) is read on the reference prompts; its last row `A^END` (query = END, the last
prompt token) is split by key-token role and averaged over prompts:

    attention[role] = mean over prompts of  sum_{j : role(j) = role} A^END_j

Roles come from the tokenizer ([`token_roles`][arithlens.circuits.operands.token_roles]):
tokens overlapping operand A, operand B or the operator word (an operand may span several
tokens, e.g. SmolLM2's one token per digit), and `other` for everything else — including
SmolLM2's bare `' '` token before a number. The four values of a head sum to 1. The paper
reads a head's character off its largest role (operand heads, operator heads).

The patterns are read off the clean cache at the last position (`cache.last`), so one
`model.cache(cases, names=[EndAttention(...), MLPProbe()])` serves both §4.2 analyses.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import EndAttention, MLPProbe

    model = arithlens.load_model()
    cases = data.zhang(model.tokenizer, n_per_op=20)
    attention, probe = EndAttention(heads=["19.3", "21.0"]), MLPProbe()
    cache = model.cache(cases, names=[attention, probe])     # one forward pass
    attention.run(model, cases, cache=cache).table()          # head x role
    probe.run(model, cases, cache=cache).plot()
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float

from arithlens.core import names, validate
from arithlens.core.cache import DatasetCache
from arithlens.core.names import parse_components, top_components
from arithlens.circuits.operands import ROLES, role_masks
from arithlens.data import as_dataset
from arithlens.core.names import Component
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.loading import load_model

if TYPE_CHECKING:
    from arithlens.core.model import LensModel


@dataclass
class EndAttentionResult(Result):
    """Attention from END to each token role.

    Attributes:
        df: One row per (head, role): `layer, head, head_label, role, attention` (mean
            over prompts), `n` (prompts).
        per_case: `[head, case, role]` attention sums.
        heads: The heads, in the order of `per_case`.
    """

    per_case: Float[torch.Tensor, "head case role"] = field(default=None, repr=False)
    heads: list[Component] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """Mean attention with one row per head (`layer.head`) and one column per role."""
        wide = self.df.pivot(index="head_label", columns="role", values="attention")
        return wide.reindex(index=[h.name for h in self.heads], columns=list(ROLES))

    def plot(self, **kwargs: Any) -> Any:
        """Grouped bars: each head's END attention to A, B, the operator and other tokens."""
        import plotly.express as px

        return px.bar(
            self.df,
            x="head_label",
            y="attention",
            color="role",
            barmode="group",
            range_y=[0, 1],
            category_orders={"role": list(ROLES), "head_label": [h.name for h in self.heads]},
            labels={"head_label": "head (layer.head)", "attention": "mean attention from END", "role": "key token"},
            title="Attention from the END position to operands, operator and other tokens",
            **kwargs,
        )


@dataclass(frozen=True, kw_only=True)
class EndAttention(Analysis):
    """Average END-row attention of key heads, by token role.

    Args:
        heads: The heads to read ([`Component`][arithlens.core.names.Component]s, `"L.H"` strings or
            `(layer, head)` pairs); or take them from a patching result given to `run`.
        k: Heads taken from a patching result (largest |effect|, heads only).
    """

    heads: Sequence[Any] | None = None
    k: int = 5

    def __post_init__(self) -> None:
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(parse_components(self.heads, "heads", heads_only=True)))
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))

    def hook_names(self, model: "LensModel") -> set[str]:
        """The attention patterns of the heads' layers (every layer while the heads come from patching)."""
        layers = range(model.n_layers) if self.heads is None else {h.layer for h in self.heads}
        return {names.pattern(L) for L in layers}

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, patching: Any | None = None
    ) -> EndAttentionResult:
        """Average END-position attention of the heads to operand A, operand B, the operator and other tokens.

        Args:
            model: The model.
            data: The reference cases (a dataset, counterfactual pairs, prompts or token ids).
            patching: A path-patching result to take the top `k` heads from (when `heads` is not set).
            cache: A clean cache of `data` holding the heads' attention patterns.
        """

        model = load_model(model)
        cases = as_dataset(data, model.tokenizer)
        if self.heads is not None:
            heads = [h.check(model) for h in self.heads]
        elif patching is not None:
            heads = top_components(patching, self.k, heads_only=True)
        else:
            raise ValueError("EndAttention needs heads=[Component(layer, head), ...] or a patching result: run(model, data, patching=...)")
        if not heads:
            raise ValueError("no heads to read: the patching result ranks no attention head")
        masks = role_masks(model.tokenizer, cases)
        model, cases, cache = self.prepare(model, cases, cache, names={names.pattern(h.layer) for h in heads})
        per_case = torch.zeros(len(heads), len(cases), len(ROLES))
        for k, h in enumerate(heads):
            end_rows = cache.last(names.pattern(h.layer))  # [case, head, key], or one [head, key] per case
            for i, mask in enumerate(masks):
                per_case[k, i] = einops.einsum(end_rows[i][h.head].float(), mask, "key, key role -> role")
        validate.check_finite(per_case, "the attention patterns")
        mean = per_case.mean(1)
        df = pd.DataFrame(
            [
                {"layer": h.layer, "head": h.head, "head_label": h.name, "role": role, "attention": float(mean[k, r]), "n": len(cases)}
                for k, h in enumerate(heads)
                for r, role in enumerate(ROLES)
            ]
        )
        return EndAttentionResult(df=df, per_case=per_case, heads=heads)
