# Every target that runs code installs first, so `make test` / `make train` work on a fresh clone.
# `make install` is idempotent: it reinstalls only when pyproject.toml changed (stamp file in .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-all train lint format benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v 'is ignored' || true
	@set -o pipefail; $(BIN)/python -m pip install --quiet --editable '.[dev]' 2>&1 \
		| { grep -v -e 'is ignored: it is neither' || true; }
	@touch $(STAMP)

test: install  ## the whole suite except tests marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install  ## including slow tests (training to convergence, kill -9 / resume)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: install
	$(BIN)/python train.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: install
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
