# The two commands a newcomer needs: `make run` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test check lint format types pytest bench seed clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

venv: $(STAMP) ## create the virtual env with the pinned dependencies

run: $(STAMP) ## run the service on http://127.0.0.1:8000 (embedded PostgreSQL unless FUND_DATABASE_URL is set; ARGS="--port 8001")
	$(BIN)/fund serve $(ARGS)

test: check pytest ## lint, type-check and run every test against real PostgreSQL and Redis

check: lint types ## ruff (format and lint) and mypy

lint: $(STAMP) ## ruff format --check and ruff check
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/ruff check src tests scripts

types: $(STAMP) ## mypy --strict
	$(BIN)/mypy

pytest: $(STAMP) ## the test suite only
	$(BIN)/pytest

format: $(STAMP) ## apply ruff format and the safe fixes
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

seed: $(STAMP) ## 100k users and 1M audit logs into the configured database
	$(BIN)/fund seed --users 100000 --audit-logs 1000000

bench: $(STAMP) ## run the benchmarks (1M users, 10M audit logs) and write docs/benchmarks/REPORT.md (ARGS="--quick": a smoke run, into .fund/benchmarks)
	$(BIN)/fund bench $(ARGS)

clean: ## remove the virtual env and local state (.fund: embedded database, secret key)
	rm -rf $(VENV) .fund .mypy_cache .ruff_cache .pytest_cache
