from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from flask import Flask, Response, jsonify, request
from flask.testing import FlaskClient

from service.qstash_local import DEV_TOKEN, LocalQStash, LocalQStashConfig, RunningServer, serve
from service.qstash_local.delivery import DeliveryResponse
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


def serve_dlq_retry(local: LocalQStash) -> None:
    """Answer `POST /v2/dlq/retry` as QStash defines it, if the local QStash does not yet.

    A stand-in until the local server serves the endpoint itself: each named dead letter is
    published again (same destination, body and forwarded headers) and leaves the DLQ.
    """
    if any(rule.rule == "/v2/dlq/retry" for rule in local.app.url_map.iter_rules()):
        return

    def retry() -> Response:
        body = request.get_json(silent=True) or {}
        ids = request.args.getlist("dlqIds") or list(body.get("dlqIds") or [])
        responses = []
        for dlq_id in ids:
            entry = local.dlq.get(dlq_id)
            if entry is None:
                continue
            message = entry.message
            headers = {f"Upstash-Forward-{name}": values[0]
                       for name, values in message.headers.items() if name != "Content-Type"}
            headers["Content-Type"] = "application/json"
            headers["Upstash-Retries"] = str(message.max_retries)
            again = local.publish(message.url, body=message.body, headers=headers)
            local.delete_dlq([dlq_id])
            responses.append({"messageId": again.message_id, "deduplicated": False})
        return jsonify(responses=responses)

    local.app.add_url_rule("/v2/dlq/retry", "dlq_retry_stand_in", retry, methods=["POST"])


@pytest.fixture
def dlq_qstash() -> Iterator[tuple[LocalQStash, RunningServer]]:
    """A local QStash server that also answers DLQ retries (nothing is fired on its own)."""
    local = LocalQStash(LocalQStashConfig(allow_remote_destinations=True))
    serve_dlq_retry(local)
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
