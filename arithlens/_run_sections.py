"""The `arithlens run` report's first sections: accuracy on the 1-digit set and the head sweep.

[`run_pipeline`][arithlens.pipeline.run_pipeline] calls `sections(ctx)` after its
evaluation and head-sweep stages, before the analysis modules of
[`REPORT_MODULES`][arithlens.pipeline.REPORT_MODULES]; unlike theirs, a failure here ends
the run instead of becoming a "failed" section. Each reading is a pure function of its
result (`accuracy_reading`, `heads_reading`, `case_type_reading`) and states what the
cases establish, with 95 % intervals; [`arithlens.pipeline`][arithlens.pipeline]
re-exports the public names.
"""

from __future__ import annotations

import math
from typing import Any

from arithlens.report import Section, join_words, plural
from arithlens.stats import CONFIDENCE, Estimate, bonferroni, difference_interval, paired_difference, pct, proportion


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
        lines.append(
            f"{len(measurable)} of {n_total} heads {'lowers' if len(measurable) == 1 else 'lower'} accuracy measurably ({adjusted}): {join_words(labels)}. "
            f"A few heads carry the arithmetic, as in the paper; they sit in layer{'s' if len(layers) > 1 else ''} "
            f"{join_words([str(x) for x in layers])} of 0-{heads.n_layers - 1}."
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
    lines = [f"Accuracy drop when head {name} is zeroed, by case type (§3.4) — {'; '.join(parts)}."]
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
def sections(ctx: Any) -> list[Section]:
    """The accuracy, head-sweep and (when the sweep has case types) Table 3 sections of `ctx`'s run."""
    ev, heads = ctx.evaluation, ctx.heads
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
            heads_reading(heads, ctx.top_head),
            figure=heads.plot(),
            table=heads.top(5),
            csv="heads.csv",
        ),
    ]
    if "case_type" in heads.cases and heads.cases["case_type"].notna().any():
        out.append(Section("Memorize vs change-one (Table 3)", case_type_reading(heads, ctx.top_head), table=_case_type_table(heads, ctx.top_head)))
    return out
