"""MLP unembedding probe — Zhang et al. (ICML 2024) §4.2 (pattern analysis of MLPs).

At the END position of every prompt and for every layer, the residual entering the MLP
(`MLP_in` = `blocks.L.hook_resid_mid`), the MLP's output (`MLP_out` =
`blocks.L.hook_mlp_out`) and their normalised difference are compared with the
unembedding vectors of operand A, operand B and the answer C, as the paper does:

    cos(MLP_in, W_U[t]),   cos(MLP_out, W_U[t]),
    (MLP_out - MLP_in) / ||MLP_out - MLP_in|| . W_U[t] / ||W_U[t]||,    t in {A, B, C}

averaged over prompts. `A` / `B` is the first token of the operand as the tokenizer gives
it in the prompt (SmolLM2: the first digit; the bare `' '` is skipped), `C` the case's
target (first answer token; the prediction where a prompt has none). `W_U` is the
unembedding as the readout uses it: the final norm's gain included (folded in by
compatibility mode on LayerNorm models, which arithlens leaves uncentred; applied
by [`Readout`][arithlens.core.readout.Readout] on RMSNorm models), so each `W_U[t]` is the
direction that raises `t`'s logit.

Beside the cosines, each vector's *top tokens* — the tokens it promotes most, in the
spirit of Geva et al. (2022), whom the paper follows — are read with the model's own
readout of a residual vector: final norm, `W_U` and `b_U`
([`readout.top_token_ids`][arithlens.core.readout.top_token_ids]), i.e. what the model would
predict if that vector were the final residual. On GPT-2-style models (`b_U ≠ 0`) this
ranks tokens differently from a raw `v @ W_U`. `in_top_k` is the share of prompts where
A, B or C is among the `k` top tokens.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.circuits import MLPProbe

    model = arithlens.load_model()
    cases = data.zhang(model.tokenizer, n_per_op=20)
    result = MLPProbe(k=10).run(model, cases)
    result.table()                       # cosine per layer x (quantity, token)
    result.top_tokens(20, "mlp_out")     # what layer 20's MLP writes most often
    result.plot()
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import einops
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from arithlens.core import names, readout, validate
from arithlens.core.cache import DatasetCache
from arithlens.circuits.operands import operand_tokens
from arithlens.data import as_dataset
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.blocks import mlp_base, mlp_base_hooks
from arithlens.core.readout import Readout
from arithlens.core.loading import load_model

if TYPE_CHECKING:
    from arithlens.core.model import LensModel

QUANTITIES = ("mlp_in", "mlp_out", "mlp_diff")
TOKENS = ("A", "B", "C")


@dataclass
class MLPProbeResult(Result):
    """Cosine similarities and top tokens per layer.

    Attributes:
        df: One row per (layer, quantity, token): `layer`, `quantity` (`mlp_in`,
            `mlp_out`, `mlp_diff`), `token` (A, B, C), `cosine` (mean over prompts),
            `in_top_k` (share of prompts where the token is among the vector's top `k`), `n`.
        per_case: `[case, layer, quantity, token]` cosines.
        token_ids: `[case, token]` ids of A, B and C.
        top_ids: `[case, layer, quantity, k]` the top tokens of each vector, best first.
        layers: The layers probed.
        token_strs: Decoded text of every token id in `top_ids`.
    """

    per_case: Float[torch.Tensor, "case layer quantity token"] = field(default=None, repr=False)
    token_ids: Int[torch.Tensor, "case token"] = field(default=None, repr=False)
    top_ids: Int[torch.Tensor, "case layer quantity k"] = field(default=None, repr=False)
    layers: list[int] = field(default_factory=list)
    token_strs: dict[int, str] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        """Mean cosine with one row per layer and one column per (quantity, token)."""
        wide = self.df.pivot(index="layer", columns=["quantity", "token"], values="cosine")
        return wide.reindex(columns=pd.MultiIndex.from_product([QUANTITIES, TOKENS]))

    def top_tokens(self, layer: int, quantity: str = "mlp_out", k: int | None = None) -> pd.DataFrame:
        """How often each token is among the top tokens of `quantity` at `layer`, most frequent first.

        Columns: `token_id`, `token`, `n` (prompts), `share`, `mean_rank` (0 = top).
        """
        if layer not in self.layers:
            raise ValueError(f"layer={layer!r} was not probed; probed layers: {self.layers}")
        q = QUANTITIES.index(validate.choice(quantity, "quantity", QUANTITIES))
        k = self.top_ids.shape[-1] if k is None else validate.integer(k, "k", low=1, high=self.top_ids.shape[-1])
        ids = self.top_ids[:, self.layers.index(layer), q, :k]
        rows: dict[int, list[int]] = {}
        for row in ids.tolist():
            for rank, t in enumerate(row):
                rows.setdefault(t, []).append(rank)
        n = ids.shape[0]
        frame = pd.DataFrame(
            [{"token_id": t, "token": self.token_strs.get(t, ""), "n": len(r), "share": len(r) / n, "mean_rank": sum(r) / len(r)} for t, r in rows.items()]
        )
        return frame.sort_values(["n", "mean_rank"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def plot(self, **kwargs: Any) -> Any:
        """Cosine per layer, one panel per quantity, one line per token."""
        import plotly.express as px

        fig = px.line(
            self.df,
            x="layer",
            y="cosine",
            color="token",
            facet_col="quantity",
            markers=True,
            category_orders={"quantity": list(QUANTITIES), "token": list(TOKENS)},
            labels={"layer": "layer", "cosine": "cosine with W_U[token]", "token": "token"},
            title="MLP unembedding probe: cosine with W_U of operand A, operand B, answer C (END position)",
            **kwargs,
        )
        return fig


@dataclass(frozen=True, kw_only=True)
class MLPProbe(Analysis):
    """Cosine of MLP inputs / outputs with the unembedding of A, B and C, and their top tokens, per layer.

    Args:
        layers: Layers to probe (default all).
        k: Top tokens kept per vector (the model's own readout).
    """

    layers: Sequence[int] | None = None
    k: int = 10

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(validate.int_sequence(self.layers, "layers", low=0, unique=True)))
        object.__setattr__(self, "k", validate.positive_int(self.k, "k"))

    def _layers(self, model: "LensModel") -> list[int]:
        if self.layers is None:
            return list(range(model.n_layers))
        return [model.check_layer(L, "layers item") for L in self.layers]

    def hook_names(self, model: "LensModel") -> set[str]:
        """`MLP_in` (the residual the MLP's output is added to: `hook_resid_mid`, or `resid_pre + attn_out`
        in a parallel block) and `MLP_out` (`hook_mlp_out`) of every probed layer."""
        layers = self._layers(model)
        return {h for L in layers for h in mlp_base_hooks(model, L)} | {names.mlp_out(L) for L in layers}

    @torch.no_grad()
    def run(self, model: Any, data: Any, *, cache: DatasetCache | None = None) -> MLPProbeResult:
        """Cosines with W_U[A], W_U[B], W_U[C] and top tokens of MLP_in, MLP_out and their difference, per layer.

        Args:
            model: The model.
            data: The reference cases (a dataset, counterfactual pairs, prompts or token ids).
            cache: A clean cache of `data` holding this probe's hooks (`model.cache(data, names=[probe])`).
        """

        model = load_model(model)
        cases = as_dataset(data, model.tokenizer)
        layers = self._layers(model)
        k = validate.integer(self.k, "k", low=1, high=model.d_vocab)
        tok = torch.empty(len(cases), len(TOKENS), dtype=torch.long)
        tok[:, :2] = operand_tokens(model.tokenizer, cases)
        model, cases, cache = self.prepare(model, cases, cache)
        tok[:, 2] = cache.scoring_ids
        mlp_in = torch.stack([mlp_base(model, cache.last, L) for L in layers], dim=1)  # [case, layer, d_model]
        mlp_out = cache.stack(names.mlp_out, layers)
        q = torch.stack([mlp_in, mlp_out, mlp_out - mlp_in], 2).float()  # [case, layer, quantity, d_model]
        W_U = Readout(model).W_U.cpu()  # [d_model, vocab], the final norm's gain included
        w = F.normalize(einops.rearrange(W_U[:, tok], "d case t -> case t d"), dim=-1)
        per_case = einops.einsum(F.normalize(q, dim=-1), w, "c l q d, c t d -> c l q t")
        validate.check_finite(per_case, "the MLP probe's cosines")
        flat = einops.rearrange(q, "c l q d -> (c l q) d")
        _, top = readout.top_token_ids(model, flat, k)
        top_ids = einops.rearrange(top, "(c l q) k -> c l q k", c=len(cases), l=len(layers))
        hit = (top_ids[:, :, :, None, :] == tok[:, None, None, :, None]).any(-1).float()  # [case, layer, quantity, token]
        mean, share = per_case.mean(0), hit.mean(0)
        df = pd.DataFrame(
            [
                {"layer": L, "quantity": qn, "token": tn, "cosine": float(mean[i, j, t]), "in_top_k": float(share[i, j, t]), "n": len(cases)}
                for i, L in enumerate(layers)
                for j, qn in enumerate(QUANTITIES)
                for t, tn in enumerate(TOKENS)
            ]
        )
        unique = sorted(set(top_ids.reshape(-1).tolist()))
        strs = dict(zip(unique, model.token_strs(unique)))
        return MLPProbeResult(df=df, per_case=per_case, token_ids=tok, top_ids=top_ids, layers=layers, token_strs=strs)
