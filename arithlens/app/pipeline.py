"""`arithlens run`: the main job, from a model to an HTML report.

1. Evaluate the 1-digit set (all four operations, templates 1–4, numeral and word operands).
2. Sweep the heads by zero-ablation (Tables 1–3) and pick the head whose ablation lowers
   "+" accuracy most.
3. Run each report module's sections ([`PAPER_SECTIONS`][arithlens.app.pipeline.PAPER_SECTIONS]):
   CNA (Tables 4–6 and the logic chain), hidden-interpretable neurons (Tables 7–8),
   Zhang et al.'s path patching, knockout and probes.
4. Save every analysis's result under `out/results/` (`Result.save`, plus `run.json`),
   then write `report.html` (self-contained, opens offline) from the results read back
   from there, beside `accuracy.csv`, `heads.csv` and one CSV per section.
   [`render_report`][arithlens.app.pipeline.render_report] (`arithlens report DIR`)
   rebuilds the report from them without a model.

Every reading in the report is computed from the numbers it describes, with 95 %
intervals ([`arithlens.core.stats`][arithlens.core.stats]): a claim is stated when the cases
establish it, and otherwise the reading says that they do not, with the case count.

`quick=True` uses the samples of [`QUICK`][arithlens.app.pipeline.QUICK], sized so the whole
job ends within 5 minutes on two idle CPU cores (the report's timings table shows each
stage); the full run ([`FULL`][arithlens.app.pipeline.FULL]) uses every case and takes hours
on a CPU.

Example:
    ```python
    from arithlens.app.pipeline import run_pipeline
    run_pipeline(out="results/demo", quick=True)    # returns the report's path
    ```
"""

from __future__ import annotations

import contextlib
import pathlib
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
import math
from typing import Any, Callable, Iterator

from arithlens import data
from arithlens.analysis.evaluation import evaluate
from arithlens.app import circuits_sections, cna_sections
from arithlens.app.report import RESULTS, Report, SavedRun, Section, join_words, plural
from arithlens.cna.heads import HeadAblation
from arithlens.core import validate
from arithlens.core.loading import load_model
from arithlens.core.stats import CONFIDENCE, Estimate, bonferroni, difference_interval, paired_difference, pct, proportion

__all__ = [
    "FULL",
    "QUICK",
    "PAPER_SECTIONS",
    "RunContext",
    "Sizes",
    "accuracy_reading",
    "case_type_reading",
    "head_drops",
    "heads_reading",
    "render_report",
    "run_pipeline",
    "top_head",
]

INCOMPLETE = "INCOMPLETE"
"""The file `arithlens run` keeps in its output directory until the report is written."""

PAPER_SECTIONS: tuple[tuple[str, Callable[[Any, SavedRun], None], Callable[[SavedRun], list[Section]]], ...] = (
    ("CNA", cna_sections.compute, cna_sections.render),
    ("VO transform", cna_sections.compute_vo, cna_sections.render_vo),
    ("circuits", circuits_sections.compute, circuits_sections.render),
)
"""The papers' report sections, run after the run-level ones: `(name, compute, render)`;
`compute(ctx, saved)` runs the analyses on the model and saves their results,
`render(saved) -> list[Section]` reads them back (no model)."""


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
        circuits_pairs: counterfactual pairs of 2-digit addition for Zhang et al.'s sections.
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
"""`arithlens run --quick`: within 5 minutes on two idle CPU cores (SmolLM2-135M; 238 s measured)."""

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
        model: The [`LensModel`][arithlens.core.model.LensModel].
        dataset: The evaluated 1-digit dataset.
        evaluation: Its [`EvaluationResult`][arithlens.analysis.evaluation.EvaluationResult].
        heads: The head sweep's [`HeadAblationResult`][arithlens.cna.heads.HeadAblationResult].
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


