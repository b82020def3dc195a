# Every target that runs code installs first, so `make test` / `make train` work on a fresh clone.
# `make install` is idempotent: it reinstalls only when pyproject.toml or constraints.txt changed
# (stamp file in .venv). It installs the exact versions of constraints.txt; `make install UNPINNED=1`
# installs the newest releases that pyproject.toml allows instead. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UNPINNED ?=
# one stamp per mode, so switching between pinned and unpinned reinstalls
STAMP := $(VENV)/.installed$(if $(UNPINNED),-unpinned,-pinned)
CONSTRAINTS := $(if $(UNPINNED),,--constraint constraints.txt)
EXTRAS := train,search,dev
ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-all train lint format benchmark constraints clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the package with its train, search and dev extras (pinned)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v 'is ignored' || true
	@set -o pipefail; PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet $(CONSTRAINTS) --editable '.[$(EXTRAS)]' \
		2>&1 | { grep -v -e 'is ignored: it is neither' || true; }
	@rm -f $(VENV)/.installed*
	@touch $(STAMP)

test: install  ## the whole suite except tests marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install  ## including slow tests (training to convergence, kill -9 / resume)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: install  ## train the default 2-D VAE (options through ARGS="key=value ...")
	$(BIN)/python train.py $(ARGS)

lint: install  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff: fix what it can and reformat
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: install  ## the speed comparisons of benchmarks/ (results in benchmarks/README.md)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

constraints: install  ## rewrite constraints.txt from .venv (refresh: make clean && make constraints UNPINNED=1)
	@{ echo "# Exact versions that 'make install' installs (pip --constraint); 'make install UNPINNED=1'"; \
	   echo "# ignores them. Refresh to the newest allowed releases: make clean && make constraints UNPINNED=1"; \
	   $(BIN)/python -m pip freeze --exclude-editable --all \
	     | grep -v -i -E '^pip==' | LC_ALL=C sort -f; } > constraints.txt
	@rm -f $(VENV)/.installed*
	@touch $(VENV)/.installed-pinned  # .venv now holds exactly the pinned set
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

clean:  ## remove .venv and the caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
