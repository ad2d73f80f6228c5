from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from devtools.qstash_local import DEV_TOKEN, LocalQStash, RunningServer
from service import db
from service.extensions import get_sessions
from service.models import JobRun
from service.qstash.api import QStashApi, QStashApiError
from tests.helpers import AppFactory, delivery_headers, job_body
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.usefixtures("probes")


@pytest.fixture
def proxy_app(make_app: AppFactory, env: dict[str, str],
              database_url: str) -> Iterator[tuple[Flask, TcpProxy]]:
    """The service on the PostgreSQL test database, reached through a proxy the test can cut."""
    parsed = make_url(db.normalise_url(database_url))
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxy.up()
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield make_app({**env, "DATABASE_URL": proxied + "?connect_timeout=2"}), proxy
    finally:
        proxy.down()


def deliver_and_cut_mid_run(app: Flask, proxy: TcpProxy, marker: Path, message_id: str, *,
                            back_at_once: bool) -> TestResponse:
    """Deliver a one-second probe run and cut every database connection while it runs."""
    body = job_body("probe-short", marker=str(marker), sleep=1.0)
    headers = delivery_headers(body, target="/api/cron/probe-short", message_id=message_id)
    answers = {}

    def deliver() -> None:
        answers["first"] = app.test_client().post("/api/qstash", data=body, headers=headers)

    thread = threading.Thread(target=deliver)
    thread.start()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proxy.down()
    if back_at_once:
        proxy.up()
    thread.join()
    return answers["first"]


@pytest.mark.postgres
def test_database_vanishing_mid_run_is_retryable_and_the_retry_completes(
    proxy_app: tuple[Flask, TcpProxy], marker: Path
) -> None:
    app, proxy = proxy_app
    # The database disappears while the job runs.
    first = deliver_and_cut_mid_run(app, proxy, marker, "msg_fault", back_at_once=False)
    assert first.status_code == 503
    assert first.get_json()["error"] == "database_unavailable"
    assert first.headers["Retry-After"] == "30"
    assert app.test_client().get("/readyz").status_code == 503

    proxy.up()
    with get_sessions(app)() as session:
        [run] = session.scalars(select(JobRun)).all()
    # Nothing half-written: the claim stands as it was, to be taken over once it expires.
    assert (run.status, run.attempts, run.finished_at, run.result) == ("running", 1, None, None)

    body = job_body("probe-short", marker=str(marker), sleep=1.0)
    headers = delivery_headers(body, target="/api/cron/probe-short", message_id="msg_fault")
    early = app.test_client().post("/api/qstash", data=body, headers=headers)
    assert early.status_code == 503
    assert early.get_json()["error"] == "attempt_in_progress"

    time.sleep(max(0.0, (run.expires_at.timestamp() - time.time())) + 0.2)
    # QStash signs every attempt anew.
    retry = app.test_client().post("/api/qstash", data=body, headers=delivery_headers(
        body, target="/api/cron/probe-short", message_id="msg_fault", retried=1))
    assert retry.status_code == 200, retry.get_json()
    assert retry.get_json()["status"] == "succeeded"
    with get_sessions(app)() as session:
        [run] = session.scalars(select(JobRun)).all()
    assert (run.status, run.attempts, run.retried) == ("succeeded", 2, 1)
    assert len(marker.read_text().splitlines()) == 2


@pytest.mark.postgres
def test_a_connection_lost_during_the_run_is_replaced_to_record_the_outcome(
    proxy_app: tuple[Flask, TcpProxy], marker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, proxy = proxy_app
    # Every open connection is cut while the job runs, and the database is back before it ends.
    first = deliver_and_cut_mid_run(app, proxy, marker, "msg_blip", back_at_once=True)
    assert first.status_code == 200, first.get_json()
    with get_sessions(app)() as session:
        [run] = session.scalars(select(JobRun)).all()
    assert (run.status, run.attempts) == ("succeeded", 1)
    assert len(marker.read_text().splitlines()) == 1
    assert "database connection lost during the run" in caplog.text


def test_a_slow_qstash_is_given_up_on_within_a_bound(
    local_qstash: tuple[LocalQStash, RunningServer]
) -> None:
    local, server = local_qstash
    original = local.app.wsgi_app

    def slow(environ, start_response):
        time.sleep(1.0)
        return original(environ, start_response)

    local.app.wsgi_app = slow  # type: ignore[method-assign]
    api = QStashApi(token=DEV_TOKEN, base_url=server.url, timeout=0.3, attempts=3, max_wait=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(QStashApiError) as info:
            api.list_schedules()
    finally:
        api.close()
    # Three attempts of 0.3 s plus backoffs of 0.5 s and 1 s, and no more.
    assert time.monotonic() - started < 3.5
    assert info.value.code == "unreachable"
    assert "ReadTimeout" in str(info.value)
