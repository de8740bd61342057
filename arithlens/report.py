"""A self-contained HTML report: a table of contents and, per section, a figure with a
two-line reading, an optional table, and the run's model, data, configuration, versions
and timings. plotly.js is embedded once, so the file opens offline.

Example::

    from arithlens.report import Report, Section
    report = Report("arithlens", meta={"model": "SmolLM2-135M-Instruct"})
    report.add(Section("Accuracy", "Two lines saying what it shows.", figure=fig))
    report.write("results/report.html")
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Section:
    """One report section.

    Attributes:
        title: Heading (also the table-of-contents entry).
        reading: A short plain-English reading of what the figure shows.
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
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class Report:
    """A report: a title, run metadata (model, data, configuration, versions, timings) and sections."""

    title: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

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

    def to_html(self) -> str:
        """The report as one HTML document with plotly.js embedded once."""
        from plotly.offline import get_plotlyjs

        anchors = self._anchors()
        toc = "".join(f'<li><a href="#{a}">{html.escape(s.title)}</a></li>' for s, a in zip(self.sections, anchors))
        body = []
        for s, anchor in zip(self.sections, anchors):
            part = [f'<section id="{anchor}"><h2>{html.escape(s.title)}</h2>']
            if s.reading:
                part.append(f'<p class="reading">{html.escape(s.reading)}</p>')
            if s.figure is not None:
                part.append(s.figure.to_html(full_html=False, include_plotlyjs=False))
            if s.table is not None:
                part.append(s.table.to_html(index=False, float_format=lambda x: f"{x:.4g}", classes="table"))
            if s.csv:
                part.append(f'<p class="csv">Data: <a href="{html.escape(s.csv)}">{html.escape(s.csv)}</a></p>')
            part.append("</section>")
            body.append("".join(part))
        meta = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in self.meta.items()
        )
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
.reading {{ background: #f4f7fb; border-left: 4px solid #4a7bd0; padding: 0.6em 1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }} th {{ background: #f6f6f6; }}
.meta th {{ text-align: left; }} .meta td {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(self.title)}</h1>
<table class="meta">{meta}</table>
<h2>Contents</h2><ol>{toc}</ol>
{"".join(body)}
</body></html>"""

    def write(self, path: str) -> str:
        """Write the self-contained HTML file and return its path."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path
