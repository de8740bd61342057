"""The HTML report renders in a real browser: every figure drawn, no console error, offline.

A report is built by `arithlens run --quick`'s pipeline on the tiny test model and opened
in headless Chromium (Debian's `chromium` package) with networking off; a script injected
into a copy of the page records uncaught errors and, after load, which plotly figures
have no `svg.main-svg`. Two negative controls check that the probe itself can fail.
Skips (with the reason) when Chromium is not installed: `apt-get install -y chromium`.
"""

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


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); `make render-check` installs it")


def render(html_path, tmp_path) -> dict:
    """Open `html_path` headless, offline; return figures, empty figure ids, page errors and console errors."""
    browser = _browser()
    text = open(html_path, encoding="utf-8").read()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1), encoding="utf-8")
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1280,900",
        "--proxy-server=127.0.0.1:9", "--dump-dom", probed.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="render-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page never finished loading; browser stderr:\n{done.stderr[-2000:]}"
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["console"] = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or ":ERROR:" in ln)]
    return result


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


def test_a_tutorial_page_draws_every_figure(built_site, tmp_path):
    """Tutorial 02 as the docs site serves it: plotly.js from the site itself, every figure drawn, no page error."""
    page = built_site / "tutorials" / "02_arithmetic_heads" / "index.html"
    assert page.exists(), sorted(p.name for p in (built_site / "tutorials").iterdir())
    result = render(page, page.parent)  # the probed copy sits beside the page: its relative script paths hold
    assert result["figures"] >= 2
    assert result["empty"] == [] and result["errors"] == []
