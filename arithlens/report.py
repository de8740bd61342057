"""A self-contained HTML report, and the statistics every reading in it is derived from.

A [`Report`][arithlens.report.Report] is a title, run metadata (model, data,
configuration, versions), a timings table and [`Section`][arithlens.report.Section]s: a
figure, a short reading, an optional table and a linked CSV each. plotly.js is embedded
once, so the file opens offline; figures fill the page width and keep their titles,
axis titles and hover labels readable there.

Readings never assert what their numbers do not show. They are computed from the
results with the helpers here:

* [`proportion_interval`][arithlens.report.proportion_interval] — the Wilson score
  interval of an accuracy (`k` correct of `n`);
* [`difference_interval`][arithlens.report.difference_interval] — two accuracies on
  different cases (Newcombe's hybrid score interval, built from the Wilson intervals);
* [`paired_difference`][arithlens.report.paired_difference] — two accuracies on the same
  cases, e.g. before and after an ablation (Newcombe's interval for paired proportions);
* [`mean_interval`][arithlens.report.mean_interval] — a mean over cases (Student t).

Each returns an [`Estimate`][arithlens.report.Estimate]: a value with a 95 % interval and
the case count, which says whether it is distinguishable from zero. A claim holds when
its interval excludes the opposite; when it does not, the reading says that the cases
are too few to tell, with the count and the interval.

Example:
    ```python
    from arithlens.report import Report, Section, proportion_interval, paired_difference

    low, high = proportion_interval(47, 100)            # (0.375, 0.567)
    drop = paired_difference([True] * 10 + [False] * 10, [True] * 4 + [False] * 16)
    drop.above_zero                                     # True: the ablation lowers accuracy
    report = Report("arithlens", meta={"model": "SmolLM2-135M-Instruct"})
    report.add(Section("Accuracy", f"Accuracy fell by {drop.points()}."))
    report.write("results/report.html")
    ```
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, Sequence

import pandas as pd

CONFIDENCE = 0.95
"""The confidence level of every interval a reading quotes."""

NEURON_LABEL_NOTE = "a neuron label L_N (e.g. 29_545) is neuron N of the FFN of layer L, both counted from 0"
"""How the report names FFN neurons; every section that shows such labels quotes this."""


# ----------------------------------------------------------------------------- statistics
def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be strictly between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _count(k: Any, n: Any) -> tuple[float, int]:
    n_int = int(n)
    if n_int != n or n_int < 0:
        raise ValueError(f"n={n!r} must be a non-negative integer case count")
    k_f = float(k)
    if not math.isfinite(k_f) or k_f < -1e-9 or k_f > n_int + 1e-9:
        raise ValueError(f"k={k!r} must be a count between 0 and n={n_int}")
    return min(max(k_f, 0.0), float(n_int)), n_int


def proportion_interval(k: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion: `k` successes out of `n`.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at
    0 % or 100 %, which small report samples often hit. `n = 0` gives `(0, 1)`: nothing
    is known. `k` may be fractional (an accuracy averaged over several random draws).

    Args:
        k: Successes (e.g. correctly answered cases).
        n: Cases.
        confidence: Coverage of the interval.

    Returns:
        `(low, high)` as fractions.

    Example:
        ```python
        proportion_interval(0, 8)      # (0.0, 0.324): 0 of 8 is compatible with up to 32 %
        ```
    """
    k, n = _count(k, n)
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A quantity with its confidence interval and the number of cases behind it.

    Attributes:
        value: The point estimate (a fraction for accuracies and their differences).
        low: Lower end of the interval (NaN when it cannot be computed).
        high: Upper end of the interval (NaN when it cannot be computed).
        n: Cases behind the estimate.
        confidence: Coverage of the interval.
    """

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def above_zero(self) -> bool:
        """Whether the whole interval is above zero (a positive effect the cases establish)."""
        return bool(math.isfinite(self.low) and self.low > 0)

    @property
    def below_zero(self) -> bool:
        """Whether the whole interval is below zero."""
        return bool(math.isfinite(self.high) and self.high < 0)

    @property
    def known(self) -> bool:
        """Whether the sign is established (the interval excludes zero)."""
        return self.above_zero or self.below_zero

    def negated(self) -> "Estimate":
        """The same estimate of the opposite quantity (a drop as a rise)."""
        return Estimate(-self.value, -self.high, -self.low, self.n, self.confidence)

    def change(self, digits: int = 0) -> str:
        """A drop (`before − after`) in words: `"a drop of 16 points [...]"` or `"a rise of 2 points [...]"`."""
        if self.value < 0:
            return f"a rise of {self.negated().points(digits)}"
        return f"a drop of {self.points(digits)}"

    def ci(self, scale: float = 100.0, unit: str = "", digits: int = 0) -> str:
        """`"95% CI 8 to 24"` in the given scale (percentage points by default).

        More decimals are shown when the rounded ends would otherwise look equal.
        """
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "no interval: too few cases"
        lo, hi = self.low * scale, self.high * scale
        digits = _digits_apart(lo, hi, digits)
        return f"{round(100 * self.confidence)}% CI {_num(lo, digits)}{unit} to {_num(hi, digits)}{unit}"

    def points(self, digits: int = 0) -> str:
        """A difference of accuracies: `"16 points [95% CI 8 to 24]"`."""
        digits = _digits_apart(self.low * 100, self.high * 100, digits) if math.isfinite(self.low) else digits
        value = _num(100 * self.value, digits)
        unit = "point" if value in ("1", "−1") else "points"
        return f"{value} {unit} [{self.ci(digits=digits)}]"

    def percent(self, digits: int = 0) -> str:
        """A proportion: `"47% [95% CI 37% to 57%]"`."""
        digits = _digits_apart(self.low * 100, self.high * 100, digits) if math.isfinite(self.low) else digits
        return f"{_num(100 * self.value, digits)}% [{self.ci(unit='%', digits=digits)}]"


def _digits_apart(low: float, high: float, digits: int, most: int = 2) -> int:
    """The fewest decimals (from `digits`, at most `most`) that keep two different ends apart."""
    while digits < most and high > low and _num(low, digits) == _num(high, digits):
        digits += 1
    return digits


def num(x: float, digits: int = 1, sign: bool = False) -> str:
    """A number as the readings print it: a true minus sign, never a negative zero (`"−0.3"`, `"0.0"`);
    `sign=True` also marks positive values (`"+0.3"`)."""
    if not math.isfinite(float(x)):
        return "n/a"
    text = _num(float(x), digits)
    return "+" + text if sign and not text.startswith("−") and float(text) != 0 else text


def _num(x: float, digits: int = 0) -> str:
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "−")


def proportion(k: float, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The proportion `k / n` with its Wilson interval (`value` NaN when `n = 0`)."""
    k_f, n_i = _count(k, n)
    low, high = proportion_interval(k_f, n_i, confidence)
    return Estimate(k_f / n_i if n_i else float("nan"), low, high, n_i, confidence)


