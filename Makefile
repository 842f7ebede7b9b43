# streamproc developer entry points. Every target creates the virtualenv and installs the
# package (with dev extras) first, so each works from a fresh clone with no prior step.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv lint format test unit integration security broker broker-stop broker-secure broker-secure-stop registry registry-stop postgres postgres-stop demo bench docs helm helm-lint promtool alert-rules clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install streamproc with dev extras

lint: $(STAMP)  ## ruff (lint + format check) and mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP)  ## the whole test suite but the three-broker tier (starts the local Kafka broker itself)
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

unit: $(STAMP)  ## unit tests only: no broker, seconds
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: $(STAMP)  ## tests against the real broker
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

security: $(STAMP)  ## the tests against the secured broker (SASL_SSL, SCRAM, ACLs) only
	$(BIN)/pytest -m security $(PYTEST_ARGS)

broker:  ## start the local Apache Kafka broker (KRaft, Maven Central jars); prints its address
	@scripts/kafka-local start

broker-stop:  ## stop the local broker
	@scripts/kafka-local stop

broker-secure:  ## start a second local broker requiring TLS, SCRAM-SHA-512 and ACLs; writes client.env
	@scripts/kafka-local --security sasl_ssl start

broker-secure-stop:  ## stop the secured local broker
	@scripts/kafka-local --security sasl_ssl stop

.PHONY: cluster cluster-stop cluster-faults

cluster:  ## start a three-broker local Kafka cluster (KRaft, beside the single broker); prints its bootstrap list
	@scripts/kafka-local --brokers 3 start

cluster-stop:  ## stop the three-broker local cluster
	@scripts/kafka-local --brokers 3 stop

cluster-faults: $(STAMP)  ## the fault scenarios on a three-broker cluster only (marker cluster; starts and stops its own)
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

postgres:  ## start a local PostgreSQL server (the machine's packages); prints its connection URL
	@scripts/postgres-local start

postgres-stop:  ## stop the local PostgreSQL server
	@scripts/postgres-local stop

demo: $(STAMP)  ## end to end on the local broker: topics, bulk backlog + realtime stream, live lag view
	$(BIN)/streamproc demo --bootstrap-servers "$$(scripts/kafka-local start)"

# The broker of the benchmarks: the heap of Kafka's own kafka-server-start.sh (1 GB; at 512 MB
# the old generation filled during a run and G1 paused the broker for 100-200 ms) with G1's 20 ms
# pause goal, and the quick-start JIT of the tests (full C2 compilation kept the broker warming up
# through a whole benchmark run on two cores: throughput rose run after run).
BENCH_BROKER = STREAMPROC_KAFKA_HEAP=1g STREAMPROC_KAFKA_JVM_OPTS="-XX:+UseG1GC \
	-XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1"

bench: $(STAMP)  ## benchmarks against the local broker (not tests)
	$(BIN)/python -m benchmarks.run_all --bootstrap-servers "$$($(BENCH_BROKER) scripts/kafka-local start)"
	$(BIN)/python -m benchmarks.report

# Seconds of load of `make soak` (30 minutes by default).
SOAK_DURATION ?= 1800
.PHONY: soak
soak: $(STAMP)  ## soak run (not a test): demo workload for SOAK_DURATION s, RSS and FDs sampled; docs/reliability.md
	$(BIN)/python -m benchmarks.soak --bootstrap-servers "$$(scripts/kafka-local start)" \
		--duration $(SOAK_DURATION) --docs docs/reliability.md

docs: $(STAMP)  ## build the documentation site strictly into site/ (mkdocs, material theme)
	$(BIN)/mkdocs build --strict --site-dir site

registry:  ## start a local Schema Registry (Apicurio, Confluent API; Maven Central); prints its URL
	@scripts/registry-local start

registry-stop:  ## stop the local Schema Registry
	@scripts/registry-local stop

helm:  ## build the pinned helm once (go install into ~/.cache/streamproc) and print its path
	@scripts/helm --print-path

promtool:  ## promtool check rules + test rules of the alert rules (needs the prometheus package)
	promtool check rules helm/streamproc/files/prometheus-rules.yaml
	promtool test rules tests/promtool/*.test.yaml

alert-rules: $(STAMP)  ## regenerate helm/streamproc/files/prometheus-rules.yaml from the chart's rules template
	$(BIN)/python scripts/alert-rules

helm-lint:  ## helm lint --strict the chart with every helm/streamproc/ci/*-values.yaml
	@for values in helm/streamproc/ci/*-values.yaml; do \
		echo "helm lint --strict -f $$values"; \
		scripts/helm lint --strict helm/streamproc --values "$$values" || exit 1; \
	done

clean:  ## remove the virtualenv, caches and local broker state
	-scripts/kafka-local stop
	-scripts/kafka-local --security sasl_ssl stop
	-scripts/kafka-local --brokers 3 stop
	-scripts/registry-local stop
	-scripts/postgres-local stop
	rm -rf $(VENV) site .streamproc .mypy_cache .ruff_cache .pytest_cache .hypothesis
