"""`arithlens run`: the main job, from a model to an HTML report.

1. Evaluate the 1-digit set (all four operations, templates 1–4, numeral and word operands).
2. Sweep the heads by zero-ablation (Tables 1–3) and pick the head whose ablation lowers
   "+" accuracy most.
3. Run each report module's sections ([`REPORT_MODULES`][arithlens.pipeline.REPORT_MODULES]):
   CNA (Tables 4–6 and the logic chain), hidden-interpretable neurons (Tables 7–8),
   Zhang et al.'s path patching, knockout and probes.
4. Write `report.html` (self-contained, opens offline), `accuracy.csv`, `heads.csv` and
   one CSV per section.

Every reading in the report is computed from the numbers it describes, with 95 %
intervals ([`arithlens.stats`][arithlens.stats]): a claim is stated when the cases
establish it, and otherwise the reading says that they do not, with the case count.

`quick=True` uses the samples of [`QUICK`][arithlens.pipeline.QUICK], sized so the whole
job ends within 10 minutes on two idle CPU cores (the report's timings table shows each
stage); the full run ([`FULL`][arithlens.pipeline.FULL]) uses every case and takes hours
on a CPU.

Example:
    ```python
    from arithlens.pipeline import run_pipeline
    run_pipeline(out="results/demo", quick=True)    # returns the report's path
    ```
"""

from __future__ import annotations

import contextlib
import pathlib
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

from arithlens import _run_sections
from arithlens._run_sections import accuracy_reading, case_type_reading, head_drops, heads_reading, top_head
from arithlens.circuits import report as _circuits_report
from arithlens.cna import report as _cna_report
from arithlens.cna import vo_report as _vo_report
from arithlens.report import Report, Section
from arithlens.stats import CONFIDENCE

__all__ = [
    "FULL",
    "QUICK",
    "REPORT_MODULES",
    "RunContext",
    "Sizes",
    "accuracy_reading",
    "case_type_reading",
    "head_drops",
    "heads_reading",
    "run_pipeline",
    "top_head",
]

REPORT_MODULES = (_cna_report, _vo_report, _circuits_report)
"""Modules contributing sections through `sections(ctx) -> list[Section]`, imported
explicitly: a renamed module fails at import instead of silently dropping its sections."""


@dataclass(frozen=True)
class Sizes:
    """How many cases each stage of `arithlens run` uses.

    Attributes:
        eval_per_op: Problems per operation evaluated (`None`: every 1-digit problem);
            each problem appears in every template and form.
        full_answer: Also decode each answer greedily (whole-answer accuracy).
        sweep_ops: Operations of the head sweep (template 4, numerals: Tables 24–27's setting).
        sweep_per_op: Sweep cases per operation (`None`: all).
        sweep_estimate: `"exact"` (every head ablated) or `"attribution"` (all heads
            estimated, the top `sweep_rescore` ablated exactly).
        sweep_rescore: Heads ablated exactly after an attribution estimate.
        cna_mode: CNA `"exact"` or `"fast"` (first order, top rows re-scored exactly).
        mask_keep_cases: Correctly answered +/− cases for Table 5.
        dag_cases: The first of those cases Table 6 (the PE-DAG) uses.
        vo_per_op: Correctly answered cases per operation for Table 8 (`None`: all).
        vo_quick_scan: Scan shallow neurons through one attention layer only.
        vo_ms: Table 8's thresholds M.
        circuits_pairs: Counterfactual pairs of 2-digit addition for Zhang et al.'s sections.
        knockout_random: Random node sets drawn for the knockout control.
        knockout_individual: Also knock out each key node alone.
        sft: Run the (CPU-sized) precise-SFT comparison.
    """

    eval_per_op: int | None
    full_answer: bool
    sweep_ops: str
    sweep_per_op: int | None
    sweep_estimate: str
    sweep_rescore: int
    cna_mode: str
    mask_keep_cases: int
    dag_cases: int
    vo_per_op: int | None
    vo_quick_scan: bool
    vo_ms: tuple[int, ...]
    circuits_pairs: int
    knockout_random: int
    knockout_individual: bool
    sft: bool


QUICK = Sizes(
    eval_per_op=None,
    full_answer=False,
    sweep_ops="+",
    sweep_per_op=None,
    sweep_estimate="exact",
    sweep_rescore=0,
    cna_mode="fast",
    mask_keep_cases=32,
    dag_cases=16,
    vo_per_op=40,
    vo_quick_scan=True,
    vo_ms=(1, 2, 3),
    circuits_pairs=60,
    knockout_random=1,
    knockout_individual=False,
    sft=False,
)
"""`arithlens run --quick`: within 10 minutes on two idle CPU cores (SmolLM2-135M)."""

FULL = Sizes(
    eval_per_op=None,
    full_answer=True,
    sweep_ops="+-*/",
    sweep_per_op=None,
    sweep_estimate="exact",
    sweep_rescore=0,
    cna_mode="exact",
    mask_keep_cases=64,
    dag_cases=64,
    vo_per_op=None,
    vo_quick_scan=False,
    vo_ms=(0, 1, 2, 3, 5, 8),
    circuits_pairs=40,
    knockout_random=3,
    knockout_individual=True,
    sft=True,
)
"""`arithlens run`: every case, exact sweeps (hours on a CPU; minutes on a GPU)."""


