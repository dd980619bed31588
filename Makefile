# The two commands a newcomer needs: `make demo` and `make test`. Both do all set-up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_SRC := protos/offerdesk/v1/offerdesk.proto protos/offerdesk/v1/audit.proto
PROTO_OUT := protos/offerdesk/v1/offerdesk_pb2.py protos/offerdesk/v1/audit_pb2.py

.PHONY: setup proto browser demo test lint freshdesk-app bench bench-policy clean

setup: $(STAMP) $(PROTO_OUT)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Generated code is produced here from protos/, never edited by hand (and never committed).
# A grouped target (&:): one protoc run writes every output.
$(PROTO_OUT) &: $(PROTO_SRC) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTO_SRC)

proto: $(PROTO_OUT)

demo: setup
	$(VENV)/bin/offerdesk demo

# Debian's chromium and chromium-driver for the card's browser tests (apt, when missing).
browser:
	@scripts/ensure_chromium.sh

test: setup browser
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check service explain audit console_adapters tests
	$(VENV)/bin/ruff format --check service explain audit console_adapters tests
	$(VENV)/bin/mypy service explain audit console_adapters

# The Freshdesk sidebar app with the card put in, ready for `fdk pack` in var/freshdesk-app/
# (docs/adapters/freshdesk.md).
freshdesk-app:
	$(PYTHON) scripts/pack_freshdesk_app.py var/freshdesk-app

# Latency, throughput and memory of a real server on loopback, printed against the targets;
# figures in var/bench/bench.json (docs/operations.md#benchmarks).
bench: setup
	$(PY) scripts/bench.py
	$(PY) scripts/bench_scale.py

# offerdesk's policy against peers (propensity-only, rules-only, a VW bandit) on fresh simulated
# traffic; figures in var/bench/policy.json.
bench-policy: setup
	$(PY) -m pip install -q -e '.[policy-bench]'
	$(PY) scripts/bench_policy.py

clean:
	rm -rf var .pytest_cache catboost_info
