# alertrelay — the commands a newcomer needs: `make run`, `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install kafka-jars run demo test test-unit test-integration test-faults lint fmt bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the package and its dev tools

kafka-jars: $(STAMP) ## fetch the Apache Kafka broker jars from Maven Central (cached in dev/.cache)
	$(PY) dev/kafka_local.py fetch

run: install kafka-jars ## start the worker (and a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	PY=$(PY) bash dev/run.sh

demo: install kafka-jars ## end-to-end scenario against local stand-ins; exits 0 when every delivery arrived
	$(PY) dev/demo.py

lint: install ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: install ## format the code
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-unit: install ## unit tests only (no broker)
	$(PY) -m pytest tests/unit -q

test-integration: install kafka-jars ## integration tests on a real Kafka broker and local servers
	$(PY) -m pytest tests/integration -q

test: install kafka-jars lint ## everything: lint, unit, integration and fault-injection tests (~10 min)
	$(PY) -m pytest tests -q -ra --durations=15

test-faults: install kafka-jars ## fault injection: SIGKILLs, outages, rebalances, broker restart (~5 min)
	$(PY) -m pytest tests/integration/test_faults.py -q -s

bench: install kafka-jars ## benchmarks (throughput, latency, memory): writes BENCHMARKS.md and bench/results/
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/run.py $(BENCH_ARGS)

clean: ## remove the virtualenv, caches and local state (keeps the Kafka jars)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .alertrelay dev/.run *.egg-info
