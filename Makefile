# `make repro` sets up .venv and runs the pipeline; `make test` sets up .venv and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# The stages run as `python stages/<name>.py`, so the environment's python must come first.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test lint

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check chestct stages tests benchmarks
