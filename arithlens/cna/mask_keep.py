"""Mask / keep the CNA-identified neurons — Yu & Ananiadou §4.2, Table 5.

For each case, CNA ([`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores])
ranks every FFN neuron by `importance_change` (original − other) between the original
model and the model under an intervention — the paper's: the arithmetic head zeroed,
`intervention=ZeroHead(L, H)` — and the top-K of each case are then

* **mask** — zeroed in the original model (their coefficient scores `m_k` set to 0 at
  every position, [`CaseNeurons`][arithlens.core.interventions.CaseNeurons]), and
* **keep** — kept while every *other* neuron of a deep layer range is zeroed (default the
  upper half of the layers; the paper used layers 17–31 of Llama-7B's 32).

Measures, in % like the paper, for each K:

* `mask` / `keep`: accuracy decrease relative to the original accuracy on the same
  cases, `100 · (acc_ori − acc_int) / acc_ori`. By default only the cases the original
  model answers correctly are used (`correct_only=True`,
  [`correct_under`][arithlens.data.ArithmeticDataset.correct_under]), so `acc_ori = 1`.
  Prompts without an answer count the original prediction as correct.
* `coef`: relative decrease of the top-K neurons' coefficient scores under the
  intervention, per case `100 · Σ_k s_k (m_k − m'_k) / Σ_k |m_k|` with `s_k = sign(m_k)`
  (`m` original, `m'` intervened), then averaged over cases. With positive
  coefficients (the paper's Table 4) this is exactly the decrease of the summed
  coefficient scores; the signs make it well defined for SwiGLU's negative ones (a
  coefficient shrinking towards zero from either side counts as a decrease).

The clean pass is read off an [`ActivationCache`][arithlens.core.cache.ActivationCache]
(given as `cache=`, or built once); a CNA result already computed on the same data can be
passed as `cna=`. Each K then costs two forward passes (mask, keep).

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.cna import CNAConfig, MaskKeep
    from arithlens.core.interventions import ZeroHead

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1, templates=[4])
    result = MaskKeep(ZeroHead(17, 2), config=CNAConfig(mode="fast")).run(model, cases)
    result.table()      # rows mask / keep / coef, columns top99 … top10 (Table 5)
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from arithlens.core import names, validate
from arithlens.core.cache import ActivationCache, ensure_cache
from arithlens.cna.config import CNAConfig, make_config
from arithlens.analysis.results import Result
from arithlens.core.interventions import Intervention, ZeroHead
from arithlens.cna.comparative import ComparativeNeuronScores
from arithlens.data import as_dataset
from arithlens.core.interventions import as_hooks
from arithlens.data import ArithmeticDataset
from arithlens.core.interventions import CaseNeurons

if TYPE_CHECKING:
    from arithlens.cna.comparative import ComparativeResult

MEASURES = ("mask", "keep", "coef")
TABLE_K = (99, 50, 30, 20, 10)
"""Table 5's and Table 6's K values."""


# ---------------------------------------------------------------------------- shared by the CNA chain
def resolve_intervention(intervention: Any, head: Any, required: bool = True) -> Any:
    """The intervention of a CNA-based analysis: `intervention=`, or `head=` as shorthand for `ZeroHead`.

    `head` may be `(layer, head)`, `"L.H"` or a [`Node`][arithlens.core.names.Node]; it builds
    `ZeroHead(layer, head)`. Giving both is an error; giving neither is one when `required`.
    """

    if intervention is not None and head is not None:
        raise ValueError("give intervention= or head= (a shorthand for intervention=ZeroHead(layer, head)), not both")
    if head is not None:
        node = names.Node.parse(head)
        if node.is_mlp:
            raise ValueError(f"head={head!r} names an MLP; give an attention head as (layer, head) or 'L.H'")
        return ZeroHead(node.layer, node.head)
    if intervention is None:
        if required:
            raise ValueError(
                "give the intervention CNA compares against: intervention=ZeroHead(layer, head) "
                "(or the shorthand head=(layer, head)), the arithmetic head"
            )
        return None
    if not isinstance(intervention, Intervention):
        raise ValueError(f"intervention={intervention!r} is not an intervention (see arithlens.core.interventions)")
    return intervention


def comparative(intervention: Any, config: CNAConfig, top_tokens: int = 0) -> Any:
    """The [`ComparativeNeuronScores`][arithlens.cna.comparative.ComparativeNeuronScores] these analyses run."""

    return ComparativeNeuronScores(intervention=intervention, config=config, top_tokens=top_tokens)


def check_cna(cna: Any, n_cases: int, model: Any) -> "ComparativeResult":
    """A given CNA result, checked to cover `n_cases` cases and every layer, with finite scores."""

    if not isinstance(cna, ComparativeResult):
        raise ValueError(f"cna={type(cna).__name__} must be a ComparativeResult (ComparativeNeuronScores(...).run)")
    if cna.n_cases != n_cases:
        raise ValueError(f"cna= holds {cna.n_cases} cases but the data has {n_cases}: run CNA on the same data")
    if list(cna.layers) != list(range(model.n_layers)):
        raise ValueError(f"cna= scored layers {list(cna.layers)}; these analyses need every layer (CNA with layers=None)")
    validate.check_finite(cna.importance_change, "the CNA importance changes")
    return cna


def _start(model: Any, data: Any, intervention: Any) -> Any:
    """`data` as a dataset, after checking the intervention fits the model (before any pass)."""

    ds = as_dataset(data, model.tokenizer)
    if intervention is not None:
        as_hooks(model, [intervention])  # e.g. a head out of range
    return ds


def _clean_cache(
    model: Any, data: Any, cache: ActivationCache | None, hooks: set[str], positions: str, batch_size: int | None
) -> ActivationCache:
    """The clean cache of `data`: the given one (checked to hold `hooks`), or one forward pass."""
    if cache is None:
        cache = model.cache(data, names=hooks, positions=positions, batch_size=batch_size)
    return ensure_cache(model, data, cache, hooks, positions)


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
        df: Tidy rows `k, measure, value` (measure `mask`/`keep`/`coef`, value in %),
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
    cna: "ComparativeResult | None" = field(repr=False, default=None)
    rows: list[int] = field(repr=False, default_factory=list)

    def table(self) -> pd.DataFrame:
        """Rows `mask, keep, coef`; columns `top{K}` in the order K was given (%)."""
        wide = self.df.pivot(index="measure", columns="k", values="value")
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
            df, x="K", y="value", color="measure", barmode="group",
            labels={"value": "decrease (%)", "K": "each case's top-K CNA neurons", "measure": "measure"},
            title=f"Mask / keep CNA top-K neurons (under {self.intervention}, {self.n_cases} cases)",
            hover_data={"accuracy": ":.3f", "n": True},
        )  # fmt: skip
        fig.update_layout(**kwargs)
        return fig


# ---------------------------------------------------------------------------- the analysis
class MaskKeep:
    """Table 5: accuracy when masking / keeping each case's CNA top-K neurons.

    Args:
        intervention: What CNA compares the model against — the paper's
            `ZeroHead(layer, head)`, the arithmetic head zeroed.
        head: Shorthand for `intervention=ZeroHead(*head)`: `(layer, head)` or `"L.H"`.
        k: The K values (columns of Table 5), an integer or a sequence.
        keep_layers: Layers where "keep" zeroes every non-top neuron (default the upper
            half: `n_layers // 2 … n_layers − 1`).
        correct_only: Evaluate on the cases the original model answers correctly.
        config: How CNA scores neurons ([`CNAConfig`][arithlens.cna.config.CNAConfig]);
            its `batch_size` and `progress` also apply to the mask / keep passes.
        **options: `CNAConfig` fields given one by one (`mode="fast"`), overriding `config`'s.
    """

    def __init__(
        self,
        intervention: Any = None,
        *,
        head: Any = None,
        k: int | Sequence[int] = TABLE_K,
        keep_layers: Sequence[int] | None = None,
        correct_only: bool = True,
        config: CNAConfig | None = None,
        **options: Any,
    ):
        self.intervention = resolve_intervention(intervention, head)
        self.k = validate.int_sequence(k, "k", low=1)
        self.keep_layers = None if keep_layers is None else validate.int_sequence(keep_layers, "keep_layers", low=0)
        self.correct_only = validate.boolean(correct_only, "correct_only")
        self.config = make_config(config, **options)

    def hook_names(self, model: Any) -> set[str]:
        """The hooks CNA reads from the clean pass."""
        return comparative(self.intervention, self.config).hook_names(model)

    @torch.no_grad()
    def run(
        self, model: Any, data: Any, *, cache: ActivationCache | None = None, cna: "ComparativeResult | None" = None
    ) -> MaskKeepResult:
        """Compute Table 5 (mask, keep, coef for every K) on `data`.

        Args:
            model: The model.
            data: Prompts or cases ([`as_dataset`][arithlens.data.as_dataset]).
            cache: The clean pass of `data` holding this analysis's hooks
                (`model.cache(data, names=[analysis])`); built when not given.
            cna: CNA of `data` under the same intervention, to reuse.
        """

        ds = _start(model, data, self.intervention)
        keep_layers = (
            list(range(model.n_layers // 2, model.n_layers))
            if self.keep_layers is None
            else [model.check_layer(L, "keep_layers item") for L in self.keep_layers]
        )
        if not keep_layers:
            raise ValueError("keep_layers is empty: give the deep layers 'keep' acts on")
        hooks = self.hook_names(model) if cna is None else set()
        cache = _clean_cache(model, ds, cache, hooks, "last", self.config.batch_size)
        cna = check_cna(cna, len(ds), model) if cna is not None else comparative(self.intervention, self.config).run(
            model, ds, cache=cache
        )
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
        for k in tqdm(self.k, desc="mask/keep", unit="K", disable=not self.config.progress):
            top = cna.top_mask(k)[rows]
            for measure, inter in (
                ("mask", CaseNeurons(top, mode="zero")),
                ("keep", CaseNeurons(top, layers=keep_layers, mode="keep")),
            ):
                pred = model.cache(sub, interventions=[inter], batch_size=self.config.batch_size, memo=False).predictions
                acc = float((pred == ref).float().mean())
                records.append({"k": k, "measure": measure, "value": relative_decrease(base_acc, acc), "accuracy": acc, "n": len(sub)})
            dec = coef_decrease(cna.coef[rows], cna.coef_other[rows], top)
            per_case[k] = dec
            records.append({"k": k, "measure": "coef", "value": float(dec.mean()), "accuracy": float("nan"), "n": len(sub)})
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
