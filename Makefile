# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel, pinned: an unpinned torch would drag in gigabytes of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/electra demo

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo-run
