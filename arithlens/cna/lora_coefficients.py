"""Does LoRA raise the important neurons' coefficients? — Yu & Ananiadou (EMNLP 2024) §5, Tables 9, 10.

[`LoRACoefficients`][arithlens.cna.lora_coefficients.LoRACoefficients] compares the
original model with the single-layer LoRA models of a
[`lora_layer_sweep`][arithlens.cna.lora.lora_layer_sweep] (Figure 2) and asks §5's
question: does LoRA raise the coefficient scores `m_k` of the neurons that matter for the
prediction? Per case, the top-K neurons are ranked and their coefficient-score increase
is, as Table 5's "coef" row is a decrease
([`coef_decrease`][arithlens.cna.mask_keep.coef_decrease]),

    increase = 100 · Σ_k s_k (m'_k − m_k) / Σ_k |m_k|,  s_k = sign(m_k)

(`m` original, `m'` LoRA model). Table 9 lists the top neurons of one case ("3+5=")
with their coefficient in each model; Table 10 averages the increase over cases and
over the LoRA models of each layer range (the paper's 1–9, 10–16, 17–30 of 32 layers,
scaled to the model's depth by [`layer_groups`][arithlens.cna.lora.layer_groups]).

**Which model ranks "the most important neurons"?** §5: "We apply our CNA method on the
original model and five LoRA models analyzing the case 3+5=" — CNA between the original
and each fine-tuned model, so the default, `rank_on="change"`, ranks by CNA's importance
change from the original to the LoRA model. It selects neurons *because* LoRA made them
matter, which biases the measured increase upwards; `rank_on="original"` ranks by the
§4.1 importance in the original model (a set LoRA did not choose) and `rank_on="lora"`
by importance in each LoRA model.

Example:
    ```python
    from arithlens import data
    from arithlens.cna.lora import LoRASettings, lora_layer_sweep
    from arithlens.cna.lora_coefficients import LoRACoefficients
    from arithlens.testing import tiny_llama

    model = tiny_llama()
    sweep = lora_layer_sweep(model, LoRASettings(layers=[1, 2], lrs=[1e-3], steps=3, n_train=24, n_val=6, n_test=8))
    cases = data.arithmetic(model.tokenizer, ops="+", templates=[4], forms=["numeral"]).sample(8)
    coef = LoRACoefficients(ks=(10, 5), groups={"low": [0, 1], "high": [2]}).run(model, cases, loras=sweep)
    coef.table9()    # the top neurons of "3+5=", their coefficient in each model
    coef.table10()   # mean increase (%) per LoRA-layer range (rows) and top-K (columns)
    ```
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import einops
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from arithlens.core import names, validate
from arithlens.cna.lora import LoRALayerSweepResult, group_of, layer_groups, load_lora
from arithlens.cna.mask_keep import coef_decrease
from arithlens.cna.frames import top_mask
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.cache import DatasetCache
from arithlens import data as datasets
from arithlens.cna.importance import NeuronImportance
from arithlens.core.loading import load_model

RANK_ON = ("original", "lora", "change")


@dataclass
class LoRACoefficientsResult(Result):
    """Tables 9 and 10: coefficient scores of the top neurons, original vs LoRA models.

    Attributes:
        df: One row per (LoRA layer, K, case): `lora_layer, group, k, case, prompt,
            coef_increase` (%, see the module docstring), `share_downstream` (fraction of
            the top-K neurons at or above the LoRA layer: the others cannot change).
        neurons: Table 9's rows, tidy: `neuron` ("L_N"), `layer, index, model, lora_layer, coef`.
        ks: The top-K sizes, in the order given.
        rank_on: Which model ranked the neurons (`"original"`, `"lora"`, `"change"`).
    """

    neurons: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    ks: list[int] = field(default_factory=list)
    rank_on: str = "change"

    def table9(self) -> pd.DataFrame:
        """Table 9's layout: one row per neuron, one coefficient column per model."""
        out = self.neurons.pivot_table(index="neuron", columns="model", values="coef", sort=False)
        order = ["original"] + [m for m in self.neurons["model"].drop_duplicates() if m != "original"]
        return out[order].rename_axis(columns=None)

    def table(self) -> pd.DataFrame:
        """Table 10 (see [`table10`][arithlens.cna.lora_coefficients.LoRACoefficientsResult.table10]; Table 9 is [`table9`][arithlens.cna.lora_coefficients.LoRACoefficientsResult.table9])."""
        return self.table10()

    def table10(self) -> pd.DataFrame:
        """Table 10's layout: mean increase (%) per LoRA-layer range (rows) and top-K (columns)."""
        mean = self.df.groupby(["group", "k"], sort=False)["coef_increase"].mean().reset_index()
        out = mean.pivot(index="group", columns="k", values="coef_increase")
        out = out.loc[self.df["group"].drop_duplicates(), self.ks]
        out.columns = [f"top{k}" for k in self.ks]
        return out.rename_axis("LoRA layer")

    def plot(self, **kwargs: Any) -> Any:
        """Mean coefficient-score increase (%) against LoRA layer, one line per top-K."""
        import plotly.graph_objects as go

        mean = self.df.groupby(["k", "lora_layer"])["coef_increase"].mean().reset_index()
        fig = go.Figure()
        for k in self.ks:
            part = mean[mean["k"] == k]
            fig.add_trace(go.Scatter(x=part["lora_layer"], y=part["coef_increase"], mode="lines+markers", name=f"top{k}"))
        fig.add_hline(y=0, line_color="gray")
        fig.update_layout(title=f"Coefficient-score increase of the top neurons (ranked on {self.rank_on})",
                          xaxis_title="LoRA layer", yaxis_title="coefficient-score increase (%)", **kwargs)  # fmt: skip
        return fig


