from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import (
    APP_URL,
    AppFactory,
    deliver,
    delivery_headers,
    executions,
    job_body,
    mint,
    probe_body,
    runs,
)

pytestmark = pytest.mark.usefixtures("probes")


def test_signed_delivery_runs_the_real_job_and_records_the_run(
    app: Flask, client: FlaskClient
) -> None:
    body = job_body("process-tasks")
    response = deliver(client, body, target="/api/cron/process-tasks", message_id="msg_1",
                       retried=0)
    assert response.status_code == 200
    data = response.get_json()
    assert data["job"] == "process-tasks"
    assert data["status"] == "succeeded"
    assert data["duplicate"] is False
    assert data["result"]["pruned_job_runs"] == 0
    [run] = runs(app)
    assert (run.id, run.message_id, run.job, run.trigger, run.status) == (
        data["run_id"], "msg_1", "process-tasks", "qstash", "succeeded")
    assert run.result == data["result"]
    assert run.finished_at is not None and run.duration_ms is not None


def test_delivery_headers_are_recorded(app: Flask, client: FlaskClient, marker: Path) -> None:
    body = probe_body(marker)
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_h", retried=2)
    headers["Upstash-Schedule-Id"] = "eleva-jobs.development.probe"
    assert client.post("/api/qstash", data=body, headers=headers).status_code == 200
    [run] = runs(app)
    assert (run.schedule_id, run.retried) == ("eleva-jobs.development.probe", 2)
    assert executions(marker) == [f"{run.id} qstash 2"]


REJECTIONS = {
    "missing_signature": lambda body: {"Upstash-Signature": ""},
    "malformed": lambda body: {"Upstash-Signature": "not-a-jwt"},
    "bad_signature": lambda body: {
        "Upstash-Signature": mint(body, key="sig_SomeoneElsesKeyxxxxxxxxxxxxxx")},
    "wrong_subject": lambda body: {
        "Upstash-Signature": mint(body, url=APP_URL + "/api/cron/probe")},
    "body_mismatch": lambda body: {"Upstash-Signature": mint(body + b" ")},
    "expired": lambda body: {"Upstash-Signature": mint(body, now=time.time() - 600)},
    "not_yet_valid": lambda body: {"Upstash-Signature": mint(body, now=time.time() + 600)},
    "wrong_issuer": lambda body: {"Upstash-Signature": mint(body, iss="Someone")},
}


@pytest.mark.parametrize("code", sorted(REJECTIONS))
def test_rejected_requests_run_nothing_and_record_nothing(
    app: Flask, client: FlaskClient, marker: Path, code: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = probe_body(marker)
    headers = delivery_headers(body, target="/api/cron/probe")
    headers.update(REJECTIONS[code](body))
    response = client.post("/api/qstash", data=body, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == code
    assert response.get_json()["message"]
    assert runs(app) == []
    assert executions(marker) == []


def test_unconfigured_keys_refuse_every_delivery(
    make_app: AppFactory, env: dict[str, str], marker: Path
) -> None:
    del env["QSTASH_CURRENT_SIGNING_KEY"]
    env["QSTASH_NEXT_SIGNING_KEY"] = "not-a-key"
    app = make_app(env)
    body = probe_body(marker)
    response = app.test_client().post("/api/qstash", data=body,
                                      headers=delivery_headers(body, target="/api/cron/probe"))
    assert response.status_code == 503
    data = response.get_json()
    assert data["error"] == "qstash_not_configured"
    assert data["variables"] == ["QSTASH_CURRENT_SIGNING_KEY", "QSTASH_NEXT_SIGNING_KEY"]
    assert executions(marker) == []


@pytest.mark.parametrize(("tolerance", "status"), [("5", 401), ("60", 200)])
def test_the_clock_tolerance_applies_to_expired_tokens(
    make_app: AppFactory, env: dict[str, str], marker: Path, tolerance: str, status: int
) -> None:
    client = make_app({**env, "QSTASH_CLOCK_TOLERANCE": tolerance}).test_client()
    body = probe_body(marker)
    response = deliver(client, body, now=time.time() - 320)  # expired 20 s ago
    assert response.status_code == status
    if status == 401:
        assert response.get_json()["error"] == "expired"
    assert len(executions(marker)) == (status == 200)


def test_missing_app_url_refuses_deliveries(make_app: AppFactory, env: dict[str, str]) -> None:
    del env["APP_URL"]
    response = make_app(env).test_client().post("/api/qstash", data=b"{}")
    assert response.status_code == 503
    assert response.get_json()["variables"] == ["APP_URL"]


def test_oversized_body_is_refused_before_verification(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    env["MAX_BODY_BYTES"] = "2048"
    client = make_app(env).test_client()
    body = b'{"pad":"' + b"x" * 4096 + b'"}'
    response = client.post("/api/qstash", data=body, headers=delivery_headers(body))
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def test_a_token_without_jti_is_accepted(client: FlaskClient, marker: Path) -> None:
    body = probe_body(marker)
    response = deliver(client, body, jti=None)
    assert (response.status_code, response.get_json()["status"]) == (200, "succeeded")


@pytest.mark.parametrize("claims", [
    {"jti": "jwt_\ud800"}, {"jti": "jwt_\x00"}, {"exp": float("nan")}, {"exp": float("inf")},
    {"nbf": 1e308}, {"iat": float("-inf")}, {"exp": int(time.time()) + 3600},
])
def test_a_signed_token_with_unstorable_or_implausible_claims_is_malformed(
    app: Flask, client: FlaskClient, marker: Path, claims: dict[str, Any]
) -> None:
    # Validly signed, so it got past the MAC: it must be a 401, not a 500 QStash retries for days.
    response = deliver(client, probe_body(marker), **claims)
    assert response.status_code == 401
    assert response.get_json()["error"] == "malformed"
    assert runs(app) == []
    assert executions(marker) == []


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"job":"probe","n":' + b"9" * 5000 + b"}"],
                         ids=["deeply-nested", "huge-number"])
def test_bodies_json_cannot_parse_are_refused_without_retry(
    app: Flask, client: FlaskClient, body: bytes
) -> None:
    response = deliver(client, body)
    assert response.status_code == 489
    assert response.get_json()["error"] == "invalid_body"
    assert runs(app) == []


@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "²", "1e3"])
def test_an_implausible_retried_header_is_ignored(
    app: Flask, client: FlaskClient, marker: Path, value: str
) -> None:
    body = probe_body(marker)
    headers = {**delivery_headers(body, target="/api/cron/probe"), "Upstash-Retried": value}
    response = client.post("/api/qstash", data=body, headers=headers)
    assert response.status_code == 200
    [run] = runs(app)
    assert run.retried == 0
