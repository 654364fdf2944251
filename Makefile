# The course in two commands:  `make course`  and  `make test`.
# Both create the virtual environment (.venv) and install what is missing first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROFILE ?= quick
NOTEBOOKS ?=

.PHONY: setup course test test-fast bench gpu-check lab clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)          ## create .venv and install the course

course: $(STAMP)         ## execute every notebook headlessly (PROFILE=quick|bench_cpu|full)
	$(PY) -m bloodlib run --profile $(PROFILE) $(NOTEBOOKS)

test: $(STAMP)           ## the whole test suite, notebooks included
	$(PY) -m pytest

test-fast: $(STAMP)      ## unit tests only (no notebook execution)
	$(PY) -m pytest -m "not notebook"

bench: $(STAMP)          ## benchmark NOTEBOOKS="05" in PROFILE=bench_cpu, writes results/reference/
	$(PY) -m bloodlib bench --profile $(if $(filter quick,$(PROFILE)),bench_cpu,$(PROFILE)) $(NOTEBOOKS)

gpu-check: $(STAMP)      ## on a GPU: each full model's speed, memory and projected hours
	$(PY) -m bloodlib.gpu_check

lab: $(STAMP)            ## open the course in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

clean:                   ## remove outputs (keeps .venv and data)
	rm -rf outputs .pytest_cache
