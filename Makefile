# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch is the CPU build (2.13.0+cpu), which PyPI does not carry: it comes from a local wheel
# folder where the machine has one, else from PyTorch's CPU wheel page.
TORCH_WHEELS ?= $(or $(wildcard /opt/wheels),https://download.pytorch.org/whl/cpu/torch/)
# One resolution for the machines genserve is tested on; `make lock` on any host gives the same file.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --group setup --constraint constraints.txt \
	$(LOCK_TARGET) --find-links $(TORCH_WHEELS) --quiet --output-file $(LOCK) \
	--custom-compile-command 'make lock'

.PHONY: setup run test lint demo bench protos lock lock-upgrade clean

setup: $(STAMP)

# Installs exactly the lock: uv (pinned by the lock) is bootstrapped with the venv's pip, then
# `uv pip sync` makes the venv match the lock, removing anything it does not list. No dependency
# is resolved here, so nothing can move under a release upstream. Bytecode is compiled at install
# (as pip does; uv does not by default): where PYTHONDONTWRITEBYTECODE is set, every process the
# server or the tests start would otherwise compile torch and transformers from source again.
$(STAMP): $(LOCK) pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps $$(grep -E '^uv==' $(LOCK))
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python --find-links $(TORCH_WHEELS) $(LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolves pyproject.toml's ranges to exact pins, keeping every pin that still satisfies them.
lock: setup
	$(UV_COMPILE)

# Moves every pin to the newest release the ranges allow (torch stays the constraints' CPU build).
lock-upgrade: setup
	$(UV_COMPILE) --upgrade

demo: setup
	$(BIN)/genserve models demo

# The demo models (and demo images) are built once, only if the models folder lacks them.
run: setup
	$(BIN)/genserve models demo --if-missing
	$(BIN)/genserve serve

# `uv pip check` fails, naming the package, when what is installed does not fit together;
# lint-imports checks the layers and doors contracts in pyproject.toml.
test: setup
	$(BIN)/uv pip check -q --python $(BIN)/python
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# Regenerates src/genserve/api/grpc/gen/ from protos/ with the locked grpcio-tools (checked in;
# a test catches a stale copy).
protos: setup
	$(BIN)/python -m genserve.api.grpc.codegen

bench: setup
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/rest_overhead.py

clean:
	rm -rf $(VENV) .genserve-cache .pytest_cache
