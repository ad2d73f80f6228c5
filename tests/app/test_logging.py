from __future__ import annotations

import io
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import (
    ADMIN_TOKEN,
    CURRENT_KEY,
    NEXT_KEY,
    AppFactory,
    delivery_headers,
    job_body,
    mint,
    service_log,
)


@pytest.fixture
def log_lines(app: Flask) -> io.StringIO:
    return service_log()


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_run_logs_carry_request_message_job_and_run_ids(
    client: FlaskClient, log_lines: io.StringIO
) -> None:
    body = job_body("process-tasks")
    response = client.post("/api/qstash", data=body,
                           headers={**delivery_headers(body, message_id="msg_log"),
                                    "X-Request-Id": "req-1"})
    run_id = response.get_json()["run_id"]
    lines = parsed(log_lines)
    started = next(line for line in lines if line["message"] == "run started")
    assert started["request_id"] == "req-1"
    assert started["message_id"] == "msg_log"
    assert started["job"] == "process-tasks"
    assert started["run_id"] == run_id
    assert started["level"] == "info" and started["service"] == "eleva-jobs"
    assert any(line["message"] == "run succeeded" for line in lines)


def test_rejections_are_logged_without_the_token_or_keys(
    client: FlaskClient, log_lines: io.StringIO
) -> None:
    body = job_body("process-tasks")
    token = mint(body, key="sig_TheAttackersOwnKeyxxxxxxxxxxxxxx")
    headers = delivery_headers(body, message_id="msg_bad")
    headers["Upstash-Signature"] = token
    headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    response = client.post("/api/qstash", data=body, headers=headers)
    assert response.status_code == 401
    text = log_lines.getvalue() + response.get_data(as_text=True)
    [line] = [entry for entry in parsed(log_lines) if entry["level"] == "warning"]
    assert line["check"] == "bad_signature"
    assert line["message_id"] == "msg_bad"
    for secret in (token, CURRENT_KEY, NEXT_KEY, ADMIN_TOKEN, token.split(".")[2]):
        assert secret not in text


def test_unconfigured_receiver_logs_which_variables_to_fix(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    del env["QSTASH_NEXT_SIGNING_KEY"]
    app = make_app(env)
    stream = service_log()
    app.test_client().post("/api/qstash", data=b"{}")
    [line] = parsed(stream)
    assert line["level"] == "error"
    assert "QSTASH_NEXT_SIGNING_KEY: missing" in str(line["message"])
