"""A self-contained HTML report: sections of figures, readings, tables and CSVs.

A [`Report`][arithlens.app.report.Report] is a title, run metadata (model, data,
configuration, versions), a timings table and [`Section`][arithlens.app.report.Section]s: a
figure, a short reading, an optional table and a linked CSV each. plotly.js is embedded
once, so the file opens offline; figures fill the page width and keep their titles,
axis titles and hover labels readable there.

Readings never assert what their numbers do not show. They are computed from the
results with the statistics of [`arithlens.core.stats`][arithlens.core.stats] (Wilson and Newcombe
intervals, paired differences, means, Bonferroni), and worded with the helpers here ([`plural`][arithlens.app.report.plural],
[`join_words`][arithlens.app.report.join_words], …). A claim holds when its interval excludes
the opposite; when it does not, the reading says that the cases are too few to tell, with
the count and the interval.

Example:
    ```python
    from arithlens.app.report import Report, Section
    from arithlens.core.stats import paired_difference

    drop = paired_difference([True] * 10 + [False] * 10, [True] * 4 + [False] * 16)
    report = Report("arithlens", meta={"model": "SmolLM2-135M-Instruct"})
    report.add(Section("Accuracy", f"Accuracy fell by {drop.points()}."))
    report.write("results/report.html")
    ```
"""

from __future__ import annotations

import html
import os
import pathlib
import tempfile
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from arithlens.analysis.figures import format_hovers
from arithlens.analysis.saving import load_result


def write_atomically(path: str | os.PathLike, write: Any) -> str:
    """Run `write(tmp)` on a temporary file beside `path`, then move it into place: an
    interrupted write never leaves a truncated file under the final name."""
    path = os.path.abspath(str(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".partial-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


NEURON_LABEL_NOTE = "a neuron label L_N (e.g. 29_545) is neuron N of the FFN of layer L, both counted from 0"
"""How the report names FFN neurons; every section that shows such labels quotes this."""


# ----------------------------------------------------------------------------- saved runs
RESULTS = "results"
"""The folder of a run's output directory that holds its saved results and `run.json`."""


class SavedRun:
    """The results of one `arithlens run`, saved under `DIR/results/`: each analysis's result
    (one folder each, written by `Result.save`) and `run.json` (the few scalars the readings
    quote: the head analysed, the prompt explained, sizes, timings, failures).

    The pipeline computes into one (`keep`, `facts`), then renders the report from the
    results as read back from disk; `arithlens report DIR` renders it again without a model.
    """

    def __init__(self, root: str | os.PathLike, facts: dict[str, Any] | None = None) -> None:
        self.root = pathlib.Path(root)
        self.facts: dict[str, Any] = dict(facts or {})
        self._loaded: dict[str, Any] = {}

    @property
    def folder(self) -> pathlib.Path:
        return self.root / RESULTS

    def keep(self, name: str, result: Any) -> Any:
        """Save `result` as `name` and return it."""
        result.save(self.folder / name)
        return result

    def __contains__(self, name: str) -> bool:
        return (self.folder / name).is_dir()

    def __getitem__(self, name: str) -> Any:
        """The saved result `name`, read from disk (once)."""
        if name not in self._loaded:
            if name not in self:
                raise KeyError(f"no saved result {name!r} under {self.folder}")
            self._loaded[name] = load_result(self.folder / name)
        return self._loaded[name]

    def write(self) -> None:
        """Write `run.json` (the facts)."""
        import json

        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.facts, indent=1, default=str)
        write_atomically(self.folder / "run.json", lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, root: str | os.PathLike) -> "SavedRun":
        """The run saved under `root` (a one-line `ValueError` when it holds none)."""
        import json

        path = pathlib.Path(root) / RESULTS / "run.json"
        if not path.is_file():
            raise ValueError(f"{root} holds no saved run ({path} is missing): run `arithlens run --out {root}` first")
        return cls(root, json.loads(path.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------- wording

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
    """Break a title into `<br>`-joined lines of at most ~`width` characters (each `<br>`
    line on its own; a line with markup, e.g. a `<sup>` subtitle, is kept whole)."""
    if "<br>" in text:
        return "<br>".join(_wrap(part, width) for part in text.split("<br>"))
    if "<" in text or len(text) <= width:
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


TITLE_CHARS = 60
"""Characters per title line: a 16 px title line fits a figure 700 px wide (a narrow window)."""


def prepare_figure(fig: Any, title_width: int = TITLE_CHARS) -> Any:
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
    return format_hovers(fig)


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
        """Write the self-contained HTML file (atomically) and return its path."""
        html_text = self.to_html()
        return write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(html_text, encoding="utf-8"))
