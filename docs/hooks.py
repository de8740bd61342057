"""mkdocs hooks: ship plotly.js with the site, and fail the strict build on missing docstrings.

* **plotly.js.** The tutorial notebooks are stored without the 4 MB plotly.js bundle that
  plotly's ``notebook`` renderer embeds in the first figure output (tests/test_notebooks.py
  strips it); the theme override (docs/overrides/main.html) loads
  ``javascripts/plotly.min.js`` in every page's head instead, and :func:`on_post_build`
  copies that file from the installed plotly package, so the built site works offline and
  the file is never committed.
* **Offline.** The theme loads no web fonts (``theme.font: false``); :func:`on_post_page`
  drops the MathJax loaders the stored notebook outputs carry (plotly's figures and
  nbconvert's template point at a CDN; no page typesets maths) and nbconvert's empty
  ``<script src="">``, so no page asks the network for anything.
* **Docstrings.** :func:`on_pre_build` loads the documented modules with griffe and logs a
  warning — which ``mkdocs build --strict`` turns into a failure — for every public
  module-level class or function, and every public ``run`` method, without a docstring.
  ``BASELINE`` lists the gaps that existed when the check was introduced; remove an entry
  once its docstring is written (a documented baseline entry is reported at INFO level).
"""

from __future__ import annotations

import logging
import os
import re
import shutil

log = logging.getLogger("mkdocs.plugins.arithlens.docstrings")

# The packages whose modules have API reference pages (docs/api/*.md); the walk visits
# every submodule and skips aliases (re-exports), so each definition is checked once.
DOCUMENTED = (
    "arithlens", "arithlens.core", "arithlens.data", "arithlens.analysis", "arithlens.cna", "arithlens.circuits",
    "arithlens.app", "arithlens.testing",
)  # fmt: skip

BASELINE: set[str] = set()


def missing_docstrings(module: object) -> list[str]:
    """Paths of public classes, functions and ``run`` methods without a docstring."""
    missing: list[str] = []

    def walk(obj) -> None:
        for name, member in obj.members.items():
            if name.startswith("_") or member.is_alias:
                continue
            if member.is_module:
                walk(member)
            elif member.is_class or member.is_function:
                if not member.docstring:
                    missing.append(member.path)
                if member.is_class:
                    run = member.members.get("run")
                    if run is not None and not run.is_alias and run.is_function and not run.docstring:
                        missing.append(run.path)

    walk(module)
    return missing


def on_pre_build(config, **kwargs) -> None:
    import griffe

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found: list[str] = []
    for name in DOCUMENTED:
        found += missing_docstrings(griffe.load(name, search_paths=[root]))
    for path in sorted(set(found)):
        if path in BASELINE:
            continue
        log.warning(f"missing docstring: {path} (public API; write one, Google style)")
    for path in sorted(BASELINE - set(found)):
        log.info(f"docstring baseline: {path} is documented now; remove it from BASELINE in docs/hooks.py")


def on_post_build(config, **kwargs) -> None:
    import plotly

    source = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package at {source}")
    target = os.path.join(config["site_dir"], "javascripts", "plotly.min.js")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)


# A MathJax loader from a CDN (plotly's notebook output, nbconvert's template), and the
# empty script tag nbconvert writes when no MathJax URL is configured.
MATHJAX = re.compile(r'<script[^>]*src="(?:https?:)?//[^"]*mathjax[^"]*"[^>]*>\s*</script>|<script src="">\s*</script>', re.I)


def on_post_page(output: str, page, config) -> str:
    return MATHJAX.sub("", output)
