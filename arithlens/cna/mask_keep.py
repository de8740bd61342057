"""Mask / keep the CNA-identified neurons — Yu & Ananiadou §4.2, Table 5.

For each case, CNA ([`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores])
ranks every FFN neuron by `importance_change` (original − other) between the original
model and the model under an intervention — the paper's: the arithmetic head zeroed,
`intervention=ZeroHead(L, H)` — and the top-K of each case are then

* **mask** — zeroed in the original model (their coefficient scores `m_k` set to 0 at
  every position, [`CaseNeurons`][arithlens.core.interventions.CaseNeurons]), and
* **keep** — kept while every *other* neuron of a deep layer range is zeroed (default the
  paper's layers 17–31 of Llama-7B's 32, scaled to the model's depth:
  [`deep_layers`][arithlens.cna.base.deep_layers]; 16–29 on SmolLM2's 30).

Measures, in % like the paper, for each K:

* `mask` / `keep`: accuracy decrease relative to the original accuracy on the same
  cases, `100 · (acc_ori − acc_int) / acc_ori`. By default every case is used, as the
  paper does ("all 1D+ and 1D− cases"); `correct_only=True` keeps only the cases the
  original model answers correctly
  ([`correct_under`][arithlens.data.ArithmeticDataset.correct_under]), so `acc_ori = 1`.
  Prompts without an answer count the original prediction as correct.
* `coef`: relative decrease of the top-K neurons' coefficient scores under the
  intervention, per case `100 · Σ_k s_k (m_k − m'_k) / Σ_k |m_k|` with `s_k = sign(m_k)`
  (`m` original, `m'` intervened), then averaged over cases. With positive
  coefficients (the paper's Table 4) this is exactly the decrease of the summed
  coefficient scores; the signs make it well defined for SwiGLU's negative ones (a
  coefficient shrinking towards zero from either side counts as a decrease).

The clean pass is read off an [`DatasetCache`][arithlens.core.cache.DatasetCache]
(given as `cache=`, or built once); a CNA result already computed on the same data can be
passed as `cna=`. Each K then costs two forward passes (mask, keep).

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.cna import CNAAnalysis, MaskKeep
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1, templates=[4])
    result = MaskKeep(intervention=ZeroHead(17, 2), mode="fast").run(model, cases)
    result.table()      # rows mask / keep / coef, columns top99 … top10 (Table 5)
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from arithlens.core import validate
from arithlens.core.cache import DatasetCache
from arithlens.cna.base import CNAAnalysis, cna_options, deep_layers
from arithlens.analysis.results import Result
from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeNeuronScoresResult, check_cna, required_intervention
from arithlens.data import ArithmeticDataset
from arithlens.core.interventions import CaseNeurons
from arithlens.analysis.figures import format_hovers


MEASURES = ("mask", "keep", "coef")
TABLE_K = (99, 50, 30, 20, 10)
"""Table 5's and Table 6's K values."""


# ---------------------------------------------------------------------------- shared by the CNA chain
def coef_decrease(
    coef: Float[torch.Tensor, "case layer d_mlp"],
    coef_other: Float[torch.Tensor, "case layer d_mlp"],
    mask: Bool[torch.Tensor, "case layer d_mlp"],
) -> Float[torch.Tensor, "case"]:
    """Per case: `100 · Σ_k s_k (m_k − m'_k) / Σ_k |m_k|` over the neurons in `mask`."""
    s = torch.sign(coef) * mask
    num = (s * (coef - coef_other)).sum((1, 2))
    den = (coef.abs() * mask).sum((1, 2))
    return 100.0 * num / den.clamp_min(1e-12)


def relative_decrease(base: float, value: float) -> float:
    """Decrease from `base` to `value` in percent of `base` (NaN when `base` is 0)."""
    return float("nan") if base <= 0 else 100.0 * (base - value) / base


# ---------------------------------------------------------------------------- result
@dataclass
class MaskKeepResult(Result):
    """Table 5.

    Attributes:
        df: Tidy rows `k, measure, decrease` (measure `mask`/`keep`/`coef`, decrease in %),
            plus `accuracy` (under the intervention; NaN for coef) and `n`.
        baseline_accuracy: The original model's accuracy on the evaluated cases.
        n_cases: How many cases were evaluated.
        intervention: What CNA compared against (`"ZeroHead(17.2)"`).
        keep_layers: The layers where "keep" zeroes every non-top neuron.
        coef_per_case: `{k: [case]}` coefficient decreases (%) of the evaluated cases.
        cna: The comparative scores of every case of the data (the top-K sets come from it).
        rows: Indices (into the data) of the evaluated cases.
    """

    baseline_accuracy: float = 1.0
    n_cases: int = 0
    intervention: str = ""
    keep_layers: list[int] = field(default_factory=list)
    coef_per_case: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)
    cna: "ComparativeNeuronScoresResult | None" = field(repr=False, default=None)
    rows: list[int] = field(repr=False, default_factory=list)

    def table(self) -> pd.DataFrame:
        """Rows `mask, keep, coef`; columns `top{K}` in the order K was given (%)."""
        wide = self.df.pivot(index="measure", columns="k", values="decrease")
        order = list(dict.fromkeys(self.df["k"]))
        wide = wide[order].loc[list(MEASURES)]
        wide.columns = [f"top{k}" for k in order]
        wide.index.name = None
        return wide.round(1)

    def plot(self, **kwargs: Any) -> Any:
        """Grouped bars: the three decreases (%) for each K."""
        import plotly.express as px

        df = self.df.assign(K=lambda d: "top" + d["k"].astype(str))
        fig = px.bar(
            df, x="K", y="decrease", color="measure", barmode="group",
            labels={"decrease": "decrease (%)", "K": "each case's top-K CNA neurons", "measure": "measure"},
            title=f"Mask / keep CNA top-K neurons (under {self.intervention}, {self.n_cases} cases)",
            hover_data={"accuracy": ":.3f", "n": True},
        )  # fmt: skip
        fig.update_layout(**kwargs)
        return format_hovers(fig)


# ---------------------------------------------------------------------------- the analysis
@dataclass(frozen=True, kw_only=True)
class MaskKeep(CNAAnalysis):
    """Table 5: accuracy when masking / keeping each case's CNA top-K neurons.

    Args:
        intervention: What CNA compares the model against — the paper's
            `ZeroHead(layer, head)`, the arithmetic head zeroed (or the head, `"17.2"`).
        k: The K values (columns of Table 5), an integer or a sequence.
        keep_layers: Layers where "keep" zeroes every non-top neuron (default the paper's
            17–31 of 32, scaled: [`deep_layers`][arithlens.cna.base.deep_layers]).
        correct_only: Evaluate only on the cases the original model answers correctly
            (default `False`: every case, as the paper).
        target, mode, rescore, batch_size, progress, …: how CNA scores neurons (the shared
            options of [`CNAAnalysis`][arithlens.cna.base.CNAAnalysis]); `batch_size` and
            `progress` also apply to the mask / keep passes.
    """

    intervention: Any = None
    k: int | Sequence[int] = TABLE_K
    keep_layers: Sequence[int] | None = None
    correct_only: bool = False

    @classmethod
    def paper(cls, n_layers: int, **changes: Any) -> "MaskKeep":
        """Table 5's setup on a model of `n_layers`: exact CNA, K = 99, 50, 30, 20, 10, keep acting on
        the paper's layers 17–31 of 32 (scaled), every case counted; give `intervention=`."""
        base = {"k": TABLE_K, "keep_layers": tuple(deep_layers(n_layers)), "correct_only": False}
        return super().paper(**{**base, **changes})

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "intervention", required_intervention(self.intervention))
        object.__setattr__(self, "k", tuple(validate.int_sequence(self.k, "k", low=1)))
        if self.keep_layers is not None:
            object.__setattr__(self, "keep_layers", tuple(validate.int_sequence(self.keep_layers, "keep_layers", low=0)))
        object.__setattr__(self, "correct_only", validate.boolean(self.correct_only, "correct_only"))

    def comparative(self) -> ComparativeNeuronScores:
        """The [`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores] this analysis runs."""
        return ComparativeNeuronScores(intervention=self.intervention, top_tokens=0, **cna_options(self))

    def hook_names(self, model: Any) -> set[str]:
        """The hooks CNA reads from the clean pass."""
        return self.comparative().hook_names(model)

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: DatasetCache | None = None, cna: "ComparativeNeuronScoresResult | None" = None
    ) -> MaskKeepResult:
        """Compute Table 5 (mask, keep, coef for every K) on `data`.

        Args:
            model: The model.
            data: Prompts or cases ([`as_dataset`][arithlens.data.as_dataset]).
            cache: The clean pass of `data` holding this analysis's hooks
                (`model.cache(data, names=[analysis])`); built when not given.
            cna: CNA of `data` under the same intervention, to reuse.
        """

        model, ds = self.start(model, data)
        keep_layers = (
            deep_layers(model.n_layers)
            if self.keep_layers is None
            else [model.check_layer(L, "keep_layers item") for L in self.keep_layers]
        )
        if not keep_layers:
            raise ValueError("keep_layers is empty: give the deep layers 'keep' acts on")
        hooks = self.hook_names(model) if cna is None else set()
        cache = self.prepare(model, ds, cache, names=hooks).cache
        cna = check_cna(cna, len(ds), model) if cna is not None else self.comparative().run(model, ds, cache=cache)
        # Accuracy is against the answer where a case has one, else against the original prediction.
        ref = cache.scoring_ids
        correct = cache.predictions == ref
        if not self.correct_only:
            rows, sub = torch.arange(len(ds)), ds
        elif bool(cache.has_targets.all()):
            rows, sub = correct.nonzero()[:, 0], ds.correct_under(cache)
        else:
            rows = correct.nonzero()[:, 0]
            sub = ArithmeticDataset([ds[i] for i in rows.tolist()], name=ds.name)
        ref = ref[rows]
        base_acc = float(correct[rows].float().mean())

        records, per_case = [], {}
        for k in tqdm(self.k, desc="mask/keep", unit="K", disable=not self.progress):
            top = cna.top_mask(k)[rows]
            for measure, inter in (
                ("mask", CaseNeurons(top, mode="zero")),
                ("keep", CaseNeurons(top, layers=keep_layers, mode="keep")),
            ):
                pred = model.cache(sub, interventions=[inter], batch_size=self.batch_size, memo=False).predictions
                acc = float((pred == ref).float().mean())
                records.append({"k": k, "measure": measure, "decrease": relative_decrease(base_acc, acc), "accuracy": acc, "n": len(sub)})
            dec = coef_decrease(cna.coef[rows], cna.coef_other[rows], top)
            per_case[k] = dec
            records.append({"k": k, "measure": "coef", "decrease": float(dec.mean()), "accuracy": float("nan"), "n": len(sub)})
        return MaskKeepResult(
            df=pd.DataFrame(records),
            baseline_accuracy=base_acc,
            n_cases=len(sub),
            intervention=self.intervention.describe(),
            keep_layers=keep_layers,
            coef_per_case=per_case,
            cna=cna,
            rows=rows.tolist(),
        )
