# The front door. `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
COMMAND_PORT ?= 8000
QUERY_PORT ?= 8001
METRICS_PORT ?= 9100
STANDBY_METRICS_PORT ?= 9101
PYTEST_ARGS ?=
DEMO ?=
DEMO_RATE ?= 3

ifeq ($(DEMO),1)
RUN_SETUP := sh -c '$(BIN)/voteledger migrate && $(BIN)/voteledger seed --demo --if-empty'
RUN_EXTRA := "$(BIN)/voteledger demo --rate $(DEMO_RATE) --command-url http://$(HOST):$(COMMAND_PORT) --query-url http://$(HOST):$(QUERY_PORT)"
else
RUN_SETUP := $(BIN)/voteledger migrate
RUN_EXTRA :=
endif

.PHONY: run test lint format migrate clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv module missing; installing python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -e clients/python
	@touch $(STAMP)

## run: the whole stack on this machine, supervised (throwaway PostgreSQL/Redis unless DATABASE_URL/REDIS_URL reach servers); DEMO=1 seeds an empty ledger and keeps live votes coming
run: $(STAMP)
	@VOTELEDGER_LOG_FORMAT=$${VOTELEDGER_LOG_FORMAT:-text} $(BIN)/python -m devtools.devstack serve \
	  --setup "$(RUN_SETUP)" \
	  --announce "\nvoteledger is up\n  chart page   http://$(HOST):$(QUERY_PORT)/\n  command API  http://$(HOST):$(COMMAND_PORT)  (docs: /docs, MCP: /mcp)\n  query API    http://$(HOST):$(QUERY_PORT)  (docs: /docs)\n  projector metrics  http://127.0.0.1:$(METRICS_PORT)/metrics (standby: $(STANDBY_METRICS_PORT))\n  operator token  {VOTELEDGER_OPERATOR_TOKEN}\n  database  {DATABASE_URL}\n  redis     {REDIS_URL}\nA process that exits is restarted; Ctrl-C stops everything.\n" \
	  -- "$(BIN)/python -m infra.serve commands --host $(HOST) --port $(COMMAND_PORT)" \
	     "$(BIN)/python -m infra.serve queries --host $(HOST) --port $(QUERY_PORT)" \
	     "$(BIN)/voteledger project --metrics-port $(METRICS_PORT)" \
	     "$(BIN)/voteledger project --metrics-port $(STANDBY_METRICS_PORT)" $(RUN_EXTRA)

## demo: make run with a seeded demo catalogue (when the ledger is empty) and a trickle of live votes
.PHONY: demo
demo:
	@$(MAKE) --no-print-directory run DEMO=1

## test: the whole suite against real PostgreSQL and Redis
test: $(STAMP)
	$(BIN)/python -m devtools.devstack exec --fast --browser -- $(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff (lint and format), mypy, and the import contracts (pyproject.toml [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(STAMP)
	$(BIN)/voteledger migrate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

## bench: end-to-end benchmarks against same-run baselines (throwaway, durable PostgreSQL/Redis); writes bench/results.json
.PHONY: bench
bench: $(STAMP)
	DEVSTACK_PG_SETTINGS=shared_preload_libraries=pg_stat_statements \
	  $(BIN)/python -m devtools.devstack exec -- $(BIN)/python -m bench.run $(BENCH_ARGS)

## replicas: a drill on one machine: 2 command APIs, 2 query APIs, 3 projectors, one of each SIGKILLed under load; checks no acknowledged vote is lost or doubled (REPLICAS_ARGS='--duration 30 --rate 200')
.PHONY: replicas
replicas: $(STAMP)
	$(BIN)/python -m devtools.devstack exec -- $(BIN)/python -m devtools.replicas $(REPLICAS_ARGS)