def run_pipeline(model: Any = None, out: str = "results/run", quick: bool = False, **load_options: Any) -> str:
    """Run the main job and return the report's path.

    Args:
        model: Anything [`load_model`][arithlens.load_model] takes, or a loaded
            [`LensModel`][arithlens.core.model.LensModel].
        out: Output directory (created; checked to be writable before any work).
        quick: Use the [`QUICK`][arithlens.app.pipeline.QUICK] samples.
        **load_options: How to load the model: [`load_model`][arithlens.load_model]'s
            `device`, `dtype`, `device_map`, `n_devices`, `max_memory` (checked before any work).

    Raises:
        ValueError: `out` cannot be written, or the model cannot be loaded.
    """

    out_dir = validate.output_dir(out, "out")
    unknown = sorted(set(load_options) - {"device", "dtype", "device_map", "n_devices", "max_memory"})
    if unknown:
        raise ValueError(f"unknown load option(s) {unknown}: run_pipeline takes load_model's device, dtype, device_map, n_devices, max_memory")
    sizes = QUICK if quick else FULL
    ctx = RunContext(None, None, None, None, (0, 0), quick, out_dir, sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Until the report is written the directory says it is incomplete, and no report from an
    # earlier run stays beside this run's partial CSVs looking finished.
    (out_dir / "report.html").unlink(missing_ok=True)
    marker = out_dir / INCOMPLETE
    marker.write_text("arithlens run has not finished writing this directory (killed or still running).\n")
    shutil.rmtree(out_dir / RESULTS, ignore_errors=True)  # an earlier run's results are not this run's
    saved = SavedRun(out_dir)
    with ctx.timed("load model"):
        lens = load_model(model, **load_options)
    ctx.model = lens

    with ctx.timed("evaluation"):

        dataset = data.arithmetic(lens.tokenizer, ops="+-*/", digits=1, templates=(1, 2, 3, 4), forms=("numeral", "word"))
        if sizes.eval_per_op is not None:
            keep = {(c.op, c.a, c.b) for c in _problems_per_op(dataset, sizes.eval_per_op)}
            dataset = data.ArithmeticDataset([c for c in dataset if (c.op, c.a, c.b) in keep], name=dataset.name)
        ev = saved.keep("evaluation", evaluate(lens, dataset, full_answer=sizes.full_answer, progress=True))
        ev.cases.to_csv(out_dir / "accuracy.csv", index=False)
    ctx.dataset, ctx.evaluation = dataset, ev

    with ctx.timed("head sweep"):

        sweep_set = dataset.filter(template=4, form="numeral", op=tuple(sizes.sweep_ops))
        if sizes.sweep_per_op is not None:
            sweep_set = sweep_set.sample_per("op", sizes.sweep_per_op)
        heads = saved.keep("heads", HeadAblation(progress=True, estimate=sizes.sweep_estimate, rescore=sizes.sweep_rescore).run(lens, sweep_set))
        heads.df.to_csv(out_dir / "heads.csv", index=False)
    ctx.heads = heads
    ctx.top_head = top_head(heads, "+")
    saved.facts["top_head"] = list(ctx.top_head)

    failed = saved.facts.setdefault("failed", {})
    for name, compute, _ in PAPER_SECTIONS:
        try:
            compute(ctx, saved)
        except Exception as err:  # one failing analysis must not lose the whole report
            traceback.print_exc()
            print(f"arithlens run: the {name} sections failed ({type(err).__name__}: {err}); the report says so", file=sys.stderr)
            failed[name] = f"{type(err).__name__}: {err}"

    sweep = f"{sizes.sweep_estimate} sweep" + (f" (top {sizes.sweep_rescore} heads ablated exactly)" if sizes.sweep_estimate != "exact" else "")
    saved.facts["title"] = f"arithlens report: {lens.name}"
    saved.facts["meta"] = {
        "model": repr(lens),
        "dataset": f"1-digit, ops + - * /, templates 1-4, numeral and word operands: {len(dataset):,} cases; "
        f"head sweep on template 4 numerals, ops {' '.join(sizes.sweep_ops)}: {len(heads.cases):,} cases",
        "configuration": f"{'quick' if quick else 'full'} run: zero-ablation at all positions, {sweep}; first-token accuracy; "
        f"CNA mode {sizes.cna_mode}; intervals are {round(100 * CONFIDENCE)}% (Wilson for accuracies)",
        "versions": _versions(),
        "machine": f"{_cores()} CPU cores visible, torch using {_threads()} threads",
    }
    saved.facts["timings"], saved.facts["cpu"] = dict(ctx.timings), dict(ctx.cpu)
    saved.write()
    path = render_report(out_dir)  # from the results as saved: what `arithlens report DIR` rebuilds
    marker.unlink(missing_ok=True)
    print(f"arithlens run: total {sum(ctx.timings.values()):.0f} s", file=sys.stderr)
    return path


def render_report(out: str | pathlib.Path) -> str:
    """Write `out/report.html` from the results `arithlens run --out out` saved there, without
    a model, and return its path (`arithlens report DIR`).

    Raises:
        ValueError: `out` holds no saved run.
    """
    saved = SavedRun.load(out)
    sections = run_sections(saved)
    failed = saved.facts.get("failed", {})
    for name, _, render in PAPER_SECTIONS:
        if name in failed:
            sections.append(Section(f"{name}: failed", f"This section could not be computed: {failed[name]}"))
            continue
        try:
            sections.extend(render(saved))
        except Exception as err:  # a section that cannot be read back says so; the others stand
            traceback.print_exc()
            sections.append(Section(f"{name}: failed", f"This section could not be rendered: {type(err).__name__}: {err}"))
    facts = saved.facts
    report = Report(facts.get("title", "arithlens report"), meta=facts.get("meta", {}), sections=sections,
                    timings=facts.get("timings", {}), cpu=facts.get("cpu", {}))  # fmt: skip
    return report.write(pathlib.Path(out) / "report.html")


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


# ----------------------------------------------------------------------------- readings
def _exact_rows(heads: Any, group: Any = "all") -> Any:
    """Rows of the sweep table for `group` whose accuracy was computed (not estimated)."""
    df = heads.df
    col = heads.group_by[0] if getattr(heads, "group_by", None) else None
    rows = df[df[col] == group] if col else df
    return rows[rows["accuracy"].notna()]


def top_head(heads: Any, group: Any = "+") -> tuple[int, int]:
    """The head whose ablation lowers accuracy on `group` most (ties: larger log-prob drop).

    Falls back to all cases when `group` is not a group of the sweep, and to the largest
    log-prob drop when no head was ablated exactly.
    """
    col = heads.group_by[0] if getattr(heads, "group_by", None) else None
    values = set(heads.df[col]) if col else set()
    rows = _exact_rows(heads, group if group in values else "all")
    if rows.empty:
        rows = heads.df[heads.df[col] == "all"] if col else heads.df
        best = rows.sort_values("logprob_drop", ascending=False, kind="stable").iloc[0]
    else:
        best = rows.sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable").iloc[0]
    return int(best["layer"]), int(best["head"])


def accuracy_reading(cases: Any) -> str:
    """The evaluation's reading: overall and per-operation accuracy with 95 % intervals, and
    which differences (operation, operand form) the cases establish."""
    n = len(cases)
    if n == 0:
        return "No case was evaluated."
    overall = proportion(int(cases["correct"].sum()), n)
    lines = [f"First-token accuracy over {plural(n, 'case')} is {overall.percent()}."]
    if "op" in cases and cases["op"].nunique() > 1:
        by_op = cases.groupby("op", sort=False)["correct"].agg(["sum", "size"])
        parts = [f"{op} {pct(s / m)} (n={m:,})" for op, (s, m) in by_op.iterrows()]
        rate = by_op["sum"] / by_op["size"]
        best, worst = rate.idxmax(), rate.idxmin()
        diff = difference_interval(by_op.loc[best, "sum"], by_op.loc[best, "size"], by_op.loc[worst, "sum"], by_op.loc[worst, "size"])
        verdict = (
            f"'{best}' is answered more often than '{worst}' ({diff.points()})"
            if diff.above_zero
            else f"the best and worst operations ('{best}', '{worst}') are not distinguishable on these cases ({diff.points()})"
        )
        lines.append(f"By operation: {', '.join(parts)}; {verdict}.")
    if "form" in cases and set(cases["form"].dropna()) >= {"numeral", "word"}:
        g = cases.groupby("form")["correct"].agg(["sum", "size"])
        diff = difference_interval(g.loc["numeral", "sum"], g.loc["numeral", "size"], g.loc["word", "sum"], g.loc["word", "size"])
        if diff.known:
            more, less = ("numeral", "word") if diff.above_zero else ("word", "numeral")
            lines.append(f"Operands written as {more}s are answered more often than as {less}s ({diff.points()}).")
        else:
            lines.append(f"Numeral and word operands are not distinguishable on these cases ({diff.points()}).")
    if "full_correct" in cases:
        full = proportion(int(cases["full_correct"].sum()), n)
        lines.append(f"Greedy decoding reproduces the whole answer in {full.percent()} of cases.")
    return "\n".join(lines)


def head_drops(heads: Any, group: Any = "all", confidence: float = CONFIDENCE) -> dict[tuple[int, int], Estimate]:
    """Per exactly-ablated head: the paired accuracy drop (baseline − ablated) on `group`'s cases."""
    import numpy as np

    cases = heads.cases
    col = heads.group_by[0] if getattr(heads, "group_by", None) else None
    mask = np.ones(len(cases), dtype=bool) if group == "all" or col is None else (cases[col] == group).to_numpy()
    base = cases["correct"].to_numpy().astype(bool)[mask]
    exact = getattr(heads, "exact", None)
    out = {}
    for k, (L, H) in enumerate(heads.heads):
        if exact is not None and not bool(exact[k]):
            continue
        after = heads.correct[k].cpu().numpy().astype(bool)[mask]
        out[(int(L), int(H))] = paired_difference(base, after, confidence)
    return out


def heads_reading(heads: Any, top: tuple[int, int] | None = None) -> str:
    """Tables 1–3's reading: the largest drop with its interval, how many heads lower
    accuracy measurably (intervals adjusted for the number of heads tested), and whether
    that makes "a few heads carry the arithmetic" hold on this model."""
    cases = heads.cases
    n = len(cases)
    base = proportion(int(cases["correct"].sum()), n)
    n_total = len(heads.heads)
    drops = head_drops(heads, "all")
    lines = []
    how = (
        f"every one of the {n_total} heads ablated"
        if len(drops) == n_total
        else f"all {n_total} heads ranked by an attribution estimate, the top {len(drops)} ablated exactly"
    )
    lines.append(f"Baseline accuracy on the {plural(n, 'sweep case')} is {base.percent()} ({how}; head L.H is head H of layer L, from 0).")
    if not drops:
        lines.append("No head was ablated exactly, so no accuracy drop can be read.")
        return "\n".join(lines)
    if base.value == 0:
        lines.append("The model answers none of these cases, so no ablation can lower its accuracy: the sweep cannot find arithmetic heads here.")
        return "\n".join(lines)
    rows = _exact_rows(heads, "all").sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
    best = (int(rows.iloc[0]["layer"]), int(rows.iloc[0]["head"]))
    d = drops[best]
    name = f"{best[0]}.{best[1]}"
    if d.above_zero:
        lines.append(f"Zero-ablating head {name} lowers accuracy most: {pct(base.value)} → {pct(base.value - d.value)}, {d.change()}.")
    elif d.value > 0:
        lines.append(
            f"The largest drop, for head {name} ({d.points()}), is not distinguishable from no change on {plural(n, 'case')}: "
            "more cases are needed to tell whether any single head matters."
        )
    else:
        lines.append(f"No head's ablation lowers accuracy on these {plural(n, 'case')} (the largest change is {d.points()}).")
    family = bonferroni(CONFIDENCE, len(drops))
    strict = head_drops(heads, "all", family)
    measurable = sorted((h for h, e in strict.items() if e.above_zero), key=lambda h: -drops[h].value)
    labels = [f"{L}.{H} ({round(100 * drops[(L, H)].value)} points)" for L, H in measurable]
    n_model = (getattr(heads, "n_layers", 0) * getattr(heads, "n_heads", 0)) or n_total
    adjusted = f"{round(100 * CONFIDENCE)}% intervals adjusted for the {len(drops)} heads tested"
    if not measurable:
        lines.append(
            f"No head lowers accuracy measurably once the {len(drops)} tests are accounted for ({adjusted}); "
            f"on {plural(n, 'case')} the sweep cannot say whether a few heads carry the arithmetic."
        )
    elif len(measurable) <= max(3, math.ceil(0.05 * n_model)):
        layers = sorted({L for L, _ in measurable})
        where = f"layer{'s' if len(layers) > 1 else ''} {join_words([str(x) for x in layers])} of 0-{heads.n_layers - 1}"
        verb = "lowers" if len(measurable) == 1 else "lower"
        lines.append(f"{len(measurable)} of {n_total} heads {verb} accuracy measurably ({adjusted}): {join_words(labels)}, in {where}.")
        # The paper's claim is that a few heads carry the arithmetic: ablating one loses much of
        # what the model gets right. Say so only when the strongest drop's interval shows it.
        low = strict[measurable[0]].low
        if low >= CARRY_SHARE * base.value:
            lines.append(
                f"A few heads carry the arithmetic, as in the paper: without head {measurable[0][0]}.{measurable[0][1]} the model "
                f"loses at least {round(100 * low / base.value)}% of the answers it gets right."
            )
        else:
            lines.append(
                f"That is not the paper's picture of a few heads carrying the arithmetic: the largest drop may be as small as "
                f"{pct(max(low, 0.0))} of the {pct(base.value)} baseline, and on {plural(n, 'case')} the other heads' drops are not "
                "distinguishable from none (too few cases to say they are smaller)."
            )
    else:
        lines.append(
            f"{len(measurable)} of {n_total} heads lower accuracy measurably ({adjusted}): the effect is spread over "
            f"many heads on this model, not concentrated in a few as in the paper. Largest: {join_words(labels[:5])}."
        )
    if len(drops) == n_total:
        all_rows = _exact_rows(heads, "all")["accuracy_drop"]
        median = float(all_rows.median())
        lines.append(f"The median head's drop is {median * 100:.1f} points.")
    if top is not None:
        plus = head_drops(heads, "+") if _has_group(heads, "+") else drops
        e = plus.get(tuple(top))
        if e is not None:
            status = "measurable" if e.above_zero else "not distinguishable from no change"
            lines.append(
                f"The sections below use head {top[0]}.{top[1]}, whose ablation lowers '+' accuracy most "
                f"({e.points()} on {plural(e.n, 'case')}; {status})."
            )
    return "\n".join(lines)


CARRY_SHARE = 0.25
"""The §2 reading says a few heads carry the arithmetic, as in the paper, only when ablating
the strongest head loses at least this share of the baseline's correct answers (the low end
of the drop's adjusted interval)."""


def _has_group(heads: Any, value: Any) -> bool:
    col = heads.group_by[0] if getattr(heads, "group_by", None) else None
    return bool(col) and value in set(heads.df[col])


def _case_type_masks(heads: Any) -> dict[str, Any]:
    types = heads.cases["case_type"]
    return {t: (types == t).to_numpy() for t in dict.fromkeys(types.dropna())}


def _case_type_drop(heads: Any, head: tuple[int, int], mask: Any) -> Estimate:
    k = [tuple(h) for h in heads.heads].index(tuple(head))
    base = heads.cases["correct"].to_numpy().astype(bool)[mask]
    after = heads.correct[k].cpu().numpy().astype(bool)[mask]
    return paired_difference(base, after)


def _case_type_table(heads: Any, head: tuple[int, int]) -> Any:
    import pandas as pd

    rows = []
    for t, mask in _case_type_masks(heads).items():
        k = [tuple(h) for h in heads.heads].index(tuple(head))
        base = heads.cases["correct"].to_numpy().astype(bool)[mask]
        after = heads.correct[k].cpu().numpy().astype(bool)[mask]
        d = paired_difference(base, after)
        rows.append({"case_type": t, "n": int(mask.sum()), "baseline_accuracy": base.mean(), "accuracy": after.mean(),
                     "accuracy_drop": d.value, "drop_ci_low": d.low, "drop_ci_high": d.high})  # fmt: skip
    return pd.DataFrame(rows)


def case_type_reading(heads: Any, head: tuple[int, int]) -> str:
    """Table 3's reading: the head's drop on memorize and on change-one cases, and whether
    the cases establish a difference between them."""
    name = f"{head[0]}.{head[1]}"
    masks = _case_type_masks(heads)
    exact = getattr(heads, "exact", None)
    k = [tuple(h) for h in heads.heads].index(tuple(head)) if tuple(head) in [tuple(h) for h in heads.heads] else None
    if k is None or (exact is not None and not bool(exact[k])):
        return f"Head {name} was not ablated exactly, so its drop per case type cannot be read."
    drops = {t: _case_type_drop(heads, head, m) for t, m in masks.items()}
    parts = [f"{t}: {d.points()} on {plural(d.n, 'case')}" for t, d in drops.items()]
    lines = [
        "Case types (§3.4): a case is change-one when a carry or borrow from the lower column changes its scored "
        "answer digit, memorize otherwise."
    ]
    correct = heads.cases["correct"].to_numpy().astype(bool)
    answered = [f"{t} {int(correct[m].sum())} of {int(m.sum())}" for t, m in masks.items()]
    lines.append(f"Without ablation the model answers {join_words(answered)} correctly; a drop can only come from those.")
    if "change-one" in masks and "target_str" in heads.cases:
        firsts = set(heads.cases["target_str"][masks["change-one"]].astype(str).str.strip())
        if len(firsts) == 1:
            lines.append(f"Every change-one case's scored token is {firsts.pop()!r} (the first answer token: on these sums, the carried digit).")
    lines.append(f"Accuracy drop when head {name} is zeroed, by case type — {'; '.join(parts)}.")
    if {"memorize", "change-one"} <= set(drops):
        m, c = drops["memorize"], drops["change-one"]
        if m.above_zero and c.above_zero:
            overlap = m.low <= c.high and c.low <= m.high
            lines.append(
                "The head matters for both kinds; the two drops' intervals overlap, so the cases show no difference between "
                "memorized digits and carried ones, as in the paper's reading that the head is not the carry logic."
                if overlap
                else f"The head matters for both kinds, more for {'memorize' if m.value > c.value else 'change-one'} cases (non-overlapping intervals)."
            )
        elif m.above_zero or c.above_zero:
            yes, no = ("memorize", "change-one") if m.above_zero else ("change-one", "memorize")
            lines.append(f"The drop is established for {yes} cases only; on the {plural(drops[no].n, no + ' case')} it is not distinguishable from no change.")
        else:
            lines.append("On neither kind is the drop distinguishable from no change with these cases: more cases are needed to compare them.")
    else:
        lines.append(f"The sweep has only {join_words(list(drops))} cases, so memorize and change-one cannot be compared.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections
def run_sections(saved: SavedRun) -> list[Section]:
    """The accuracy, head-sweep and (when the sweep has case types) Table 3 sections of a saved run."""
    ev, heads = saved["evaluation"], saved["heads"]
    top = tuple(saved.facts["top_head"])
    out = [
        Section(
            "Accuracy on 1-digit arithmetic",
            accuracy_reading(ev.cases),
            figure=ev.plot(),
            table=ev.summary(["op", "template", "form"]),
            csv="accuracy.csv",
        ),
        Section(
            "Arithmetic heads (Tables 1-3)",
            heads_reading(heads, top),
            figure=heads.plot(),
            table=heads.top(5),
            csv="heads.csv",
        ),
    ]
    if "case_type" in heads.cases and heads.cases["case_type"].notna().any():
        out.append(Section("Memorize vs change-one (Table 3)", case_type_reading(heads, top), table=_case_type_table(heads, top)))
    return out