@dataclass(frozen=True, kw_only=True)
class LoRACoefficients(Analysis):
    """Do LoRA models raise the coefficient scores of the important neurons? (Tables 9, 10)

    Args:
        rank_on: `"change"` (default, the paper: CNA, LoRA minus original), `"original"`
            (§4.1 importance in the original model) or `"lora"` (importance in each LoRA model).
        ks: Top-K sizes of Table 10 (the paper's 50, 30, 20, 10).
        target: Scored token: `"answer"` (the correct one, default: LoRA is trained to
            raise it) or `"prediction"` (the original model's top token).
        case: Table 9's prompt; case_answer: its answer (needed with `target="answer"`).
        case_k: Neurons in Table 9.
        groups: LoRA-layer ranges `{label: layers}` (default [`layer_groups`][arithlens.cna.lora.layer_groups]).
        mode: CNA mode, `"exact"` (default, the paper) or `"fast"` (first order, the top
            candidates re-scored exactly).
        batch_size: Cases per forward pass.
        progress: Progress bars.
    """

    rank_on: str = "change"
    ks: Sequence[int] = (50, 30, 20, 10)
    target: str = "answer"
    case: str = "3+5="
    case_answer: str | None = "8"
    case_k: int = 3
    groups: Mapping[str, Sequence[int]] | None = None
    mode: str = "exact"
    batch_size: int | None = None
    progress: bool = False

    @classmethod
    def paper(cls, **changes: Any) -> "LoRACoefficients":
        """Tables 9–10's setup: CNA between the original and each LoRA model (`rank_on="change"`),
        exact, top 50/30/20/10, Table 9 on "3+5=" → 8, the paper's layer ranges (scaled)."""
        base = {"rank_on": "change", "ks": (50, 30, 20, 10), "case": "3+5=", "case_answer": "8", "mode": "exact", "groups": None}
        return cls(**{**base, **changes})

    def __post_init__(self) -> None:
        validate.choice(self.rank_on, "rank_on", RANK_ON)
        object.__setattr__(self, "ks", tuple(validate.int_sequence(self.ks, "ks", low=1)))
        validate.choice(self.target, "target", ("answer", "prediction"))
        if not isinstance(self.case, str) or not self.case:
            raise ValueError(f"case={self.case!r} must be a non-empty prompt such as '3+5='")
        if self.target == "answer" and not self.case_answer:
            raise ValueError(f"case_answer={self.case_answer!r}: target='answer' needs the answer of case {self.case!r}")
        object.__setattr__(self, "case_k", validate.positive_int(self.case_k, "case_k"))
        if self.groups is not None:
            groups = {str(g): tuple(validate.int_sequence(m, f"groups[{g!r}]", low=0)) for g, m in self.groups.items()}
            object.__setattr__(self, "groups", groups)
        validate.choice(self.mode, "mode", ("exact", "fast"))
        object.__setattr__(self, "batch_size", validate.optional_positive_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))

    def run(self, model: Any, data: Any, *, cache: DatasetCache | None = None, loras: Any = None) -> LoRACoefficientsResult:
        """Rank each case's neurons, compare their coefficients in every LoRA model.

        Args:
            model: The original model.
            data: Table 10's cases (a dataset or prompts; with answers for `target="answer"`).
            cache: Not read: Table 9's case is scored with the data, in one pass of its own.
            loras: A [`LoRALayerSweepResult`][arithlens.cna.lora.LoRALayerSweepResult] (its kept models,
                else its saved adapters), or `{lora layer: LensModel or adapter directory}`.
        """
        if loras is None:
            raise ValueError("give loras=: a lora_layer_sweep result or {layer: LoRA model or adapter directory}")

        model = load_model(model)
        loras = _lora_map(loras)
        groups = self.groups or layer_groups(model.n_layers)
        cases = datasets.as_dataset(data, model.tokenizer)
        case = datasets.prompts(model.tokenizer, [self.case], [self.case_answer] if self.case_answer else None)
        both = case + cases
        scorer = NeuronImportance(top_tokens=0, target=self.target, mode=self.mode, batch_size=self.batch_size, progress=self.progress)
        orig = scorer.run(model, both)
        layers = list(orig.layers)
        rows, scores9, coefs9 = [], [], {"original": orig.coef[0]}
        for layer, lm in tqdm(sorted(loras.items()), desc="LoRA models", unit="model", disable=not self.progress):
            lm = load_lora(model, lm) if isinstance(lm, (str, pathlib.Path)) else lm
            if (lm.n_layers, lm.d_mlp) != (model.n_layers, model.d_mlp):
                raise ValueError(f"LoRA model of layer {layer} ({lm!r}) does not have the shape of {model!r}")
            coef = lm.cache(both, names=[names.post(L) for L in layers]).stack(names.post, layers)
            rank = orig.importance
            if self.rank_on != "original":
                imp = scorer.run(lm, both, w=orig.w).importance
                rank = imp if self.rank_on == "lora" else imp - orig.importance
            downstream = torch.tensor([L >= layer for L in layers])  # LoRA cannot move neurons below its layer
            for k in self.ks:
                top = top_mask(rank[1:], k)
                increase = -coef_decrease(orig.coef[1:], coef[1:], top)
                share = (top & downstream[None, :, None]).sum((1, 2)) / top.sum((1, 2))
                rows += [{"lora_layer": layer, "group": group_of(layer, groups), "k": k, "case": i, "prompt": cases[i].prompt,
                          "coef_increase": float(v), "share_downstream": float(f)} for i, (v, f) in enumerate(zip(increase, share))]  # fmt: skip
            scores9.append(rank[0])
            coefs9[f"lora{layer}"] = coef[0]
        rank9 = orig.importance[0] if self.rank_on == "original" else torch.stack(scores9).mean(0)
        neurons = _table9(rank9, coefs9, layers, self.case_k)
        df = pd.DataFrame(rows)
        return LoRACoefficientsResult(df=df, neurons=neurons, ks=self.ks, rank_on=self.rank_on)


