# tierwise: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both create and fill their own virtual environment first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SRC := router cache classifier training protos bench tests

.PHONY: venv demo test lint typecheck unit bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The local CPU build of torch; any later range that 2.13.0 satisfies installs nothing more.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tierwise demo

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(VENV)/bin/mypy router cache classifier training

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_classifier.py

protos: $(STAMP)
	$(PY) -m protos.generate

clean:
	rm -rf $(VENV) .demo var .mypy_cache .ruff_cache .pytest_cache
