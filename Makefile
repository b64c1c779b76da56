# Two commands for a fresh machine: `make run` and `make test` (see README's Quick start).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[server,postgres]'

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

# Installs, then starts keybroker on the embedded default (SQLite + local files under
# KEYBROKER_HOME, default ./.kbhome), initialising a vault on first run.
run: install
	KEYBROKER_HOME=$${KEYBROKER_HOME:-$(CURDIR)/.kbhome} $(BIN)/keybroker serve

# Installs the dev extras, then lint + type check + the whole test suite (SQLite and PostgreSQL).
test: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: install-dev
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) .kbhome .pytest_cache .mypy_cache .ruff_cache
