from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from devtools.gunicorn import answers
from devtools.gunicorn import free_port as free_port
from service import db, extensions
from service.db import utcnow
from service.extensions import get_engine, get_sessions
from service.models import JobRun
from service.payouts.models import Expert, Notification, PaymentTransfer
from service.qstash.signature import qstash_claims, sign_claims

ROOT = Path(__file__).resolve().parent.parent  # the repository
APP_URL = "https://jobs.example.test"
RECEIVER_URL = APP_URL + "/api/qstash"
# The public dev-server key pair (protocol §7): not secrets.
CURRENT_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def mint(raw: bytes, /, *, url: str = RECEIVER_URL, key: str = CURRENT_KEY,
         now: float | None = None, **overrides: Any) -> str:
    """Mint a QStash delivery token; overrides replace claims (None removes one)."""
    claims = qstash_claims(url=url, body=raw, now=now)
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return sign_claims(claims, key)


def delivery_headers(
    body: bytes,
    *,
    target: str | None = "/api/cron/process-tasks",
    message_id: str | None = None,
    retried: int = 0,
    **mint_options: Any,
) -> dict[str, str]:
    headers = {
        "Upstash-Signature": mint(body, **mint_options),
        "Upstash-Message-Id": message_id or f"msg_{time.time_ns()}",
        "Upstash-Retried": str(retried),
        "Content-Type": "application/json",
        "User-Agent": "Upstash-QStash",
    }
    if target is not None:
        headers["X-Qstash-Target-Url"] = target
    return headers


def job_body(name: str, **extra: Any) -> bytes:
    return json.dumps({"job": name, **extra}, separators=(",", ":")).encode()


def deliver(client: FlaskClient, body: bytes, **options: Any) -> TestResponse:
    """Post a signed delivery of body to the receiver; the target defaults to the probe job."""
    options.setdefault("target", "/api/cron/probe")
    return client.post("/api/qstash", data=body, headers=delivery_headers(body, **options))


def probe_body(marker: Path, **payload: object) -> bytes:
    """Return the body of a probe job delivery that marks its runs in marker."""
    return job_body("probe", marker=str(marker), **payload)


def hold_job(app: Flask, job: str, *, expires_in: timedelta, run_id: str = "someone-else") -> None:
    """Leave a running run of the job, as another worker running it would."""
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(JobRun(id=run_id, message_id=f"msg_{run_id}", job=job, retried=0,
                           attempts=1, trigger="qstash", status="running", started_at=now,
                           expires_at=now + expires_in))


def finish(app: Flask, run_id: str) -> None:
    """Mark a held run as succeeded, as its worker would on finishing."""
    with get_sessions(app).begin() as session:
        session.get_one(JobRun, run_id).status = "succeeded"


def wait_until_live(url: str, process: subprocess.Popen[bytes], log: Path | None = None,
                    timeout: float = 30) -> None:
    """Wait until url/healthz answers 200; fail with the server's log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        if answers(url + "/healthz"):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            details = log.read_text() if log is not None else f"exit code {process.poll()}"
            raise AssertionError(f"{url} did not come up:\n{details}")
        time.sleep(0.1)


def runs(app: Flask) -> list[JobRun]:
    """The app's run record, oldest run first."""
    with get_sessions(app)() as session:
        return list(session.scalars(select(JobRun).order_by(JobRun.started_at)))


def executions(marker: Path) -> list[str]:
    """The lines the probe jobs appended to their marker file: one per execution."""
    return marker.read_text().splitlines() if marker.exists() else []


@contextlib.contextmanager
def refusing(app: Flask, operation: str, table: str, *, when: str = "true") -> Iterator[None]:
    """Make the database itself refuse matching writes to `table` while the block runs.

    A trigger, so that the code under test meets a real database error where it writes, on
    SQLite and on PostgreSQL alike. `when` is a condition on NEW, e.g. NEW.status = 'COMPLETED'.
    """
    engine = get_engine(app)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if postgres:
            conn.execute(text(
                "CREATE FUNCTION refused_by_test() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"))
            conn.execute(text(
                f"CREATE TRIGGER refused_by_test BEFORE {operation} ON {table} FOR EACH ROW"
                f" WHEN ({when}) EXECUTE FUNCTION refused_by_test()"))
        else:
            conn.execute(text(
                f"CREATE TRIGGER refused_by_test BEFORE {operation} ON {table} FOR EACH ROW"
                f" WHEN {when} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            if postgres:
                conn.execute(text(f"DROP TRIGGER refused_by_test ON {table}"))
                conn.execute(text("DROP FUNCTION refused_by_test()"))
            else:
                conn.execute(text("DROP TRIGGER refused_by_test"))


def service_log(stream: io.StringIO | None = None) -> io.StringIO:
    """Send the service's own log handler (LOG_FORMAT lines) to a stream; return the stream."""
    stream = stream or io.StringIO()
    [handler] = [h for h in logging.getLogger("eleva").handlers if h.get_name() == "eleva"]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return stream


def reset_postgres(url: str) -> None:
    """Drop and recreate the public schema of the test database."""
    parsed = make_url(db.normalise_url(url))
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


class AppFactory(Protocol):
    def __call__(self, env: dict[str, str], *, migrate: bool = True) -> Flask: ...


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
