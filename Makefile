# One entry point per task, used alike by the README, .ci/run and developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint format check bench bench-quick chaos chaos-quick clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv          ## the whole flow against the sandbox, on this machine
	$(BIN)/provisioner demo

test: venv          ## the test suite (needs Redis and PostgreSQL; .ci/run starts them)
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test

bench: venv         ## benchmarks; writes bench/results/
	$(BIN)/python -m bench

bench-quick: venv
	$(BIN)/python -m bench --quick

# SF_EVENTS_TRANSPORT=pubsub make chaos: the same run over the Pub/Sub API.
CHAOS_TRANSPORT := --transport $(or $(SF_EVENTS_TRANSPORT),cometd)

chaos: venv         ## the reliability run: kills, restarts and faults under load
	$(BIN)/python -m bench.chaos $(CHAOS_TRANSPORT)

chaos-quick: venv
	$(BIN)/python -m bench.chaos --quick $(CHAOS_TRANSPORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo .sandbox
