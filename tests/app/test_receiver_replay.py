from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import (
    APP_URL,
    deliver,
    delivery_headers,
    executions,
    finish,
    hold_job,
    job_body,
    probe_body,
    runs,
)

pytestmark = pytest.mark.usefixtures("probes")


def test_duplicate_delivery_returns_the_stored_result_without_running(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    body = probe_body(marker, echo="first")
    first = deliver(client, body, message_id="msg_dup")
    second = deliver(client, body, message_id="msg_dup", retried=1)
    assert first.status_code == second.status_code == 200
    assert first.get_json()["duplicate"] is False
    assert second.get_json() == {**first.get_json(), "duplicate": True}
    assert second.get_json()["result"] == {"echo": "first", "retried": 0}
    assert len(executions(marker)) == 1
    assert len(runs(app)) == 1


def test_same_message_for_another_job_is_a_replay(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    assert deliver(client, probe_body(marker), message_id="msg_r").status_code == 200
    other = deliver(client, job_body("process-tasks"), message_id="msg_r",
                    target="/api/cron/process-tasks")
    assert other.status_code == 489
    assert other.headers["Upstash-NonRetryable-Error"] == "true"
    assert other.get_json()["error"] == "replayed_message"
    assert [r.job for r in runs(app)] == ["probe"]


def replay(client: FlaskClient, original: dict[str, str], body: bytes, *, message_id: str,
           target: str = "/api/qstash") -> TestResponse:
    """Send a captured request again: same signature and body, another message id."""
    return client.post(target, data=body,
                       headers={**original, "Upstash-Message-Id": message_id})


@pytest.mark.parametrize("target", ["/api/qstash", "/api/cron/probe"])
def test_a_signed_request_replayed_under_another_message_id_runs_nothing(
    app: Flask, client: FlaskClient, marker: Path, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = probe_body(marker)
    url = APP_URL + target
    captured = delivery_headers(body, target="/api/cron/probe", message_id="msg_a", url=url)
    assert replay(client, captured, body, message_id="msg_a", target=target).status_code == 200

    replayed = replay(client, captured, body, message_id="msg_b", target=target)
    assert replayed.status_code == 401
    assert replayed.get_json()["error"] == "replayed_signature"
    # While the job is busy too: a replay is refused, not recorded as a skipped run.
    hold_job(app, "probe", expires_in=timedelta(minutes=5))
    assert replay(client, captured, body, message_id="msg_c",
                  target=target).get_json()["error"] == "replayed_signature"
    assert len(executions(marker)) == 1
    assert sorted(r.message_id or "" for r in runs(app)) == ["msg_a", "msg_someone-else"]
    assert any(getattr(r, "event", {}).get("check") == "replayed_signature"
               for r in caplog.records)


def test_no_signed_request_of_a_retried_message_can_start_another_run(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    body = probe_body(marker, action="fail_first")
    first = delivery_headers(body, target="/api/cron/probe", message_id="msg_f")
    assert replay(client, first, body, message_id="msg_f").status_code == 500
    # The failed attempt's request, replayed as if it were QStash's retry: refused.
    assert replay(client, first, body, message_id="msg_f").get_json()["error"] == (
        "replayed_signature")
    retry = delivery_headers(body, target="/api/cron/probe", message_id="msg_f", retried=1)
    assert replay(client, retry, body, message_id="msg_f").status_code == 200
    for captured in (first, retry):
        replayed = replay(client, captured, body, message_id="msg_new")
        assert replayed.status_code == 401
        assert replayed.get_json()["error"] == "replayed_signature"
    # Its stored outcome is still answered to a repeat of the message, as to any duplicate.
    again = replay(client, retry, body, message_id="msg_f")
    assert (again.status_code, again.get_json()["duplicate"]) == (200, True)
    assert len(executions(marker)) == 2
    [run] = runs(app)
    assert (run.message_id, run.attempts, run.status) == ("msg_f", 2, "succeeded")


def test_a_request_answered_without_a_run_cannot_start_one_later(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    body = probe_body(marker)
    assert deliver(client, body, message_id="msg_d").status_code == 200
    # QStash's retry of a finished message gets the stored outcome...
    repeat = delivery_headers(body, target="/api/cron/probe", message_id="msg_d", retried=1)
    assert replay(client, repeat, body, message_id="msg_d").get_json()["duplicate"] is True
    # ...and its token, replayed under another message id, runs nothing.
    replayed = replay(client, repeat, body, message_id="msg_other")
    assert (replayed.status_code, replayed.get_json()["error"]) == (401, "replayed_signature")
    # The same for a retry answered 503 while the first attempt still runs.
    hold_job(app, "probe", expires_in=timedelta(minutes=5), run_id="held")  # msg_held
    early = delivery_headers(body, target="/api/cron/probe", message_id="msg_held", retried=1)
    assert replay(client, early, body,
                  message_id="msg_held").get_json()["error"] == "attempt_in_progress"
    finish(app, "held")
    replayed = replay(client, early, body, message_id="msg_third")
    assert (replayed.status_code, replayed.get_json()["error"]) == (401, "replayed_signature")
    assert len(executions(marker)) == 1
