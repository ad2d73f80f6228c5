from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from blueprints import BLUEPRINTS
from devtools.qstash_local import DEV_TOKEN, LocalQStash, LocalQStashConfig, RunningServer, serve
from service import create_app, db, extensions
from service.extensions import get_engine
from tests import probe_jobs
from tests.helpers import (
    ADMIN_TOKEN,
    APP_URL,
    CURRENT_KEY,
    NEXT_KEY,
    AppFactory,
    reset_postgres,
)

SETTING_PREFIXES = (
    "APP_", "NEXT_PUBLIC_APP_URL", "QSTASH_", "DATABASE_URL", "ADMIN_API_TOKEN", "SERVICE_NAME",
    "LOG_", "JOB_", "MAX_BODY_BYTES", "STRIPE_", "SMTP_", "MAIL_", "PAYOUT_", "NOTIFIER",
    "RETENTION_", "METRICS_TOKEN", "PROMETHEUS_MULTIPROC_DIR",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass (TEST_DATABASE_URL set), run only the tests on the test database.

    They are the ones that use the `database_url` fixture, directly or through `env`, `app`,
    `client` or `runner`; the others do not depend on it and ran in the SQLite pass. Tests
    marked `postgres` need PostgreSQL itself and run only in that pass.
    """
    if not os.environ.get("TEST_DATABASE_URL"):
        postgres = [item for item in items if item.get_closest_marker("postgres")]
        config.hook.pytest_deselected(items=postgres)
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        uses = "database_url" in getattr(item, "fixturenames", ())
        (selected if uses else deselected).append(item)
    config.hook.pytest_deselected(items=deselected)
    items[:] = selected


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's environment and .env out of every test."""
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLASK_SKIP_DOTENV", "1")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh, empty database: PostgreSQL when TEST_DATABASE_URL is set, else a SQLite file."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        reset_postgres(url)
        return url
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """Settings of a fully configured service, as environment variables."""
    return {
        "APP_URL": APP_URL,
        "QSTASH_TOKEN": "qstash-test-token",
        "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
        "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
        "QSTASH_CLOCK_TOLERANCE": "30",
        "DATABASE_URL": database_url,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "APP_ENV": "development",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def make_app(request: pytest.FixtureRequest) -> Iterator[AppFactory]:
    """Build apps from settings, migrated unless told otherwise; close their pools afterwards."""
    made: list[Flask] = []
    # A test that uses the `probes` fixture gets the probe jobs next to the real ones.
    blueprints = probe_jobs.WITH_PROBES if "probes" in request.fixturenames else BLUEPRINTS

    def factory(env: dict[str, str], *, migrate: bool = True) -> Flask:
        app = create_app(env, blueprints=blueprints)
        app.config["TESTING"] = True
        made.append(app)
        if migrate:
            db.upgrade(get_engine(app))
        return app

    yield factory
    for app in made:
        extensions.close(app)


@pytest.fixture
def app(make_app: AppFactory, env: dict[str, str]) -> Flask:
    return make_app(env)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged through the root logger; add service_log(captured) for the service's
    own handler."""
    stream = io.StringIO()
    root_handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(root_handler)
    yield stream
    logging.getLogger().removeHandler(root_handler)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the QStash client's retry waits instead of sleeping through them."""
    waits: list[float] = []
    monkeypatch.setattr("service.qstash.api.wait", waits.append)
    return waits


@pytest.fixture
def probes() -> None:
    """Register the probe jobs (tests/probe_jobs.py) for apps make_app creates in this test."""


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file the probe job appends one line to per execution."""
    return tmp_path / "executions.log"


@pytest.fixture
def local_qstash() -> Iterator[tuple[LocalQStash, RunningServer]]:
    """A QStash-compatible server on loopback, accepting any destination (nothing is fired)."""
    local = LocalQStash(LocalQStashConfig(allow_remote_destinations=True))
    with serve(local) as server:
        yield local, server


@pytest.fixture
def qstash_env(env: dict[str, str], local_qstash: tuple[LocalQStash, RunningServer]
               ) -> dict[str, str]:
    """Settings pointing the service at the local QStash server."""
    return {**env, "QSTASH_URL": local_qstash[1].url, "QSTASH_TOKEN": DEV_TOKEN}


# Payouts: ledger rows written straight to the database (the API has tests of its own).