@dataclass
class RunContext:
    """What every report section may use.

    Attributes:
        model: The [`LensModel`][arithlens.models.LensModel].
        dataset: The evaluated 1-digit dataset.
        evaluation: Its [`Evaluation`][arithlens.evaluate.Evaluation].
        heads: The head sweep's [`HeadAblationResult`][arithlens.heads.HeadAblationResult].
        top_head: `(layer, head)` whose ablation lowers "+" accuracy most.
        quick: Whether this is a quick run.
        out: Output directory.
        sizes: The case counts of this run.
        timings: Wall seconds per stage.
        cpu: CPU seconds per stage (this process, all threads).
    """

    model: Any
    dataset: Any
    evaluation: Any
    heads: Any
    top_head: tuple[int, int]
    quick: bool
    out: pathlib.Path
    sizes: Sizes = QUICK
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a stage: prints its start and end on stderr and records wall and CPU seconds."""
        print(f"arithlens run: {name} ...", file=sys.stderr, flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - wall
            self.cpu[name] = time.process_time() - cpu
            print(f"arithlens run: {name} done in {self.timings[name]:.0f} s", file=sys.stderr, flush=True)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("arithlens", "transformer-lens", "transformers", "torch", "plotly", "pandas"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts) + f", python {platform.python_version()}"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_pipeline(model: Any = None, out: str = "results/run", quick: bool = False, device: str | None = None) -> str:
    """Run the main job and return the report's path.

    Args:
        model: Anything [`load_model`][arithlens.load_model] takes, or a loaded
            [`LensModel`][arithlens.models.LensModel].
        out: Output directory (created; checked to be writable before any work).
        quick: Use the [`QUICK`][arithlens.pipeline.QUICK] samples.
        device: Device to load the model on.

    Raises:
        ValueError: `out` cannot be written, or the model cannot be loaded.
    """
    from arithlens import validate

    out_dir = validate.output_dir(out, "out")
    sizes = QUICK if quick else FULL
    ctx = RunContext(None, None, None, None, (0, 0), quick, out_dir, sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ctx.timed("load model"):
        from arithlens.loading import load_model

        lens = load_model(model, device=device)
    ctx.model = lens

    with ctx.timed("evaluation"):
        from arithlens import data
        from arithlens.evaluate import evaluate

        dataset = data.arithmetic(lens.tokenizer, ops="+-*/", digits=1, templates=(1, 2, 3, 4), forms=("numeral", "word"))
        if sizes.eval_per_op is not None:
            keep = {(c.op, c.a, c.b) for c in _problems_per_op(dataset, sizes.eval_per_op)}
            dataset = data.ArithmeticDataset([c for c in dataset if (c.op, c.a, c.b) in keep], name=dataset.name)
        ev = evaluate(lens, dataset, full_answer=sizes.full_answer, progress=True)
        ev.cases.to_csv(out_dir / "accuracy.csv", index=False)
    ctx.dataset, ctx.evaluation = dataset, ev

    with ctx.timed("head sweep"):
        from arithlens.heads import HeadAblation

        sweep_set = dataset.filter(template=4, form="numeral", op=tuple(sizes.sweep_ops))
        if sizes.sweep_per_op is not None:
            sweep_set = sweep_set.sample_per("op", sizes.sweep_per_op)
        heads = HeadAblation(progress=True, estimate=sizes.sweep_estimate, rescore=sizes.sweep_rescore).run(lens, sweep_set)
        heads.df.to_csv(out_dir / "heads.csv", index=False)
    ctx.heads = heads
    ctx.top_head = top_head(heads, "+")

    sections = _run_sections.sections(ctx)
    for module in REPORT_MODULES:
        name = module.__name__.removeprefix("arithlens.")
        try:
            sections.extend(module.sections(ctx))
        except Exception as err:  # one failing analysis must not lose the whole report
            traceback.print_exc()
            print(f"arithlens run: the {name} sections failed ({type(err).__name__}: {err}); the report says so", file=sys.stderr)
            sections.append(Section(f"{name}: failed", f"This section could not be computed: {type(err).__name__}: {err}"))

    sweep = f"{sizes.sweep_estimate} sweep" + (f" (top {sizes.sweep_rescore} heads ablated exactly)" if sizes.sweep_estimate != "exact" else "")
    meta = {
        "model": repr(lens),
        "dataset": f"1-digit, ops + - * /, templates 1-4, numeral and word operands: {len(dataset):,} cases; "
        f"head sweep on template 4 numerals, ops {' '.join(sizes.sweep_ops)}: {len(heads.cases):,} cases",
        "configuration": f"{'quick' if quick else 'full'} run: zero-ablation at all positions, {sweep}; first-token accuracy; "
        f"CNA mode {sizes.cna_mode}; intervals are {round(100 * CONFIDENCE)}% (Wilson for accuracies)",
        "versions": _versions(),
        "machine": f"{_cores()} CPU cores visible, torch using {_threads()} threads",
    }
    report = Report(f"arithlens report: {lens.name}", meta=meta, sections=sections, timings=dict(ctx.timings), cpu=dict(ctx.cpu))
    path = report.write(out_dir / "report.html")
    print(f"arithlens run: total {sum(ctx.timings.values()):.0f} s", file=sys.stderr)
    return path


def _problems_per_op(dataset: Any, n: int) -> list[Any]:
    """One case per sampled (op, a, b) problem, at most `n` problems per op (seeded)."""
    import random

    problems: dict[str, list[Any]] = {}
    seen = set()
    for c in dataset:
        if (c.op, c.a, c.b) not in seen:
            seen.add((c.op, c.a, c.b))
            problems.setdefault(c.op, []).append(c)
    out = []
    for op, items in problems.items():
        out += items if len(items) <= n else random.Random(f"0:{op}").sample(items, n)
    return out
