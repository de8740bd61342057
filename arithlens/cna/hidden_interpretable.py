"""Ablating hidden-interpretable shallow FFN neurons — Yu & Ananiadou §4.4 (Table 8) and
Appendix B (Table 17).

[`VOTransform.scan`][arithlens.cna.vo_transform.VOTransform.scan] counts, for every
shallow FFN neuron, the number/operation tokens among the top 50 of its
attention-transformed value vector. For `M = 0…3` the set of neurons whose count is
more than `M` (`rule="gt"`, the default) is zero-ablated (coefficient scores `m_k` set
to 0 at every position: [`ZeroNeurons`][arithlens.core.interventions.ZeroNeurons]) and the
first-token accuracy on a dataset is compared with the original model's:
`accuracy_decrease = 100 · (base − acc) / base` (the paper's "decrease (%)"). The
paper's words say "M or more", but with `M = 0` that set is every neuron (176,128),
while its Table 8 lists 51,980, so the table can only come from "more than M" —
`rule="ge"` gives the literal wording. A seeded random set of the same size, drawn
uniformly from the same neuron layers, is ablated as the control.

The original model's predictions come from one clean pass (an
[`DatasetCache`][arithlens.core.cache.DatasetCache], given or built); each ablated set
costs one pass.

Example:
    ```python
    import arithlens
    from arithlens import data
    from arithlens.cna import HiddenInterpretable, VOTransform

    model = arithlens.load_model()
    cases = data.arithmetic(model.tokenizer, ops="+-", digits=1, forms="numeral")
    result = HiddenInterpretable(transform=VOTransform()).run(model, cases, only_correct=True)
    result.table()                                      # Table 8
    result.plot()
    ```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from arithlens.core import names, validate
from arithlens.core.cache import DatasetCache
from arithlens.cna.vo_transform import RULES, Rule, VOScanResult, VOTransform
from arithlens.analysis.base import Analysis
from arithlens.analysis.results import Result
from arithlens.core.interventions import ZeroNeurons
from arithlens.data import as_dataset
from arithlens.core.loading import load_model
from arithlens.analysis.figures import format_hovers


@dataclass
class HiddenInterpretableResult(Result):
    """Table 8: accuracy when the hidden-interpretable set (and a random set) is ablated.

    Attributes:
        df: One row per (M, neuron_set) — `M`, `neuron_set` (`hidden` / `random`),
            `n_neurons`, `accuracy`, `baseline_accuracy`, `accuracy_decrease` (relative,
            in %: `100 · (base − acc) / base`), `n_cases`.
        scan: The scan the sets come from.
        rule: `"gt"` or `"ge"`.
        neuron_sets: `{M: {layer: neuron indices}}` of the hidden-interpretable sets.
    """

    scan: VOScanResult | None = field(default=None, repr=False)
    rule: str = "gt"
    neuron_sets: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        """Table 8's layout: rows `number`, `accuracy` (decrease %), `random` (decrease %)."""
        hidden = self.df[self.df["neuron_set"] == "hidden"].set_index("M")
        random = self.df[self.df["neuron_set"] == "random"].set_index("M")
        cols = {f"M={m}": [int(hidden.loc[m, "n_neurons"]), round(float(hidden.loc[m, "accuracy_decrease"]), 1),
                           round(float(random.loc[m, "accuracy_decrease"]), 1) if m in random.index else float("nan")]
                for m in hidden.index}  # fmt: skip
        table = pd.DataFrame(cols, index=["number", "accuracy decrease (%)", "random set decrease (%)"], dtype=object)
        return table.reset_index(names="")

    def plot(self, **kwargs: Any) -> Any:
        """Accuracy decrease per `M`, hidden-interpretable set vs random set, bars labelled with set sizes."""
        import plotly.express as px

        df = self.df.assign(M=self.df["M"].map(lambda m: f"M={m}"))
        fig = px.bar(df, x="M", y="accuracy_decrease", color="neuron_set", barmode="group", text="n_neurons",
                     labels={"accuracy_decrease": "accuracy decrease (%)", "neuron_set": "ablated set",
                             "M": "threshold (more than M concept tokens)"},
                     title="Zero-ablating hidden-interpretable shallow neurons vs a random set of equal size (Table 8)")  # fmt: skip
        fig.update_traces(texttemplate="%{text} neurons", textposition="outside", cliponaxis=False)
        fig.update_layout(**kwargs)
        return format_hovers(fig)


