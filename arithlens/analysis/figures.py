"""Figure helpers every result's `plot()` shares.

[`format_hovers`][arithlens.analysis.figures.format_hovers] gives every number a hover
label shows a format, so a hover reads `accuracy_drop=0.3`, not `0.29999998211860657`
(plotly express writes its templates as bare `%{y}`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["HOVER_FORMAT", "format_hovers"]

HOVER_FORMAT = ".4~g"
"""d3 format of a hovered number: 4 significant digits, trailing zeros dropped."""

_FIELD = re.compile(r"%\{(x|y|z|text|customdata\[(\d+)\])\}")


def _is_float(values: Any) -> bool:
    if values is None:
        return False
    if isinstance(values, dict) and "dtype" in values:  # plotly's packed arrays
        return str(values["dtype"]).startswith("f")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        return False
    return array.dtype.kind == "f"


def format_hovers(fig: Any) -> Any:
    """Give each bare `%{x}`, `%{y}`, `%{z}`, `%{text}` or `%{customdata[i]}` of `fig`'s hover
    templates that shows floating-point data the format [`HOVER_FORMAT`]; returns `fig`."""
    for trace in fig.data:
        template = getattr(trace, "hovertemplate", None)
        if not template or not isinstance(template, str):
            continue

        def fmt(match: re.Match, trace: Any = trace) -> str:
            name, column = match.group(1), match.group(2)
            values = getattr(trace, "customdata" if column is not None else name, None)
            if column is not None and values is not None:
                values = [row[int(column)] for row in values]
                values = np.asarray(values, dtype=float) if all(isinstance(v, (float, np.floating)) for v in values) else None
            return f"%{{{name}:{HOVER_FORMAT}}}" if _is_float(values) else match.group(0)

        trace.hovertemplate = _FIELD.sub(fmt, template)
    return fig
