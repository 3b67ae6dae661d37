# Gristmill: two commands for a new user.
#   make run   -> creates .venv, installs, bootstraps a local model if none, starts the gateway
#   make test  -> creates .venv if missing, installs dev dependencies, runs the whole suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint bench-overhead bench-ingest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c 'from feedback_store._native import main; main()'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/gristmill serve

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check gateway redaction feedback_store trainer tests bench

bench-overhead: $(STAMP)
	$(BIN)/python bench/completion_overhead.py

bench-ingest: $(STAMP)
	$(BIN)/python bench/telemetry_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
