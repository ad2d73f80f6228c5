from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from devtools.qstash_local import DEV_TOKEN, LocalQStash, LocalQStashConfig, RunningServer, serve
from devtools.qstash_local.delivery import DeliveryResponse
from tests.conftest import AppFactory
from tests.helpers import ADMIN_TOKEN, RECEIVER_URL

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: FlaskClient, path: str = "/admin/sign-in") -> str:
    """Return the CSRF token a console page's forms carry."""
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the pauses after failed sign-ins instead of waiting through them."""
    waits: list[float] = []
    monkeypatch.setattr("service.console.access.pause", waits.append)
    monkeypatch.setattr("blueprints.console.throttle.failed",
                        lambda address: 0.5)
    return waits


@pytest.fixture
def console(client: FlaskClient) -> FlaskClient:
    """A test client signed in to the console."""
    token = csrf_of(client)
    answer = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return client


def add_dead_letter(local: LocalQStash, *, job: str = "process-tasks",
                    answer: bytes = b'{"error":"job_failed"}', status: int = 500,
                    url: str = RECEIVER_URL) -> str:
    """Put a message for a job into the local QStash's DLQ, as after its last failed attempt."""
    published = local.publish(url, body=json.dumps({"job": job}).encode(), headers={
        "Upstash-Forward-X-Qstash-Target-Url": f"/api/cron/{job}", "Upstash-Retries": "0",
        "Content-Type": "application/json"})
    with local._lock:
        message = local.messages.pop(published.message_id)
        local._move_to_dlq(message, DeliveryResponse(status=status, headers={}, body=answer),
                           time.time())
    return next(i for i, e in local.dlq.items() if e.message.message_id == published.message_id)


@pytest.fixture
def dlq_qstash() -> Iterator[tuple[LocalQStash, RunningServer]]:
    """A local QStash server (nothing is fired on its own)."""
    local = LocalQStash(LocalQStashConfig(allow_remote_destinations=True))
    with serve(local) as server:
        yield local, server


@pytest.fixture
def stack_env(env: dict[str, str], dlq_qstash: tuple[LocalQStash, RunningServer]
              ) -> dict[str, str]:
    """Settings pointing the service at that local QStash server."""
    return {**env, "QSTASH_URL": dlq_qstash[1].url, "QSTASH_TOKEN": DEV_TOKEN}


@pytest.fixture
def app(make_app: AppFactory, stack_env: dict[str, str]) -> Flask:
    """The service, pointed at the local QStash server (no test here reaches the network)."""
    return make_app(stack_env)
