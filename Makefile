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

# mypy cannot follow the editable install's import hook, so it reads the tierwise
# package through a tree of links that mirrors the wheel's layout.
TYPECHECK_ROOT := .typecheck

typecheck: $(STAMP)
	rm -rf $(TYPECHECK_ROOT) && mkdir -p $(TYPECHECK_ROOT)/tierwise
	ln -s ../../protos/tierwise/__init__.py ../../protos/tierwise/py.typed ../../protos/tierwise/v1 \
		../../router ../../cache ../../classifier ../../training $(TYPECHECK_ROOT)/tierwise/
	MYPYPATH=$(TYPECHECK_ROOT) $(VENV)/bin/mypy -p tierwise

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_classifier.py

protos: $(STAMP)
	$(PY) protos/generate.py

clean:
	rm -rf $(VENV) .demo var .mypy_cache .ruff_cache .pytest_cache $(TYPECHECK_ROOT)