def difference_interval(k1: float, n1: int, k2: float, n2: int, confidence: float = CONFIDENCE) -> Estimate:
    """`p1 − p2` for proportions measured on different cases (Newcombe's hybrid score interval).

    The interval combines the two Wilson intervals (Newcombe 1998, method 10). Applied to
    two accuracies measured on the *same* cases it is conservative (wider than the paired
    interval), so a difference it establishes is established.

    Returns:
        An [`Estimate`][arithlens.report.Estimate] of `p1 − p2` with `n = min(n1, n2)`.
    """
    k1, n1 = _count(k1, n1)
    k2, n2 = _count(k2, n2)
    if n1 == 0 or n2 == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), min(n1, n2), confidence)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = proportion_interval(k1, n1, confidence)
    l2, u2 = proportion_interval(k2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Estimate(d, max(-1.0, low), min(1.0, high), min(n1, n2), confidence)


def paired_difference(first: Iterable[Any], second: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """`p_first − p_second` for two outcomes of the same cases (e.g. correct before / after an ablation).

    Newcombe's (1998) method 10 for paired proportions: the two Wilson intervals combined
    with the correlation φ of the paired outcomes. Cases where both outcomes agree carry
    no evidence of a difference; the interval narrows as the flips grow one-sided.

    Args:
        first: Per case, a bool or a fraction in [0, 1] (e.g. correct on the original model).
        second: The same cases' other outcome (e.g. correct with a head ablated).

    Returns:
        An [`Estimate`][arithlens.report.Estimate] of the difference (positive: `first`
        is higher — for before/after an ablation, a drop).
    """
    x = [float(v) for v in first]
    y = [float(v) for v in second]
    if len(x) != len(y):
        raise ValueError(f"paired outcomes must have one value per case each: got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    a = sum(min(u, v) for u, v in zip(x, y))  # both right (fractions: expected count)
    b = sum(max(u - v, 0.0) for u, v in zip(x, y))  # first right only
    c = sum(max(v - u, 0.0) for u, v in zip(x, y))  # second right only
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_interval(a + b, n, confidence)
    l2, u2 = proportion_interval(a + c, n, confidence)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's continuity-corrected correlation (his recommended form of method 10).
    num = max(a * d - b * c - n / 2, 0.0) if a * d > b * c else a * d - b * c
    phi = num / math.sqrt(denom) if denom > 0 else 0.0
    diff = p1 - p2
    dl = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    low, high = diff - math.sqrt(max(dl, 0.0)), diff + math.sqrt(max(du, 0.0))
    return Estimate(diff, max(-1.0, low), min(1.0, high), n, confidence)


def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5); exact for df = 1, 2."""
    if df == 1:
        return math.tan(math.pi * (q - 0.5))
    if df == 2:
        p = 2 * q - 1
        return p * math.sqrt(2 / (1 - p * p))
    z = NormalDist().inv_cdf(q)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_interval(values: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """The mean over cases with its Student-t interval (no interval with fewer than 2 finite values)."""
    xs = [float(v) for v in values]
    xs = [v for v in xs if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), n, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = _t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, confidence)


def bonferroni(confidence: float, tests: int) -> float:
    """The per-test confidence that keeps `tests` intervals jointly at `confidence`."""
    return 1 - (1 - confidence) / max(1, int(tests))


def pct(x: float, digits: int = 0) -> str:
    """A fraction as a percentage: `pct(0.4712) == "47%"` (`"n/a"` for NaN)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{_num(100 * float(x), digits)}%"


def count_phrase(k: int, n: int, noun: str = "case") -> str:
    """`"3 of 8 cases"`."""
    return f"{k} of {n} {noun}{'' if n == 1 else 's'}"


def plural(n: int, noun: str) -> str:
    """`"1 case"`, `"8 cases"`."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def join_words(items: Sequence[str], last: str = "and") -> str:
    """`"a, b and c"`."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


# ----------------------------------------------------------------------------- document
@dataclass
class Section:
    """One report section.

    Attributes:
        title: Heading (also the table-of-contents entry).
        reading: Plain-English reading of the numbers, derived from them (paragraphs split on blank lines or newlines).
        figure: A plotly Figure, or None.
        table: A DataFrame shown under the figure, or None.
        csv: Name of a CSV written beside the report, linked from the section.
    """

    title: str
    reading: str = ""
    figure: Any = None
    table: pd.DataFrame | None = None
    csv: str | None = None

    @property
    def anchor(self) -> str:
        """The section's HTML id, derived from its title."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


def _wrap(text: str, width: int) -> str:
    """Break a plain title into `<br>`-joined lines of at most ~`width` characters."""
    if "<br>" in text or len(text) <= width:
        return text
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "<br>".join(lines)


def prepare_figure(fig: Any, title_width: int = 90) -> Any:
    """A copy of `fig` laid out for the report's page width.

    The title is wrapped (never clipped) and left-aligned with room above the plot, the
    figure fills its container's width, and hover labels show full trace names.
    """
    import plotly.graph_objects as go

    fig = go.Figure(fig)
    title = fig.layout.title.text or ""
    wrapped = _wrap(title, title_width)
    lines = wrapped.count("<br>") + 1 if title else 0
    margin = fig.layout.margin
    top = max(margin.t if margin.t is not None else 0, 50 + 24 * lines)
    # Facet and subplot titles sit just above the plot area: leave them room too.
    if any(a.yref == "paper" and (a.y or 0) >= 1 for a in fig.layout.annotations or ()):
        top += 18
    fig.update_layout(
        title={"text": wrapped, "x": 0.01, "xanchor": "left", "font": {"size": 16}},
        margin={"t": top, "l": margin.l if margin.l is not None else 70, "r": margin.r if margin.r is not None else 30},
        autosize=True,
        width=None,
        hoverlabel={"namelength": -1, "font": {"size": 13}},
        font={"size": 13},
    )
    return fig


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.reading { background: #f4f7fb; border-left: 4px solid #4a7bd0; padding: 0.4em 1em; }
.reading p { margin: 0.4em 0; }
.figure { width: 100%; min-height: 200px; margin-top: 0.8em; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f6f6f6; }
.meta th, .meta td, .timings th:first-child, .timings td:first-child { text-align: left; }
"""


@dataclass
class Report:
    """A report: a title, run metadata (model, data, configuration, versions), timings and sections.

    Attributes:
        title: The page title.
        meta: Run metadata shown as a two-column table.
        sections: The sections, in order.
        timings: Wall seconds per stage, shown as the timings table (with the total).
        cpu: CPU seconds per stage (optional second column of the timings table).
    """

    title: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, *sections: Section) -> "Report":
        """Append sections; returns the report for chaining."""
        self.sections.extend(sections)
        return self

    def _anchors(self) -> list[str]:
        """Section anchors, made unique (two sections may share a title)."""
        seen: dict[str, int] = {}
        anchors = []
        for s in self.sections:
            n = seen.get(s.anchor, 0)
            seen[s.anchor] = n + 1
            anchors.append(s.anchor if n == 0 else f"{s.anchor}-{n + 1}")
        return anchors

    def _timings_html(self) -> str:
        if not self.timings:
            return ""
        cpu = self.cpu or {}
        head = "<tr><th>stage</th><th>wall seconds</th>" + ("<th>CPU seconds</th>" if cpu else "") + "</tr>"
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:,.1f}</td>" + (f"<td>{cpu.get(k, float('nan')):,.1f}</td>" if cpu else "") + "</tr>"
            for k, v in self.timings.items()
        )
        total = sum(self.timings.values())
        total_cpu = f"<th>{sum(cpu.values()):,.1f}</th>" if cpu else ""
        note = (
            "<p>CPU seconds count every thread of this process; on an idle machine wall time is about CPU time "
            "divided by the cores used, so a wall time far above that means the machine was busy.</p>"
            if cpu
            else ""
        )
        return (
            '<h2 id="timings">Timings</h2><div class="table-wrap"><table class="timings">'
            f"{head}{rows}<tr><th>total</th><th>{total:,.1f} ({total / 60:.1f} min)</th>{total_cpu}</tr></table></div>{note}"
        )

    def to_html(self) -> str:
        """The report as one HTML document with plotly.js embedded once."""
        from plotly.offline import get_plotlyjs

        anchors = self._anchors()
        toc = "".join(f'<li><a href="#{a}">{html.escape(s.title)}</a></li>' for s, a in zip(self.sections, anchors))
        if self.timings:
            toc += '<li><a href="#timings">Timings</a></li>'
        body = []
        for s, anchor in zip(self.sections, anchors):
            part = [f'<section id="{anchor}"><h2>{html.escape(s.title)}</h2>']
            paragraphs = [p.strip() for p in re.split(r"\n+", s.reading or "") if p.strip()]
            if paragraphs:
                part.append('<div class="reading">' + "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs) + "</div>")
            if s.figure is not None:
                fig = prepare_figure(s.figure)
                part.append(
                    '<div class="figure">'
                    + fig.to_html(
                        full_html=False,
                        include_plotlyjs=False,
                        div_id=f"figure-{anchor}",
                        default_width="100%",
                        config={"responsive": True, "displaylogo": False},
                    )
                    + "</div>"
                )
            if s.table is not None:
                table = s.table.to_html(index=False, float_format=lambda x: f"{x:.4g}", classes="table", na_rep="")
                part.append(f'<div class="table-wrap">{table}</div>')
            if s.csv:
                part.append(f'<p class="csv">Data: <a href="{html.escape(s.csv)}">{html.escape(s.csv)}</a></p>')
            part.append("</section>")
            body.append("".join(part))
        meta = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in self.meta.items()
        )
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(self.title)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>{_CSS}</style></head><body>
<h1>{html.escape(self.title)}</h1>
<div class="table-wrap"><table class="meta">{meta}</table></div>
<h2>Contents</h2><ol>{toc}</ol>
{"".join(body)}
{self._timings_html()}
</body></html>"""

    def write(self, path: str | os.PathLike) -> str:
        """Write the self-contained HTML file and return its path."""
        path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path
