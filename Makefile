# The two commands of the README:
#   make run    install the mirror in .venv and serve Docker Hub on the defaults
#   make test   install what the tests need (apt + pip), lint, type-check, run the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test install install-test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q .

run: install
	$(BIN)/mirror serve $(ARGS)

install-test: $(BIN)/python
	scripts/install-test-deps
	$(BIN)/pip install -q -e '.[test]'

lint: install-test
	$(BIN)/ruff check mirror migrations tests bench
	$(BIN)/ruff format --check mirror migrations tests bench

typecheck: install-test
	$(BIN)/mypy mirror

pytest: install-test
	$(BIN)/python -m pytest $(ARGS)

test: lint typecheck pytest

bench: install-test
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
