# tierwise: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both create and fill their own virtual environment first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# What CI last passed with: every package's exact version (`make upgrade` refreshes it).
LOCK := constraints.txt
PIP_LOCKED := -m pip install --quiet --constraint $(LOCK) --build-constraint $(LOCK)
SRC := router cache classifier training protos bench tests

.PHONY: venv embedder demo test lint typecheck unit bench protos upgrade clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	# The venv's own pip may predate --build-constraint: the locked pip first.
	$(PY) -m pip install --quiet --constraint $(LOCK) --upgrade pip
	# The local CPU build of torch; any later range that 2.13.0 satisfies installs nothing more.
	$(PY) $(PIP_LOCKED) "torch==2.13.0"
	$(PY) $(PIP_LOCKED) -e '.[dev,train,analytics]'
	touch $(STAMP)

venv: $(STAMP)

# The sentence embedder as served (cache.embedder onnx, the default): exported from the packaged
# model, which needs the train extra; the server only reads it. Remade when the venv is.
EMBEDDER_DIR := var/onnx-embedder

$(EMBEDDER_DIR)/manifest.json: $(STAMP)
	$(VENV)/bin/tierwise cache export-embedder --out $(EMBEDDER_DIR)

embedder: $(EMBEDDER_DIR)/manifest.json

demo: $(STAMP) $(EMBEDDER_DIR)/manifest.json
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

# Test files spread over up to four workers (pytest-xdist), one file per worker at a time so a
# module's fixtures are built once; most tests wait on real servers, and each worker holds ~2 GB.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

unit: $(STAMP) $(EMBEDDER_DIR)/manifest.json
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_classifier.py

protos: $(STAMP)
	$(PY) protos/generate.py

# Refresh the lock: the newest versions pyproject.toml's ranges allow, installed into a scratch
# venv and frozen; then the stubs are regenerated with the new grpcio-tools and the tests run.
# Commit constraints.txt (and the stubs) only if `make test` passes.
UPGRADE_VENV := .venv-upgrade

upgrade:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(UPGRADE_VENV)/bin/python -m pip install --quiet -e '.[dev,train,analytics]'
	{ echo "# What CI passed with: pip constraints for make and .ci/run, written by \`make upgrade\`."; \
	  echo "# torch's local build label (+cpu) is dropped: ==2.13.0 matches the local CPU build and PyPI's."; \
	  $(UPGRADE_VENV)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]*)[+].*/\1/'; \
	} > $(LOCK)
	rm -rf $(UPGRADE_VENV)
	$(MAKE) protos test

clean:
	rm -rf $(VENV) $(UPGRADE_VENV) .venv-core .demo var .mypy_cache .ruff_cache .pytest_cache $(TYPECHECK_ROOT)