def _lora_map(loras: Any) -> dict[int, Any]:
    if isinstance(loras, LoRALayerSweepResult):
        found = loras.models or loras.adapter_dirs
        if not found:
            raise ValueError("loras: the sweep kept no models and saved no adapters; run it with keep_models=True or out_dir=")
        return dict(found)
    if isinstance(loras, Mapping) and loras:
        return {validate.non_negative_int(k, "loras key"): v for k, v in loras.items()}
    raise ValueError(f"loras={loras!r} must be a LoRALayerSweepResult or a non-empty {{layer: LensModel or adapter directory}}")


def _table9(
    rank: Float[torch.Tensor, "layer d_mlp"], coefs: dict[str, Float[torch.Tensor, "layer d_mlp"]], layers: list[int], k: int
) -> pd.DataFrame:
    """Tidy Table 9: the top-`k` neurons of `rank` and their coefficient in every model."""
    picked = einops.rearrange(top_mask(rank[None], k)[0], "l n -> (l n)").nonzero()[:, 0]
    order = einops.rearrange(rank, "l n -> (l n)")[picked].argsort(descending=True)
    rows = []
    for flat in picked[order].tolist():
        li, n = divmod(flat, rank.shape[1])
        for label, coef in coefs.items():
            rows.append({"neuron": f"{layers[li]}_{n}", "layer": layers[li], "index": n, "model": label,
                         "lora_layer": pd.NA if label == "original" else int(label[4:]), "coef": float(coef[li, n])})  # fmt: skip
    return pd.DataFrame(rows)
