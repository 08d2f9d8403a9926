# Two commands on a fresh machine: `make run` and `make test`. Both build their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Autobahn|Testsuite 0.8.2 runs on Python 2.7 only: its own virtualenv, from pyenv's 2.7.18.
PY27     ?= $(HOME)/.pyenv/versions/2.7.18/bin/python
AB_VENV  ?= .autobahn-venv
AB_STAMP := $(AB_VENV)/.installed
# make run-cluster: how many server processes behind HAProxy.
N ?= 3
# make bench-check / bench-baseline: the quick preset, 7 runs of 10 s, each on a freshly started server (~1.5 min).
BENCH_RUN      ?= quick --repeat 7 --duration 10 --no-live
BENCH_BASELINE ?= bench/baseline/quick.json
BENCH_ATTEMPTS ?= 2

.PHONY: run run-postgres run-cluster test lint typecheck unit clean autobahn vendor-socketio bench-check bench-baseline

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

## Install everything and start the server on 127.0.0.1:4000 (Ctrl-C stops it gracefully).
run: $(STAMP)
	$(BIN)/python -m server $(ARGS)

## The same on PostgreSQL: a local cluster in ./data/pg (created on first use, 127.0.0.1 only), the server with
## DATABASE_URL pointing at it; Ctrl-C stops both. PG_ARGS="--port 5433" if 5432 is taken. README: "On PostgreSQL".
run-postgres: $(STAMP)
	$(BIN)/python -m tools.pg_cluster serve --data ./data/pg $(PG_ARGS) -- $(BIN)/python -m server $(ARGS)

## N server processes (default 3) on that local PostgreSQL, behind HAProxy on 127.0.0.1:4000 (haproxy is installed
## with apt-get when missing and root). ARGS="--port 5000 --pg-port 5433 -- --log-level warning": the tool's
## options, then the servers' after --. Ctrl-C stops HAProxy, the servers, PostgreSQL. README: "Several processes
## behind HAProxy".
run-cluster: $(STAMP)
	$(BIN)/python -m tools.cluster run --processes $(N) $(ARGS)

## Install everything and run the whole suite: lint, type check, tests.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## Regression check: the quick preset as BENCH_RUN says, compared with the committed baseline (median of the runs,
## threshold from their spread: bench/compare.py). Exit 1 on a regression, 0 otherwise. An inconclusive compare
## (exit 3: only latencies or rates moved, while other work kept the machine busier) is run again, BENCH_ATTEMPTS
## times at most. README: "Benchmarks".
bench-check: $(STAMP)
	@for attempt in $$(seq $(BENCH_ATTEMPTS)); do \
	  rm -rf bench/results/check; \
	  $(BIN)/python -m bench run $(BENCH_RUN) --out bench/results/check || exit 2; \
	  $(BIN)/python -m bench compare $(BENCH_BASELINE) bench/results/check; status=$$?; \
	  [ $$status -ne 3 ] && exit $$status; \
	  echo "bench-check: inconclusive, attempt $$attempt of $(BENCH_ATTEMPTS)"; \
	done; exit 3

## Refresh the baseline with the same command, on a machine as quiet as you can make it; then commit it.
bench-baseline: $(STAMP)
	rm -rf bench/results/baseline
	$(BIN)/python -m bench run $(BENCH_RUN) --out bench/results/baseline
	mkdir -p $(dir $(BENCH_BASELINE))
	cp bench/results/baseline/*.json $(BENCH_BASELINE)

## Autobahn|Testsuite (fuzzingclient, cases 1-7, 10, 12-13) against an echo harness on our frame code; exit 1 on
## any FAILED case. Not part of `make test`: it needs Python 2.7 (pyenv), which CI does not have.
## Results and the non-strict cases: docs/autobahn.md.
autobahn: $(STAMP) $(AB_STAMP)
	$(BIN)/python -m tools.autobahn.run --wstest $(AB_VENV)/bin/wstest

$(AB_STAMP): tools/autobahn/requirements.txt
	$(PY27) -m virtualenv --version >/dev/null 2>&1 || $(PY27) -m pip install --quiet 'virtualenv<20.22'
	$(PY27) -m virtualenv --quiet $(AB_VENV)
	$(AB_VENV)/bin/pip install --quiet -r tools/autobahn/requirements.txt
	touch $(AB_STAMP)

## Refresh the chat's vendored Socket.IO browser client (server/web/vendor/) from the npm package: needs npm.
## SIO_VERSION=4.8.1 by default (the frontend's locked version).
vendor-socketio: $(STAMP)
	$(BIN)/python -m tools.vendor_socketio $(if $(SIO_VERSION),--version $(SIO_VERSION))

clean:
	rm -rf $(VENV) $(AB_VENV) tools/autobahn/reports .mypy_cache .pytest_cache .ruff_cache
