# Set-up: `make run` serves the app locally; `make test` runs every check CI runs.
# Needs Python 3.11+, and Node 20+ with npm for the JavaScript SDK tests (tests/js).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
HOST ?= 127.0.0.1
PORT ?= 8000

BENCH_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/bench
HISTORY_BENCH_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/bench_history

# QUICK=1: the seconds-long versions CI runs, to keep the benchmarks working.
ifdef QUICK
PAYOUT_BENCH_ARGS := --total 2000 --due 300 --concurrency 8 --latency-ms 5
PAYOUT_LIMIT_ARGS := --total 2000 --due 100 --concurrency 64 --latency-ms 5
LOAD_ARGS := --quick
CPU_ARGS := --requests 100 --rounds 1
FUZZ_EXAMPLES := 150
KILL_ROUNDS := 3
else
PAYOUT_BENCH_ARGS := --total 200000 --due 10000 --concurrency 16 --latency-ms 50
PAYOUT_LIMIT_ARGS := --total 20000 --due 1500 --concurrency 64 --latency-ms 50
LOAD_ARGS :=
CPU_ARGS :=
FUZZ_EXAMPLES := 5000
KILL_ROUNDS := 20
endif

.PHONY: install js-deps lint test test-tools test-database bench-setup test-sqlite test-postgres \
	run serve demo migrate bench reliability reliability-tests reliability-load clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The official JavaScript SDK the local QStash server is tested with (pinned in the lockfile);
# reinstalled when node_modules is missing or the lockfile is newer. Needs Node 20+ and npm.
JS_DIR := tests/js
js-deps: $(JS_DIR)/node_modules/.installed

$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package-lock.json
	npm ci --prefix $(JS_DIR) --no-audit --no-fund
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck docker-entrypoint.sh .ci/run scripts/setup-test-tools.sh

# The system tools the tests use (installed when root with apt, else named), then PostgreSQL.
test-tools:
	scripts/setup-test-tools.sh

test-database:
	scripts/setup-test-tools.sh "$(TEST_DATABASE_URL)"

# wrk and a running PostgreSQL for the benchmarks (they create their databases themselves).
bench-setup:
	scripts/setup-test-tools.sh "$(BENCH_DATABASE_URL)"

test-sqlite: test-tools install js-deps
	TEST_DATABASE_URL= $(PY) -m pytest

test-postgres: test-tools test-database install js-deps
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest

# Set-up first, so that a missing tool or database is named before anything runs.
test: test-tools test-database lint test-sqlite test-postgres

migrate: install
	$(VENV)/bin/flask --app wsgi db upgrade

# The whole system: local QStash, the service, a schedule sync and one run of each job.
run: install
	$(PY) -m devtools.devstack run

# The same, once: exits 0 only if every job succeeded.
demo: install
	$(PY) -m devtools.devstack demo

# Only the service, with the settings from the environment or .env.
serve: migrate
	LOG_FORMAT=$${LOG_FORMAT:-text} GUNICORN_BIND=$(HOST):$(PORT) GUNICORN_WORKERS=$${GUNICORN_WORKERS:-2} \
		$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# Performance figures (docs/benchmarks.md): payout throughput on SQLite and PostgreSQL, and under
# a provider's rate limit; then verified deliveries against a bare route under wrk, and where a
# delivery's CPU goes.
bench: install bench-setup
	$(PY) -m bench.payouts_throughput --database-url sqlite:///$(CURDIR)/instance/bench.sqlite3 $(PAYOUT_BENCH_ARGS)
	$(PY) -m bench.payouts_throughput --database-url $(BENCH_DATABASE_URL) $(PAYOUT_BENCH_ARGS)
	$(PY) -m bench.payouts_throughput --database-url sqlite:///$(CURDIR)/instance/bench.sqlite3 \
	    $(PAYOUT_LIMIT_ARGS) --provider throttled --provider-limit 25 --max-requests-per-second 25
	$(PY) -m bench.load.run_load --database both --phases load $(LOAD_ARGS)
	$(PY) -m bench.load.delivery_cpu --database both $(CPU_ARGS)
	$(PY) -m bench.history --postgres-url $(HISTORY_BENCH_DATABASE_URL) $(if $(QUICK),--quick,)

# Side by side with django-qstash (installed into bench/peer/.venv on first use), and start-up.
.PHONY: bench-peer bench-startup
bench-peer: install
	$(PY) -m bench.peer.run --database both $(if $(QUICK),--quick,)

bench-startup: install
	$(PY) -m bench.startup --database both $(if $(QUICK),--quick,)

# The guarantees (docs/reliability.md): fuzzing, secrets, faults, kill loops, a duplicate storm
# and memory per worker. With QUICK=1 the tests part runs exactly what `make test` runs.
reliability: reliability-tests reliability-load

reliability-tests: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) KILL_ROUNDS=$(KILL_ROUNDS) $(PY) -m pytest -p no:cacheprovider \
		--hypothesis-show-statistics tests/fuzz/test_fuzz_security.py tests/app/test_secrets.py \
		tests/app/test_limits.py tests/faults/test_faults.py tests/payouts/test_fault_loops.py \
		tests/payouts/test_exactly_once.py tests/payouts/test_outbox.py

reliability-load: install bench-setup
	$(PY) -m bench.load.run_load --database both --phases storm,memory $(LOAD_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache $(JS_DIR)/node_modules
