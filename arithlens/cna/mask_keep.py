"""Mask / keep the CNA-identified neurons — Yu & Ananiadou §4.2, Table 5.

For each case, CNA (:class:`~arithlens.cna.ComparativeNeuronScores`) ranks every FFN
neuron by ``importance_change`` between the original model and the model with the
arithmetic head zeroed (``head=(L, H)``); the top-K of each case are then

* **mask** — zeroed in the original model (their coefficient scores ``m_k`` set to 0 at
  every position, :class:`~arithlens.interventions.CaseNeurons`), and
* **keep** — kept while every *other* neuron of a deep layer range is zeroed (default the
  upper half of the layers; the paper used layers 17–31 of Llama-7B's 32).

Measures, in % like the paper, for each K:

* ``mask`` / ``keep``: accuracy decrease relative to the original accuracy on the same
  cases, ``100 · (acc_ori − acc_int) / acc_ori``. By default only the cases the original
  model answers correctly are used (``correct_only=True``), so ``acc_ori = 1``.
* ``coef``: relative decrease of the top-K neurons' coefficient scores under the head
  ablation, per case ``100 · Σ_k s_k (m_k − m'_k) / Σ_k |m_k|`` with ``s_k = sign(m_k)``
  (``m`` original, ``m'`` head-ablated), then averaged over cases. With positive
  coefficients (the paper's Table 4) this is exactly the decrease of the summed
  coefficient scores; the signs make it well defined for SwiGLU's negative ones (a
  coefficient shrinking towards zero from either side counts as a decrease).

Example::

    import arithlens
    from arithlens import data
    from arithlens.cna import MaskKeep

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1, templates=[4])
    result = MaskKeep(head=(17, 2)).run(model, cases)
    result.table()      # rows mask / keep / coef, columns top99 … top10 (Table 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from arithlens.cna.comparative import ComparativeNeuronScores, ComparativeResult
from arithlens.cna.importance import check_head_arg, check_ks
from arithlens.interventions import CaseNeurons, ZeroHead
from arithlens.results import Result

MEASURES = ("mask", "keep", "coef")


def coef_decrease(
    coef: Float[torch.Tensor, "case layer d_mlp"],
    coef_other: Float[torch.Tensor, "case layer d_mlp"],
    mask: Bool[torch.Tensor, "case layer d_mlp"],
) -> Float[torch.Tensor, "case"]:
    """Per case: ``100 · Σ_k s_k (m_k − m'_k) / Σ_k |m_k|`` over the neurons in ``mask``."""
    s = torch.sign(coef) * mask
    num = (s * (coef - coef_other)).sum((1, 2))
    den = (coef.abs() * mask).sum((1, 2))
    return 100.0 * num / den.clamp_min(1e-12)


def relative_decrease(base: float, value: float) -> float:
    """Decrease from ``base`` to ``value`` in percent of ``base`` (NaN when ``base`` is 0)."""
    return float("nan") if base <= 0 else 100.0 * (base - value) / base


@dataclass
class MaskKeepResult(Result):
    """Table 5.

    Attributes:
        df: Tidy rows ``k, measure, value`` (measure ``mask``/``keep``/``coef``, value in %),
            plus ``accuracy`` (under the intervention; NaN for coef) and ``n``.
        baseline_accuracy: The original model's accuracy on the evaluated cases.
        coef_per_case: ``{k: [case]}`` coefficient decreases (%).
        cna: The comparative scores the top-K sets come from.
        rows: Indices (into the data) of the evaluated cases.
    """

    baseline_accuracy: float = 1.0
    n_cases: int = 0
    head: tuple[int, int] = (0, 0)
    keep_layers: list[int] = field(default_factory=list)
    coef_per_case: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)
    cna: ComparativeResult | None = field(repr=False, default=None)
    rows: list[int] = field(repr=False, default_factory=list)

    def table(self) -> pd.DataFrame:
        """Rows ``mask, keep, coef``; columns ``top{K}`` in the order K was given (%)."""
        wide = self.df.pivot(index="measure", columns="k", values="value")
        order = list(dict.fromkeys(self.df["k"]))
        wide = wide[order].loc[list(MEASURES)]
        wide.columns = [f"top{k}" for k in order]
        wide.index.name = None
        return wide.round(1)

    def plot(self, **kwargs: Any) -> Any:
        import plotly.express as px

        df = self.df.assign(K=lambda d: "top" + d["k"].astype(str))
        fig = px.bar(
            df, x="K", y="value", color="measure", barmode="group",
            labels={"value": "decrease (%)"},
            title=f"Mask / keep CNA top-K neurons (head {self.head[0]}.{self.head[1]}, {self.n_cases} cases)",
            **kwargs,
        )  # fmt: skip
        return fig


