# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint demo bench protos clean

setup: $(STAMP)

# torch is pinned and installed first: the CPU wheel is local; anything else lets pip pull CUDA.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/genserve models demo

# The demo models (and demo images) are built once, only if the models folder lacks them.
run: setup
	$(BIN)/genserve models demo --if-missing
	$(BIN)/genserve serve

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerates src/genserve/api/grpc/gen/ from protos/ (checked in; a test catches a stale copy).
protos: setup
	$(BIN)/python -m genserve.api.grpc.codegen

bench: setup
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/rest_overhead.py

clean:
	rm -rf $(VENV) .genserve-cache .pytest_cache
