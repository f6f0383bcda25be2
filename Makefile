# Lumbar CDS: the single entry point for developers and CI (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test test-fast lint rules-test fmt schema clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.stamp-run

# A developer quick start: no client authentication unless you set LUMBAR_AUTH=jwt yourself.
run: $(VENV)/.stamp-run
	LUMBAR_AUTH=$${LUMBAR_AUTH:-off} $(BIN)/lumbar serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check cds_hooks rules service tests bench
	$(BIN)/ruff format --check cds_hooks rules service tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

rules-test: $(VENV)/.stamp-test
	$(BIN)/lumbar check
	$(BIN)/lumbar test

test: lint rules-test
	$(BIN)/python -m pytest -q

# The edit loop (well under a minute): everything but the end-to-end tests (real service processes) and
# the in-process application tests (app and database per test). `make test` runs them all.
test-fast: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -q -x -m "not e2e and not app"

# The benchmark (docs/performance.md): the service against a bare FastAPI baseline, as ratios. Not a test.
# Its own virtualenv holds the runtime dependencies only, as the container image does: test tools change
# what the service imports (httpx loads its command line, rich and pygments, when they are installed).
BENCH_VENV ?= .venv-bench

$(BENCH_VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e .
	touch $@

bench: $(BENCH_VENV)/.stamp
	$(BENCH_VENV)/bin/python -m bench.run

# Regenerate the JSON Schemas editors use for rule files (a test checks they are current).
schema: $(VENV)/.stamp-run
	$(BIN)/python -m rules.engine.model.jsonschema --write

fmt: $(VENV)/.stamp-test
	$(BIN)/ruff check --fix cds_hooks rules service tests bench
	$(BIN)/ruff format cds_hooks rules service tests bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
