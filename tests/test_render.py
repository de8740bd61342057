"""The HTML report renders in a real browser: every figure drawn, no console error, offline.

A report is built by `arithlens run --quick`'s pipeline on the tiny test model and opened
in headless Chromium (Debian's `chromium` package) with networking off; a script injected
into a copy of the page records uncaught errors and, after load, which plotly figures
have no `svg.main-svg`. Two negative controls check that the probe itself can fail.
Skips (with the reason) when Chromium is not installed: `apt-get install -y chromium`.
"""

import html
import json
import re
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE_HEAD = "<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message))});</script>"
PROBE_TAIL = """<script>window.addEventListener('load',function(){setTimeout(function(){
var figs=document.querySelectorAll('.plotly-graph-div'),empty=[];
figs.forEach(function(f){if(!f.querySelector('svg.main-svg')){empty.push(f.id)}});
var d=document.createElement('pre');d.id='render-probe';
d.textContent=JSON.stringify({figures:figs.length,empty:empty,errors:window.__errors});
document.body.appendChild(d)},300)});</script>"""


# After every figure has drawn: each figure's visible SVG text boxes (page pixels), the
# figure's own box, and its colour bars' boxes. Python decides what is clipped or overlaps.
LAYOUT_PROBE = """<script>window.addEventListener('load',function(){setTimeout(function(){
function box(el){var r=el.getBoundingClientRect();return [r.left,r.top,r.right,r.bottom]}
var out=[];document.querySelectorAll('.plotly-graph-div').forEach(function(div){
var svg=div.querySelector('svg.main-svg');if(!svg){return}
var texts=[];div.querySelectorAll('svg text').forEach(function(t){
 if(!t.textContent.trim()){return}var st=window.getComputedStyle(t);
 if(st.display==='none'||st.visibility==='hidden'||st.opacity==='0'){return}
 var r=t.getBoundingClientRect();if(r.width<1||r.height<1){return}
 var kind=t.closest('.xtick,.ytick')?'tick':t.closest('.colorbar')?'colorbar':t.getAttribute('class')||'text';
 if(t.closest('.textpoint')){kind='label'}if(t.closest('.annotation')){kind='annotation'}if(t.closest('.legend')){kind='legend'}
 texts.push({text:t.textContent,kind:kind,box:box(t)})});
var bars=[];div.querySelectorAll('g.colorbar').forEach(function(g){bars.push(box(g))});
var col=div.closest('.md-content__inner')||document.body;
out.push({id:div.id,box:box(svg),texts:texts,colorbars:bars,column:col.clientWidth})});
var d=document.createElement('pre');d.id='layout-probe';d.textContent=JSON.stringify(out);document.body.appendChild(d)},500)});</script>"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); `make render-check` installs it")


def render(html_path, tmp_path, width: int = 1280) -> dict:
    """Open `html_path` headless, offline, in a window `width` px wide; return figures, empty
    figure ids, page errors, console errors and `layout` (each figure's text and colour-bar boxes)."""
    browser = _browser()
    text = open(html_path, encoding="utf-8").read()
    probed = tmp_path / f"probed-{width}.html"
    tail = PROBE_TAIL + LAYOUT_PROBE + "</body>"
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", tail, 1), encoding="utf-8")
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", f"--window-size={width},900",
        "--proxy-server=127.0.0.1:9", "--dump-dom", probed.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="render-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page never finished loading; browser stderr:\n{done.stderr[-2000:]}"
    result = json.loads(_unescape(match.group(1)))
    layout = re.search(r'<pre id="layout-probe">(.*?)</pre>', done.stdout, re.S)
    result["layout"] = json.loads(_unescape(layout.group(1))) if layout else []
    result["console"] = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or ":ERROR:" in ln)]
    return result


def _unescape(text: str) -> str:
    return html.unescape(text)


def _overlap(a, b, tol: float = 1.0) -> bool:
    """Do two boxes `[left, top, right, bottom]` overlap by more than `tol` px both ways?"""
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


def layout_problems(layout: list[dict]) -> list[str]:
    """Text cut by its figure's edge, labels that overlap each other, and colour bars over labels."""
    problems = []
    for fig in layout:
        left, top, right, bottom = fig["box"]
        for t in fig["texts"]:
            l, tp, r, b = t["box"]
            if l < left - 1 or r > right + 1 or tp < top - 1 or b > bottom + 1:
                problems.append(f"{fig['id']}: {t['kind']} {t['text']!r} is cut by the figure's edge")
        labels = [t for t in fig["texts"] if t["kind"] not in ("tick", "colorbar")]
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                if _overlap(a["box"], b["box"]):
                    problems.append(f"{fig['id']}: {a['kind']} {a['text']!r} overlaps {b['kind']} {b['text']!r}")
            for bar in fig["colorbars"]:
                if _overlap(a["box"], bar):
                    problems.append(f"{fig['id']}: the colour bar covers {a['kind']} {a['text']!r}")
    return problems