class MaskKeep:
    """Table 5: accuracy when masking / keeping each case's CNA top-K neurons.

    Args:
        head: The arithmetic head ``(layer, head)`` (or ``"L.H"``) CNA ablates.
        ks: The K values (columns of Table 5).
        keep_layers: Layers where "keep" zeroes every non-top neuron (default the upper
            half: ``n_layers // 2 … n_layers − 1``).
        correct_only: Evaluate on the cases the original model answers correctly.
        target: Token CNA scores, ``"prediction"`` (the paper) or ``"answer"``.
        mode: CNA ``"exact"`` or ``"fast"`` (see :class:`NeuronImportance`).
        memory_budget, batch_size, progress: as for CNA.
    """

    def __init__(
        self,
        head: Any = None,
        ks: Sequence[int] = (99, 50, 30, 20, 10),
        keep_layers: Sequence[int] | None = None,
        correct_only: bool = True,
        target: Literal["prediction", "answer"] = "prediction",
        mode: Literal["exact", "fast"] = "exact",
        rescore: int = 200,
        memory_budget: float = 1e9,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        if head is None:
            raise ValueError("MaskKeep needs head=(layer, head): the arithmetic head CNA ablates")
        self.head = head
        self.ks = check_ks(ks)
        self.keep_layers = None if keep_layers is None else list(keep_layers)
        self.correct_only = bool(correct_only)
        self.cna_args = dict(target=target, mode=mode, rescore=rescore, memory_budget=memory_budget,
                             batch_size=batch_size, progress=progress, top_tokens=0)  # fmt: skip
        self.batch_size = batch_size
        self.progress = progress

    @torch.no_grad()
    def run(self, model: Any, data: Any) -> MaskKeepResult:
        """Compute Table 5 (mask, keep, coef for every K) on ``data``."""
        from arithlens.models import load_model

        model = load_model(model)
        head = check_head_arg(model, self.head)
        keep_layers = (
            list(range(model.n_layers // 2, model.n_layers))
            if self.keep_layers is None
            else [model.check_layer(int(L)) for L in self.keep_layers]
        )
        if not keep_layers:
            raise ValueError("keep_layers is empty: give the deep layers 'keep' acts on")
        ids, targets = model._cases(data)
        clean = model.run(data, batch_size=self.batch_size)
        has_target = torch.tensor(targets) >= 0
        # Accuracy is against the answer where cases have one, else against the original prediction.
        ref = torch.where(has_target, torch.tensor(targets), clean.predictions)
        rows = torch.arange(len(ids))
        if self.correct_only:
            rows = (clean.predictions == ref).nonzero()[:, 0]
            if len(rows) == 0:
                raise ValueError("the model answers none of the cases correctly: nothing to mask (use correct_only=False)")
        sub = [ids[i] for i in rows.tolist()]
        ref = ref[rows]
        base_acc = float((clean.predictions[rows] == ref).float().mean())

        cna = ComparativeNeuronScores(intervention=ZeroHead(*head), **self.cna_args).run(model, sub)
        records, per_case = [], {}
        bar = tqdm(self.ks, desc="mask/keep", disable=not self.progress)
        for k in bar:
            top = cna.top_mask(k)
            for measure, inter in (
                ("mask", CaseNeurons(top, mode="zero")),
                ("keep", CaseNeurons(top, layers=keep_layers, mode="keep")),
            ):
                pred = model.run(sub, interventions=[inter], batch_size=self.batch_size, cache=False).predictions
                acc = float((pred == ref).float().mean())
                records.append({"k": k, "measure": measure, "value": relative_decrease(base_acc, acc), "accuracy": acc, "n": len(sub)})
            dec = coef_decrease(cna.coef, cna.coef_other, top)
            per_case[k] = dec
            records.append({"k": k, "measure": "coef", "value": float(dec.mean()), "accuracy": float("nan"), "n": len(sub)})
        return MaskKeepResult(
            df=pd.DataFrame(records),
            baseline_accuracy=base_acc,
            n_cases=len(sub),
            head=head,
            keep_layers=keep_layers,
            coef_per_case=per_case,
            cna=cna,
            rows=rows.tolist(),
        )
