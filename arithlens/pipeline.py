"""``arithlens run``: the main job, from a model to an HTML report.

1. Evaluate the 1-digit set (all ops, templates 1–4, numeral and word operands).
2. Sweep every head with zero-ablation (Tables 1–3) and pick the top "+" head.
3. Run each analysis module's report section (``REPORT_MODULES``): CNA (Tables 4–6 and
   the logic chain), hidden-interpretable neurons (Tables 7–8), Zhang et al.'s path
   patching and probes.
4. Write ``report.html`` (self-contained, opens offline), ``accuracy.csv`` and
   ``heads.csv``.

``quick=True`` uses small case samples so the whole job ends within ~10 minutes on two
CPU cores; the full run uses every case.

Example::

    from arithlens.pipeline import run_pipeline
    run_pipeline(out="results/demo", quick=True)
"""

from __future__ import annotations

import importlib
import pathlib
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

# Modules contributing report sections through ``sections(ctx) -> list[Section]``.
REPORT_MODULES = ("arithlens.cna.report", "arithlens.cna.vo_report", "arithlens.circuits.report")


@dataclass
class RunContext:
    """What every report section may use."""

    model: Any
    dataset: Any
    evaluation: Any
    heads: Any
    top_head: tuple[int, int]
    quick: bool
    out: pathlib.Path
    timings: dict[str, float] = field(default_factory=dict)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("arithlens", "transformer-lens", "transformers", "torch", "plotly", "pandas"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts) + f", python {platform.python_version()}"


def run_pipeline(model: Any = None, out: str = "results/run", quick: bool = False, device: str | None = None) -> str:
    """Run the main job and return the report's path."""
    from arithlens import data
    from arithlens.evaluate import evaluate
    from arithlens.heads import HeadAblation
    from arithlens.models import load_model
    from arithlens.report import Report, Section

    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lens = load_model(model, device=device)
    timings["load model (s)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dataset = data.arithmetic(lens.tokenizer, ops="+-*/", digits=1, templates=(1, 2, 3, 4), forms=("numeral", "word"))
    ev = evaluate(lens, dataset, full_answer=not quick)
    ev.cases.to_csv(out_dir / "accuracy.csv", index=False)
    timings["evaluation (s)"] = time.perf_counter() - t0

    # The sweep uses Table 24-27's setting (template 4, "n1+n2="): quick mode samples it.
    t0 = time.perf_counter()
    sweep_set = dataset.filter(template=4, form="numeral")
    if quick:
        sweep_set = _per_op_sample(sweep_set, 25)
    heads = HeadAblation(progress=True).run(lens, sweep_set)
    heads.df.to_csv(out_dir / "heads.csv", index=False)
    timings["head sweep (s)"] = time.perf_counter() - t0
    plus = heads.df[heads.df["op"] == "+"] if "+" in set(heads.df["op"]) else heads.df
    best = plus.sort_values("accuracy_drop", ascending=False).iloc[0]
    top_head = (int(best["layer"]), int(best["head"]))

    ctx = RunContext(lens, dataset, ev, heads, top_head, quick, out_dir, timings)
    acc_by_op = ev.summary(["op"])
    sections = [
        Section(
            "Accuracy on 1-digit arithmetic",
            f"First-token accuracy over {len(dataset)} cases is {ev.accuracy:.1%}; the bars split it by "
            "operation, template (Table 14) and numeral vs number-word operands.",
            figure=ev.plot(),
            table=ev.summary(["op", "template", "form"]),
            csv="accuracy.csv",
        ),
        Section(
            "Arithmetic heads (Tables 1-3)",
            _heads_reading(heads, top_head),
            figure=heads.plot(),
            table=heads.top(5),
            csv="heads.csv",
        ),
    ]
    if "case_type" in heads.cases:
        by_type = heads.by("op", "case_type")
        mask = (by_type["layer"] == top_head[0]) & (by_type["head"] == top_head[1])
        sections.append(
            Section(
                "Memorize vs change-one (Table 3)",
                f"Accuracy decrease of head {top_head[0]}.{top_head[1]} on memorize and change-one cases; "
                "similar decreases mean the head stores 1-digit memorization rather than carry logic.",
                table=by_type[mask][["op", "case_type", "n", "baseline_accuracy", "accuracy", "accuracy_drop", "relative_drop"]],
            )
        )
    for name in REPORT_MODULES:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        try:
            sections.extend(module.sections(ctx))
        except Exception as err:  # one failing analysis must not lose the whole report
            traceback.print_exc()
            sections.append(Section(f"{name}: failed", f"This section could not be computed: {type(err).__name__}: {err}"))
        timings[f"{name.split('.')[-2]}.{name.split('.')[-1]} (s)"] = time.perf_counter() - t0

    meta = {
        "model": repr(lens),
        "dataset": f"1-digit, ops + - * /, templates 1-4, numeral and word operands: {len(dataset)} cases; "
        f"head sweep on template 4 numeral: {len(sweep_set)} cases",
        "configuration": f"quick={quick}, zero-ablation at all positions, first-token accuracy",
        "versions": _versions(),
        "timings": ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    }
    report = Report(f"arithlens report: {lens.name}", meta=meta, sections=sections)
    return report.write(str(out_dir / "report.html"))


def _per_op_sample(dataset: Any, n: int) -> Any:
    parts = [dataset.filter(op=op).sample(n, seed=0) for op in dict.fromkeys(c.op for c in dataset)]
    combined = parts[0]
    for p in parts[1:]:
        combined = combined + p
    return combined


def _heads_reading(heads: Any, top_head: tuple[int, int]) -> str:
    all_rows = heads.df[heads.df["op"] == "all"] if "op" in heads.df else heads.df
    top = all_rows.sort_values("accuracy_drop", ascending=False).iloc[0]
    ratio = heads.median_ratio()
    median = float(all_rows["accuracy_drop"].median())
    if median <= 0:
        spread = f"the median head's drop is {median:.1%}, so the top drop exceeds it by far more than 10x: "
    else:
        spread = f"the largest drop is {ratio:.1f}x the median head's: "
    return (
        f"Zero-ablating head {int(top['layer'])}.{int(top['head'])} lowers accuracy most over all ops "
        f"({top['accuracy_drop']:.1%} absolute); the top '+' head is {top_head[0]}.{top_head[1]}. "
        + spread
        + ("a few heads carry the arithmetic, as in the paper." if ratio >= 10 else "the effect is spread over many heads on this model.")
    )