@pytest.fixture(scope="module")
def tiny_report(tiny, tmp_path_factory):
    from arithlens.app.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("report")
    return run_pipeline(model=tiny, out=str(out), quick=True)


def test_tiny_report_is_complete(tiny_report):
    """No browser needed: every section computed, CSVs beside the report, the timings table."""
    import pathlib

    text = open(tiny_report, encoding="utf-8").read()
    out = pathlib.Path(tiny_report).parent
    assert "<script src=" not in text  # nothing to fetch: plotly.js is embedded
    assert ": failed</h2>" not in text, "a report section failed to compute"
    for name in ("accuracy.csv", "heads.csv", "cna_table4.csv", "cna_chain.csv", "vo_table8.csv", "circuits_patching.csv", "circuits_knockout.csv"):
        assert (out / name).exists(), name
    for title in ("Arithmetic heads", "Table 4", "Fig. 1", "Table 7", "Table 8", "path patching", "knockout", "END attention", "MLP unembedding probe"):
        assert title in text, title
    assert '<h2 id="timings">Timings</h2>' in text and "head sweep" in text


def test_report_rebuilds_from_saved_results_without_a_model(tiny_report, monkeypatch, capsys):
    """`arithlens report DIR` rewrites the same report.html from DIR/results/ with no model loaded;
    a directory without a saved run is one line of bad input."""
    import pathlib

    from arithlens.app import cli, pipeline
    from arithlens.core import loading

    def no_model(*args, **kwargs):
        raise AssertionError("arithlens report loaded a model")

    monkeypatch.setattr(loading, "load_model", no_model)
    monkeypatch.setattr(pipeline, "load_model", no_model)
    path = pathlib.Path(tiny_report)
    before = path.read_text(encoding="utf-8")
    path.unlink()
    assert cli.main(["report", str(path.parent)]) == 0
    assert path.read_text(encoding="utf-8") == before
    assert (path.parent / "results" / "cna_chain").is_dir() and (path.parent / "results" / "run.json").is_file()
    capsys.readouterr()
    assert cli.main(["report", str(path.parent / "results")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no saved run" in err


def test_report_renders_every_figure_without_errors(tiny_report, tmp_path):
    text = open(tiny_report, encoding="utf-8").read()
    result = render(tiny_report, tmp_path)
    assert result["figures"] == text.count('class="plotly-graph-div"') >= 8
    assert result["empty"] == [] and result["errors"] == [] and result["console"] == []


def test_probe_catches_a_broken_and_an_empty_figure(tmp_path):
    """Negative controls: the probe reports a script error and a figure that never drew."""
    from plotly.offline import get_plotlyjs

    page = tmp_path / "broken.html"
    page.write_text(
        f"<!DOCTYPE html><html><head><script>{get_plotlyjs()}</script></head><body>"
        '<div id="empty" class="plotly-graph-div"></div>'
        "<script>Plotly.newPlot(undefinedVariable, []);</script></body></html>",
        encoding="utf-8",
    )
    result = render(page, tmp_path)
    assert result["empty"] == ["empty"]
    assert result["errors"] and "undefinedVariable" in result["errors"][0]


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The docs site as `mkdocs build` writes it (the rendered tutorials are stored executed)."""
    import pathlib
    import sys

    _browser()
    pytest.importorskip("mkdocs")
    root = pathlib.Path(__file__).resolve().parents[1]
    site = tmp_path_factory.mktemp("site")
    env = {**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(site)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def test_the_site_asks_the_network_for_nothing(built_site):
    """No web fonts, no MathJax or other CDN script: every page works offline."""
    remote = re.compile(r'<(?:script|link|img)[^>]*(?:src|href)="(?:https?:)?//[^"]*"')
    for page in built_site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), f"{page.relative_to(built_site)}: {remote.search(text).group(0)}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page


@pytest.mark.parametrize("width", [700, 1200])
def test_a_tutorial_page_draws_every_figure(built_site, tmp_path, width):
    """Tutorial 02 as the docs site serves it: plotly.js from the site itself, every figure drawn,
    no page error, each figure as wide as the text column (no prompt gutter beside it: it was
    584 px in a 688 px column) and readable (no cut title, no overlapping labels)."""
    page = built_site / "tutorials" / "02_arithmetic_heads" / "index.html"
    assert page.exists(), sorted(p.name for p in (built_site / "tutorials").iterdir())
    result = render(page, page.parent, width=width)  # the probed copy sits beside the page: its relative script paths hold
    assert result["figures"] >= 2
    assert result["empty"] == [] and result["errors"] == []
    for fig in result["layout"]:
        assert fig["box"][2] - fig["box"][0] >= 0.93 * fig["column"], fig["id"]
    assert layout_problems(result["layout"]) == []


def wide_dag():
    """A PE-DAG spread over 30 layers as SmolLM2's is (the tiny model has 2): labels at the
    last layer sit next to the colour bar, neighbours' labels next to each other."""
    import pandas as pd

    from arithlens.cna import PredictionEnhancingDAGResult

    layers = [29, 29, 28, 27, 25, 23, 23, 20, 18, 10]
    nodes = pd.DataFrame({"case": 0, "layer": layers, "neuron": [145, 8191, 3696, 545, 1092, 517, 12, 4000, 77, 2048],
                          "score": [1.0 - 0.08 * i for i in range(10)], "coef": 0.5, "is_root": [False] * 9 + [True], "top_tokens": ""})  # fmt: skip
    edges = pd.DataFrame({"case": 0, "src_layer": [10, 23], "src_neuron": [2048, 517], "dst_layer": [29, 29], "dst_neuron": [145, 8191],
                          "gate_ip": 0.1, "up_ip": 0.1, "drive": 0.2, "relative_drive": [0.3, 0.1]})  # fmt: skip
    return PredictionEnhancingDAGResult(df=edges, nodes=nodes, pairs=edges, table6=pd.DataFrame(), threshold=0.05)


@pytest.fixture(scope="module")
def gallery(tiny, tmp_path_factory):
    """One page with the figure types the report does not show as they come from `plot()`:
    the importance scatter, CNA's bars, the PE-DAG and the head heatmap, each filling its column."""
    from plotly.offline import get_plotlyjs

    from arithlens import cna
    from arithlens.core.interventions import ZeroHead

    prompts = ["3+5=", "2+4=", "7-1="]
    figures = [
        cna.NeuronImportance(mode="exact").run(tiny, prompts).plot(max_points=200),
        cna.ComparativeNeuronScores(intervention=ZeroHead(1, 2)).run(tiny, prompts[:1]).plot(k=10),
        cna.PredictionEnhancingDAG(intervention=ZeroHead(1, 2), k=8).run(tiny, prompts[:1]).plot(),
        cna.HeadAblation().run(tiny, prompts).plot(),
        wide_dag().plot(),
    ]
    body = "".join(
        f.to_html(full_html=False, include_plotlyjs=False, div_id=f"gallery-{i}", default_width="100%") for i, f in enumerate(figures)
    )
    page = tmp_path_factory.mktemp("gallery") / "gallery.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{get_plotlyjs()}</script></head><body>{body}</body></html>", encoding="utf-8")
    return page


@pytest.mark.parametrize("width", [700, 1200])
def test_every_figure_is_readable_at_the_width_it_is_shown(tiny_report, gallery, tmp_path, width):
    """The report's figures and the plots of the gallery, as screenshots at 700 and 1200 px:
    no title or label cut by the figure's edge, no two labels on top of each other, no colour
    bar over a label (measured on the rendered SVG text boxes)."""
    problems = []
    for page in (tiny_report, gallery):
        result = render(page, tmp_path, width=width)
        assert result["layout"] and len(result["layout"]) == result["figures"]
        problems += layout_problems(result["layout"])
    assert not problems, "\n".join(problems)


def test_layout_probe_catches_a_cut_title_and_overlapping_labels(tmp_path):
    """Negative control: a title wider than its figure, two labels on one point, a colour bar on a label."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    fig = go.Figure(go.Scatter(x=[0, 0, 1], y=[0, 0, 1], mode="markers+text", text=["29_145", "29_146", "3_7"],
                               marker={"color": [0, 1, 2], "showscale": True}, textposition="middle right", cliponaxis=False))  # fmt: skip
    fig.update_layout(title="a title far too long for its figure " * 6, xaxis={"range": [0, 1]})
    page = tmp_path / "bad.html"
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id="bad", default_width="100%")
    page.write_text(f"<!DOCTYPE html><html><head><script>{get_plotlyjs()}</script></head><body>{body}</body></html>", encoding="utf-8")
    problems = layout_problems(render(page, tmp_path, width=700)["layout"])
    assert any("is cut by the figure's edge" in p and "title far too long" in p for p in problems)
    assert any("'29_145' overlaps" in p for p in problems)
    assert any("colour bar covers" in p and "3_7" in p for p in problems)
