"""Copy the markdown cells of the tutorial sources into their executed copies in docs/.

``notebooks/NN_name.py`` (jupytext percent format) are the sources;
``docs/tutorials/NN_name.ipynb`` are the executed copies the docs site renders, written by
``make tutorials``. Re-executing takes minutes on SmolLM2; to publish an edited reading
or explanation, this script copies the markdown cells over instead — only into a copy
whose code cells are identical to its source's (the outputs then still belong to the
code). A copy whose code differs is left alone and reported: run ``make tutorials``.

Usage::

    .venv/bin/python scripts/sync_tutorial_markdown.py           # all tutorials
    .venv/bin/python scripts/sync_tutorial_markdown.py 03 05     # those numbers only
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jupytext
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
RENDERED = ROOT / "docs" / "tutorials"


def sync_markdown(source_path: pathlib.Path) -> str:
    """Sync one tutorial; return "synced", "unchanged", "missing" or "code differs"."""
    rendered = RENDERED / f"{source_path.stem}.ipynb"
    if not rendered.exists():
        return "missing"
    source, executed = jupytext.read(source_path), nbformat.read(rendered, as_version=4)
    if len(source.cells) != len(executed.cells) or any(
        a.cell_type != b.cell_type or (a.cell_type == "code" and a.source != b.source)
        for a, b in zip(source.cells, executed.cells)
    ):
        return "code differs"
    changed = False
    for a, b in zip(source.cells, executed.cells):
        if a.cell_type == "markdown" and a.source != b.source:
            b.source = a.source
            changed = True
    if not changed:
        return "unchanged"
    nbformat.write(executed, rendered)
    return "synced"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", help="two-digit tutorial numbers (default: all)")
    args = parser.parse_args(argv)
    paths = [p for p in sorted(SOURCES.glob("[0-9][0-9]_*.py")) if not args.numbers or p.name[:2] in args.numbers]
    if not paths:
        print("no tutorial source matched", file=sys.stderr)
        return 1
    stale = []
    for path in paths:
        status = sync_markdown(path)
        print(f"{path.name}: {status}")
        if status in ("missing", "code differs"):
            stale.append(path.name)
    if stale:
        print(f"not synced: {', '.join(stale)}; run `make tutorials` to re-execute", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
