# Set-up: `make run` serves the app locally; `make test` runs every check CI runs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install lint test test-sqlite test-postgres run serve demo migrate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck docker-entrypoint.sh .ci/run

test-sqlite: install
	$(PY) -m pytest

test-postgres: install
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest

test: lint test-sqlite test-postgres

migrate: install
	$(VENV)/bin/flask --app wsgi db upgrade

# The whole system: local QStash, the service, a schedule sync and one run of each job.
run: install
	$(PY) -m service.devstack run

# The same, once: exits 0 only if all three jobs succeeded.
demo: install
	$(PY) -m service.devstack demo

# Only the service, with the settings from the environment or .env.
serve: migrate
	LOG_FORMAT=$${LOG_FORMAT:-text} GUNICORN_BIND=$(HOST):$(PORT) GUNICORN_WORKERS=$${GUNICORN_WORKERS:-2} \
		$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
