from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select, text

from devtools.gunicorn import free_port as free_port
from service.extensions import get_engine, get_sessions
from service.models import JobRun
from service.qstash.signature import qstash_claims, sign_claims

APP_URL = "https://jobs.example.test"
RECEIVER_URL = APP_URL + "/api/qstash"
# The public dev-server key pair (protocol §7): not secrets.
CURRENT_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


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


def wait_until_live(url: str, process: subprocess.Popen[bytes], log: Path | None = None,
                    timeout: float = 30) -> None:
    """Wait until url/healthz answers 200; fail with the server's log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or a worker still booting on a busy machine
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