@dataclass(frozen=True, kw_only=True)
class HiddenInterpretable(Analysis):
    """Table 8 / Table 17: ablate the hidden-interpretable neuron sets, M = 0…3.

    Args:
        ms: The thresholds `M`.
        rule: `"gt"` (more than `M` concept tokens; reproduces the paper's counts) or
            `"ge"` (`M` or more, the paper's wording).
        transform: The [`VOTransform`][arithlens.cna.vo_transform.VOTransform] scanning the
            neurons (default one).
        random_control: Also ablate a random set of the same size per `M`.
        seed: Seed of the random sets (one permutation of the scanned neurons; the set for
            each `M` is its first `n` neurons).
        position: Ablate at `"all"` positions (the paper) or the `"last"` only.
        correct_only: Keep the cases the original model answers correctly
            ([`correct_under`][arithlens.data.ArithmeticDataset.correct_under]); the
            baseline accuracy is then 1 and the decrease is `100 · (1 − acc)`.
        batch_size: Cases per forward.
        progress: Progress bars.
    """

    ms: Sequence[int] = (0, 1, 2, 3)
    rule: Rule = "gt"
    transform: VOTransform | None = None
    random_control: bool = True
    seed: int = 0
    position: names.Position = "all"
    correct_only: bool = False
    batch_size: int | None = None
    progress: bool = True

    @classmethod
    def paper(cls, **changes: Any) -> "HiddenInterpretable":
        """Table 8's setup: M = 0…3 with "more than M" (the rule that reproduces the paper's neuron
        counts: "M or more" would put every neuron in the M = 0 set), the scan of
        [`VOTransform.paper`][arithlens.cna.vo_transform.VOTransform.paper], all positions,
        every case counted, a random control."""
        base = {"ms": (0, 1, 2, 3), "rule": "gt", "transform": VOTransform.paper(), "position": "all",
                "correct_only": False, "random_control": True}  # fmt: skip
        return cls(**{**base, **changes})

    def __post_init__(self) -> None:
        validate.choice(self.rule, "rule", RULES)
        object.__setattr__(self, "position", names.check_position(self.position))
        object.__setattr__(self, "progress", validate.boolean(self.progress, "progress"))
        if self.transform is not None and not isinstance(self.transform, VOTransform):
            raise ValueError(f"transform={self.transform!r} must be a VOTransform")
        object.__setattr__(self, "transform", self.transform or VOTransform(progress=self.progress))
        object.__setattr__(self, "ms", tuple(validate.int_sequence(self.ms, "ms", low=0)))
        for m in self.ms:
            if m > self.transform.k:
                raise ValueError(f"M={m} exceeds k={self.transform.k}: no top-{self.transform.k} list can hold more")
        object.__setattr__(self, "random_control", validate.boolean(self.random_control, "random_control"))
        object.__setattr__(self, "seed", validate.integer(self.seed, "seed"))
        object.__setattr__(self, "correct_only", validate.boolean(self.correct_only, "correct_only"))
        object.__setattr__(self, "batch_size", validate.optional_positive_int(self.batch_size, "batch_size"))

    def hook_names(self, model: Any) -> set[str]:
        """No activations: the clean pass's predictions are all this analysis reads."""
        return set()

    def interventions(self, model: Any, neurons: dict[int, torch.Tensor]) -> list[Any]:
        """One [`ZeroNeurons`][arithlens.core.interventions.ZeroNeurons] per layer of a neuron set."""

        return [ZeroNeurons(L, idx.tolist(), position=self.position) for L, idx in sorted(neurons.items()) if len(idx)]

    def random_sets(self, model: Any, scan: VOScanResult, sizes: Sequence[int]) -> list[dict[int, torch.Tensor]]:
        """Seeded random neuron sets of the given sizes over the scanned layers."""
        n_total = len(scan.neuron_layers) * model.d_mlp
        sizes = validate.int_sequence(sizes, "sizes", low=0, high=n_total, allow_empty=True)
        order = torch.randperm(n_total, generator=torch.Generator().manual_seed(self.seed))
        out = []
        for n in sizes:
            pick = order[:n]
            layer_pos, neuron = pick // model.d_mlp, pick % model.d_mlp
            out.append({L: neuron[layer_pos == i].sort().values for i, L in enumerate(scan.neuron_layers)
                        if bool((layer_pos == i).any())})  # fmt: skip
        return out

    @torch.no_grad()
    def run(
        self,
        model: Any,
        data: Any,
        *,
        cache: DatasetCache | None = None,
        scan: VOScanResult | None = None,
    ) -> HiddenInterpretableResult:
        """Scan (or reuse `scan`), then ablate each set on `data`.

        Args:
            model: The model.
            data: Cases with answers (an arithmetic dataset).
            cache: The clean pass of `data` (any cache of it; built when not given).
            scan: A [`VOScanResult`][arithlens.cna.vo_transform.VOScanResult] to reuse.
        """

        if scan is not None and not isinstance(scan, VOScanResult):
            raise ValueError(f"scan={type(scan).__name__} must be a VOScanResult (VOTransform.scan(model))")
        model = load_model(model)
        if any(c.target_id < 0 for c in as_dataset(data, model.tokenizer)):
            raise ValueError("every case needs a target token to measure accuracy; use an arithmetic dataset")
        model, ds, cache = self.prepare(model, data, cache, batch_size=self.batch_size)
        cases = ds.correct_under(cache) if self.correct_only else ds
        base = 1.0 if self.correct_only else float(cache.correct.float().mean())
        scan = scan if scan is not None else self.transform.scan(model)
        sets = {m: scan.neuron_set(m, self.rule) for m in self.ms}
        sizes = [int(sum(len(v) for v in sets[m].values())) for m in self.ms]
        randoms = self.random_sets(model, scan, sizes) if self.random_control else [None] * len(self.ms)

        def accuracy(neurons: dict[int, torch.Tensor]) -> float:
            hooks = self.interventions(model, neurons)
            if not hooks:
                return base
            ablated = model.cache(cases, interventions=hooks, batch_size=self.batch_size, memo=False)
            return float(ablated.correct.float().mean())

        rows = []
        jobs = [(m, "hidden", sets[m]) for m in self.ms] + [(m, "random", r) for m, r in zip(self.ms, randoms) if r is not None]
        for m, kind, neurons in tqdm(jobs, desc="ablating neuron sets", unit="set", disable=not self.progress):
            acc = accuracy(neurons)
            rows.append({"M": m, "neuron_set": kind, "n_neurons": int(sum(len(v) for v in neurons.values())),
                         "accuracy": acc, "baseline_accuracy": base,
                         "accuracy_decrease": 100.0 * (base - acc) / base if base > 0 else float("nan"),
                         "n_cases": len(cases)})  # fmt: skip
        df = pd.DataFrame(rows).sort_values(["neuron_set", "M"], kind="stable").reset_index(drop=True)
        return HiddenInterpretableResult(df=df, scan=scan, rule=self.rule, neuron_sets=sets)
