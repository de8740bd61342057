"""MLP unembedding probe — Zhang et al. (ICML 2024) §4.2 (pattern analysis of MLPs).

At the END position of every prompt and for every layer, the residual entering the MLP
(``MLP_in`` = ``blocks.L.hook_resid_mid``), the MLP's output (``MLP_out`` =
``blocks.L.hook_mlp_out``) and their normalised difference are compared with the
unembedding vectors of operand A, operand B and the answer C:

    cos(MLP_in, W_U[t]),   cos(MLP_out, W_U[t]),
    (MLP_out - MLP_in) / ||MLP_out - MLP_in|| . W_U[t] / ||W_U[t]||,    t in {A, B, C}

averaged over prompts. ``A`` / ``B`` is the first token of the operand as the tokenizer
gives it in the prompt (SmolLM2: the first digit; the bare ``' '`` is skipped), ``C`` the
case's target (first answer token; the prediction where a prompt has none). ``W_U`` is
the bridge's unembedding (compatibility mode folds the final norm's weight into it and
centres it over the vocabulary, so each ``W_U[t]`` is the direction that raises ``t``'s
logit relative to the average token).

Example::

    import arithlens
    from arithlens import data
    from arithlens.circuits import MLPProbe

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+", digits=2, templates=[3],
                            forms=["numeral"], n_per_op=20)
    result = MLPProbe().run(model, cases)
    result.df; result.plot()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import pandas as pd
import torch
import torch.nn.functional as F

from arithlens.circuits.end_attention import ROLES, role_masks
from arithlens.results import Result

QUANTITIES = ("mlp_in", "mlp_out", "mlp_diff")
TOKENS = ("A", "B", "C")


@dataclass
class MLPProbeResult(Result):
    """Cosine similarities per layer.

    Attributes:
        df: One row per (layer, quantity, token): ``layer, quantity`` (``mlp_in``,
            ``mlp_out``, ``mlp_diff``), ``token`` (A, B, C), ``cosine`` (mean over
            prompts), ``n``.
        per_case: ``[case, layer, quantity, token]`` cosines.
    """

    per_case: torch.Tensor = field(default=None, repr=False)

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        return px.line(
            self.df,
            x="layer",
            y="cosine",
            color="token",
            facet_col="quantity",
            markers=True,
            category_orders={"quantity": list(QUANTITIES), "token": list(TOKENS)},
            title="MLP unembedding probe: cosine with W_U of operand A, operand B, answer C (END position)",
            **kwargs,
        )


class MLPProbe:
    """Cosine of MLP inputs / outputs with the unembedding of A, B and C, per layer.

    Args:
        layers: Layers to probe (default all).
    """

    def __init__(self, layers: Sequence[int] | None = None):
        self.layers = layers

    @torch.no_grad()
    def run(self, model: Any, data: Any) -> MLPProbeResult:
        """Cosine of MLP_in, MLP_out and their normalised difference with W_U[A], W_U[B], W_U[C], per layer."""
        from arithlens.models import load_model

        model = load_model(model)
        layers = list(range(model.n_layers)) if self.layers is None else [model.check_layer(int(L)) for L in self.layers]
        if not layers:
            raise ValueError("no layers to probe: layers is empty")
        ids, masks = role_masks(model, data)
        items = data.cases if hasattr(data, "counterfactual_ids") else data
        names = [f"blocks.{L}.hook_resid_mid" for L in layers] + [f"blocks.{L}.hook_mlp_out" for L in layers]
        run = model.run(items if not isinstance(items, str) else [items], names=names)
        # First token of each operand in the prompt (its first non-"other" position).
        tok = torch.empty(len(ids), 3, dtype=torch.long)
        for i, (seq, mask) in enumerate(zip(ids, masks)):
            for j, role in enumerate(("A", "B")):
                pos = mask[:, ROLES.index(role)].nonzero()
                if not len(pos):
                    raise ValueError(f"operand {role} has no token in {model.decode(seq)!r}")
                tok[i, j] = seq[int(pos[0])]
        tok[:, 2] = run.scoring_ids
        W_U = model.bridge.W_U.detach().float().cpu()  # [d_model, vocab]
        w = einops.rearrange(W_U[:, tok], "d case t -> case t d")
        w = F.normalize(w, dim=-1)
        mlp_in = torch.stack([run.last[f"blocks.{L}.hook_resid_mid"] for L in layers], 1)  # [case, layer, d]
        mlp_out = torch.stack([run.last[f"blocks.{L}.hook_mlp_out"] for L in layers], 1)
        q = torch.stack([mlp_in, mlp_out, mlp_out - mlp_in], 2)  # [case, layer, quantity, d]
        q = F.normalize(q, dim=-1)
        per_case = einops.einsum(q, w, "c l q d, c t d -> c l q t")
        mean = per_case.mean(0)
        df = pd.DataFrame(
            [
                {"layer": L, "quantity": qn, "token": tn, "cosine": float(mean[i, j, k]), "n": len(ids)}
                for i, L in enumerate(layers)
                for j, qn in enumerate(QUANTITIES)
                for k, tn in enumerate(TOKENS)
            ]
        )
        return MLPProbeResult(df=df, per_case=per_case)
