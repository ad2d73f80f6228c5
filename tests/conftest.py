from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from service import create_app, db, extensions
from service.db import utcnow
from service.extensions import get_engine
from service.payouts.models import Expert, Notification, PaymentTransfer
from service.qstash_local import DEV_TOKEN, LocalQStash, LocalQStashConfig, RunningServer, serve
from tests.helpers import ADMIN_TOKEN, APP_URL, CURRENT_KEY, NEXT_KEY

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


def reset_postgres(url: str) -> None:
    """Drop and recreate the public schema of the test database."""
    parsed = make_url(db.normalise_url(url))
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


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


class AppFactory(Protocol):
    def __call__(self, env: dict[str, str], *, migrate: bool = True) -> Flask: ...


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Build apps from settings, migrated unless told otherwise; close their pools afterwards."""
    made: list[Flask] = []

    def factory(env: dict[str, str], *, migrate: bool = True) -> Flask:
        app = create_app(env)
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
    monkeypatch.setattr("service.qstash_api.wait", waits.append)
    return waits


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the probe jobs (tests/probe_jobs.py) for apps created in this test."""
    from tests import probe_jobs

    probe_jobs.install(monkeypatch)


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


def add_expert(app: Flask, expert_id: str = "exp_1", **fields: object) -> str:
    """Insert a payable expert (override any column by keyword); return its id."""
    values: dict[str, object] = {
        "email": f"{expert_id}@example.com", "first_name": "Ana", "country": "PT",
        "stripe_account_id": "acct_1ExpertLocal", "payouts_enabled": True, **fields,
    }
    with extensions.get_sessions(app).begin() as session:
        session.add(Expert(id=expert_id, **values))
    return expert_id


def add_transfer(app: Flask, *, expert_id: str = "exp_1", due: timedelta = -timedelta(hours=1),
                 **fields: object) -> int:
    """Insert a transfer scheduled `due` from now (negative: already due); return its id."""
    now = utcnow()
    values: dict[str, object] = {
        "expert_id": expert_id, "payment_id": f"pi_{uuid.uuid4().hex[:16]}", "amount": 8500,
        "platform_fee": 1500, "currency": "eur", "session_start_at": now - timedelta(days=9),
        "session_end_at": now - timedelta(days=9) + timedelta(hours=1),
        "paid_at": now - timedelta(days=10), "scheduled_transfer_at": now + due,
        "status": "PENDING", "requires_approval": False, "attempts": 0, **fields,
    }
    with extensions.get_sessions(app).begin() as session:
        row = PaymentTransfer(**values)
        session.add(row)
        session.flush()
        return row.id


def load_transfer(app: Flask, transfer_id: int) -> Any:
    """Return the transfer row as it is in the database now."""
    with extensions.get_sessions(app)() as session:
        return session.get_one(PaymentTransfer, transfer_id)


def row_count(app: Flask, model: type[Any]) -> int:
    """Count the rows of a model's table."""
    with extensions.get_sessions(app)() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def age_claims(app: Flask) -> None:
    """Let time pass: every claim still held becomes stale, as after PAYOUT_STALE_AFTER."""
    with extensions.get_sessions(app).begin() as session:
        session.execute(update(PaymentTransfer).where(PaymentTransfer.status == "PROCESSING")
                        .values(claimed_at=utcnow() - timedelta(hours=1)))


def outbox_rows(app: Flask) -> list[Any]:
    """Return every notification in the outbox, oldest first."""
    with extensions.get_sessions(app)() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))
