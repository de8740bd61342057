"""The shape every analysis returns: a tidy DataFrame and a plotly figure.

Each analysis's result is a dataclass deriving from [`Result`][arithlens.analysis.results.Result]: `.df` is a tidy
`pandas.DataFrame` (one row per observation, columns named `layer`, `head`,
`neuron`, `op`, `accuracy_drop`, …), `.plot()` returns a
`plotly.graph_objects.Figure`, and `.to_csv(path)` writes `.df`. In Jupyter a result
renders as its table. `.save(dir)` writes the whole result — table, tensors, provenance — and
[`load_result(dir)`][arithlens.analysis.saving.load_result] opens it again
([`arithlens.analysis.saving`][arithlens.analysis.saving] describes the layout).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
from arithlens.analysis import saving
from arithlens.core.dataset import Case, as_dataset
from arithlens.core.names import Component


@dataclass
class Result:
    """Base class of analysis results: `df` (tidy, columns from the
    [glossary][arithlens.analysis.columns.COLUMNS]), `plot()`, `to_csv(path)`, `save(dir)`.

    Attributes:
        df: The tidy table.
        meta: Where the result came from — `model` (name, revision), `analysis` (class and
            options), `data` (name, class, size) — filled by `Analysis.run`; a loaded result
            also has `versions` (of arithlens, torch, transformers, transformer_lens, pandas).
    """

    df: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)

    unsaved_fields: ClassVar[tuple[str, ...]] = ()
    """Fields `save` leaves out (live models); a loaded result has their defaults."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        saving.saveable(cls)  # load_result rebuilds a saved result by its class name

    def __post_init__(self) -> None:
        if not isinstance(self.df, pd.DataFrame):
            raise TypeError(f"{type(self).__name__}.df must be a pandas DataFrame, not {type(self.df).__name__}")

    def plot(self, **kwargs: Any) -> Any:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def to_csv(self, path: str, **kwargs: Any) -> str:
        self.df.to_csv(path, index=False, **kwargs)
        return path

    def caption(self) -> str:
        """What the table means (scored token, what the other side is, sign conventions), from
        the result's own fields; shown above the table in Jupyter and by `print(result)`."""
        return ""

    def save(self, path: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> str:
        """Write the whole result to the directory `path` and return it: `.df` and every other
        table as parquet, every tensor as safetensors, the rest and `meta` (plus `meta` given
        here and the package versions) as JSON. Open it again with
        [`arithlens.load_result`][arithlens.analysis.saving.load_result]. Fields in
        `unsaved_fields` (live models) are left out."""
        return saving.save_result(self, path, meta=meta)

    def _repr_html_(self) -> str:
        shown = min(len(self.df), REPR_ROWS)
        note = ""
        if shown < len(self.df):
            note = (
                f"<p><em>{shown:,} of {len(self.df):,} rows shown; the whole table is "
                "<code>.df</code></em></p>"
            )
        caption = html.escape(self.caption())
        head = f"<p><strong>{type(self).__name__}</strong>" + (f": {caption}" if caption else "") + "</p>"
        return head + self.df.head(shown).to_html(index=False) + note

    def __str__(self) -> str:
        shown = min(len(self.df), REPR_ROWS)
        head = type(self).__name__ + (f": {self.caption()}" if self.caption() else "")
        note = f"\n({shown:,} of {len(self.df):,} rows shown; the whole table is .df)" if shown < len(self.df) else ""
        return head + "\n" + self.df.head(shown).to_string(index=False, max_colwidth=TOKENS_WIDTH) + note


class Table(pd.DataFrame):
    """A table for reading (e.g. Table 4's layout): prints every column, long text cut to
    `TOKENS_WIDTH` characters, under its caption (`attrs["caption"]`); slices are plain frames."""

    @property
    def _constructor(self) -> type:
        return pd.DataFrame

    def __repr__(self) -> str:
        caption = self.attrs.get("caption", "")
        return (caption + "\n" if caption else "") + self.to_string(index=False, max_colwidth=TOKENS_WIDTH)

    def _repr_html_(self) -> str:
        caption = html.escape(self.attrs.get("caption", ""))
        return (f"<p><em>{caption}</em></p>" if caption else "") + self.to_html(index=False)


saving.saveable(Result)
saving.saveable(Case)
saving.saveable(Component)

REPR_ROWS = 50
"""Rows a result shows in Jupyter before saying how many there are."""

TOKENS_WIDTH = 48
"""Characters of a long text cell (a neuron's top tokens) a printed table shows."""


def case_frame(data: Any, model: Any) -> pd.DataFrame:
    """One row per case with whatever labels the dataset carries (prompts get a bare frame)."""

    frame = as_dataset(data, model.tokenizer).to_frame().reset_index(drop=True)
    if not frame["op"].notna().any():  # free prompts: only the prompt (and any answer) mean anything
        keep = ["prompt"] + (["answer", "target_id", "target_str"] if frame["answer"].astype(bool).any() else [])
        frame = frame[keep]
    return frame


def percent(x: float) -> float:
    """A fraction as a percentage rounded to one decimal, as the papers' tables print it."""
    return round(100.0 * float(x), 1)
