from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service.db import utcnow
from service.extensions import get_engine, get_jobs, get_sessions, get_settings
from service.models import JobRun
from service.runs.jobs import Delivery
from service.runs.runner import run_job
from tests.helpers import (
    APP_URL,
    RECEIVER_URL,
    AppFactory,
    delivery_headers,
    executions,
    job_body,
    mint,
    runs,
)

pytestmark = pytest.mark.usefixtures("probes")


def deliver(client: FlaskClient, body: bytes, **options: Any) -> TestResponse:
    options.setdefault("target", "/api/cron/probe")
    return client.post("/api/qstash", data=body, headers=delivery_headers(body, **options))


def probe_body(marker: Path, **payload: object) -> bytes:
    return job_body("probe", marker=str(marker), **payload)


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


TARGETS = {
    None: "missing_target",
    "": "missing_target",
    "/api/cron/nope": "unknown_target",
    "/api/admin/job-runs": "unknown_target",
    "/api/qstash": "unknown_target",
    "/healthz": "unknown_target",
    "/api/cron/probe/": "unknown_target",
    "api/cron/probe": "invalid_target",
    "/api/cron/../admin/job-runs": "invalid_target",
    "/api/cron/probe/..": "invalid_target",
    "/api/cron%2Fprobe": "invalid_target",
    "/api/cron/%70robe": "invalid_target",
    "/api/cron//probe": "invalid_target",
    "/api/cron/probe?x=1": "invalid_target",
    "/api/cron/probe#x": "invalid_target",
    "/api/cron\\probe": "invalid_target",
    "https://evil.example/api/cron/probe": "foreign_target",
    "http://jobs.example.test/api/cron/probe": "foreign_target",
    "https://jobs.example.test:8443/api/cron/probe": "foreign_target",
    "//evil.example/api/cron/probe": "foreign_target",
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_attacks_are_refused_without_retry(
    app: Flask, client: FlaskClient, marker: Path, target: str | None
) -> None:
    response = deliver(client, probe_body(marker), target=target)
    assert response.status_code == 489
    assert response.headers["Upstash-NonRetryable-Error"] == "true"
    assert response.get_json()["error"] == TARGETS[target]
    assert executions(marker) == []
    assert runs(app) == []


@pytest.mark.parametrize("target", [
    "https://jobs.example.test/api/cron/probe",
    "https://JOBS.example.test:443/api/cron/probe",
])
def test_absolute_target_on_our_origin_is_accepted(
    client: FlaskClient, marker: Path, target: str
) -> None:
    response = deliver(client, probe_body(marker), target=target)
    assert response.status_code == 200
    assert response.get_json()["job"] == "probe"
    assert len(executions(marker)) == 1


def test_target_must_agree_with_the_signed_body(client: FlaskClient, marker: Path) -> None:
    # The forwarded target header is not signed; the body is, and names the job.
    body = job_body("process-tasks", marker=str(marker))
    response = deliver(client, body, target="/api/cron/probe")
    assert response.status_code == 489
    assert response.get_json()["error"] == "target_mismatch"
    assert executions(marker) == []


@pytest.mark.parametrize(("body", "code"), [(b"not json", "invalid_body"),
                                            (b"[1,2]", "invalid_body")])
def test_body_must_be_a_json_object(client: FlaskClient, body: bytes, code: str) -> None:
    response = deliver(client, body)
    assert response.status_code == 489
    assert response.get_json()["error"] == code


def test_delivery_without_message_id_is_refused(client: FlaskClient, marker: Path) -> None:
    body = probe_body(marker)
    headers = delivery_headers(body, target="/api/cron/probe")
    del headers["Upstash-Message-Id"]
    response = client.post("/api/qstash", data=body, headers=headers)
    assert response.status_code == 489
    assert response.get_json()["error"] == "missing_message_id"
    assert executions(marker) == []


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


def test_attempt_still_running_answers_503_with_retry_after(
    app: Flask, marker: Path
) -> None:
    body = probe_body(marker, sleep=1.0)
    results: dict[str, int] = {}

    def first() -> None:
        results["first"] = deliver(app.test_client(), body, message_id="msg_slow").status_code

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 5
    while not executions(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    asked_at = utcnow()
    second = deliver(app.test_client(), body, message_id="msg_slow", retried=1)
    thread.join()
    assert second.status_code == 503
    assert second.get_json()["error"] == "attempt_in_progress"
    # Retry when the attempt's lease ends, if its worker died meanwhile.
    [run] = runs(app)
    lease_left = (run.expires_at - asked_at).total_seconds()
    assert lease_left - 1 <= int(second.headers["Retry-After"]) <= lease_left + 2
    assert results["first"] == 200
    assert len(executions(marker)) == 1


def test_retryable_failure_answers_500_and_the_retry_completes_it(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    body = probe_body(marker, action="fail_first")
    failed = deliver(client, body, message_id="msg_f", retried=0)
    assert failed.status_code == 500
    assert failed.get_json()["error"] == "job_failed"
    assert "Upstash-NonRetryable-Error" not in failed.headers
    [run] = runs(app)
    assert (run.status, run.error) == ("failed", "job_failed: the probe was asked to fail")

    retried = deliver(client, body, message_id="msg_f", retried=1)
    assert retried.status_code == 200
    assert retried.get_json()["run_id"] == run.id
    [run] = runs(app)
    assert (run.status, run.attempts, run.retried, run.error) == ("succeeded", 2, 1, None)
    assert len(executions(marker)) == 2


def test_permanent_failure_stops_qstash_retries(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    response = deliver(client, probe_body(marker, action="permanent"))
    assert response.status_code == 489
    assert response.headers["Upstash-NonRetryable-Error"] == "true"
    assert response.get_json()["error"] == "probe_refused"
    assert runs(app)[0].status == "failed"


def test_unexpected_crash_is_logged_and_answered_without_details(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    response = deliver(client, probe_body(marker, action="crash"))
    assert response.status_code == 500
    data = response.get_json()
    assert data["error"] == "job_failed"
    assert "unexpected probe crash" not in json.dumps(data)
    assert runs(app)[0].error == "RuntimeError: unexpected probe crash"


def hold_job(app: Flask, job: str, *, expires_in: timedelta, run_id: str = "someone-else") -> None:
    """Leave a running run of the job, as another worker running it would."""
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(JobRun(id=run_id, message_id=f"msg_{run_id}", job=job, retried=0,
                           attempts=1, trigger="qstash", status="running", started_at=now,
                           expires_at=now + expires_in))


def finish(app: Flask, run_id: str) -> None:
    with get_sessions(app).begin() as session:
        session.get_one(JobRun, run_id).status = "succeeded"


def test_overlap_skip_policy_records_a_skipped_run(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    hold_job(app, "probe", expires_in=timedelta(minutes=5))
    response = deliver(client, probe_body(marker), message_id="msg_skip")
    assert response.status_code == 200
    data = response.get_json()
    assert data["status"] == "skipped"
    assert data["reason"] == "another run of probe is still running"
    skipped = next(r for r in runs(app) if r.id == data["run_id"])
    assert (skipped.status, skipped.message_id, skipped.attempts) == ("skipped", "msg_skip", 1)
    assert skipped.finished_at is not None
    assert executions(marker) == []


def test_overlap_retry_policy_defers_and_the_retry_runs(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    hold_job(app, "probe-retry", expires_in=timedelta(minutes=5))
    body = job_body("probe-retry", marker=str(marker))
    busy = deliver(client, body, target="/api/cron/probe-retry", message_id="msg_busy")
    assert busy.status_code == 503
    assert busy.get_json()["error"] == "job_busy"
    assert busy.headers["Retry-After"] == "60"
    assert executions(marker) == []
    finish(app, "someone-else")
    done = deliver(client, body, target="/api/cron/probe-retry", message_id="msg_busy",
                   retried=1)
    assert done.status_code == 200
    assert len(executions(marker)) == 1


@pytest.mark.parametrize(("job", "status", "answer"),
                         [("probe", "skipped", 200), ("probe-retry", "failed", 503)])
def test_a_retry_that_finds_the_job_busy_keeps_its_run_and_frees_nothing(
    app: Flask, client: FlaskClient, marker: Path, job: str, status: str, answer: int
) -> None:
    body = job_body(job, marker=str(marker), action="fail_first")
    target = f"/api/cron/{job}"
    assert deliver(client, body, target=target, message_id="msg_busy_retry").status_code == 500
    [failed] = runs(app)
    hold_job(app, job, expires_in=timedelta(minutes=5))

    retried = deliver(client, body, target=target, message_id="msg_busy_retry", retried=1)
    assert retried.status_code == answer
    run = next(r for r in runs(app) if r.id == failed.id)
    assert (run.status, run.attempts, run.retried) == (status, 2, 1)
    assert run.error == f"another run of {job} is still running"
    assert run.finished_at is not None
    assert len(executions(marker)) == 1  # only the first, failed attempt ran
    with get_sessions(app)() as session:
        assert session.get_one(JobRun, "someone-else").status == "running"


def test_a_crashed_runs_lease_and_attempt_expire(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    # A worker died mid-run: its run still says running, and its lease on the job has expired.
    hold_job(app, "probe", expires_in=timedelta(minutes=-1), run_id="deadrun")
    response = deliver(client, probe_body(marker), message_id="msg_deadrun", retried=1)
    assert response.status_code == 200
    assert response.get_json()["run_id"] == "deadrun"
    [run] = runs(app)
    assert (run.status, run.attempts, run.error) == ("succeeded", 2, None)
    assert len(executions(marker)) == 1


def test_a_crashed_run_of_another_message_frees_the_job_once_expired(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    hold_job(app, "probe", expires_in=timedelta(minutes=-1), run_id="deadrun")
    response = deliver(client, probe_body(marker), message_id="msg_next")
    assert response.status_code == 200
    assert response.get_json()["status"] == "succeeded"
    with get_sessions(app)() as session:
        dead = session.get_one(JobRun, "deadrun")
    assert dead.status == "failed"
    assert dead.error is not None and dead.error.startswith("expired: ")
    assert dead.finished_at is not None
    assert len(executions(marker)) == 1


def test_a_run_without_a_message_id_is_guarded_too(
    app: Flask, client: FlaskClient, marker: Path
) -> None:
    # Admin and command-line runs carry no message id; the job's running run still blocks them.
    hold_job(app, "probe", expires_in=timedelta(minutes=5))
    blocked = run_job(get_engine(app), get_jobs(app)["probe"],
                      Delivery(trigger="admin", payload={"marker": str(marker)}),
                      scrub=get_settings(app).scrub)
    assert (blocked.status, blocked.reason) == ("skipped", "another run of probe is still running")
    finish(app, "someone-else")
    ran = run_job(get_engine(app), get_jobs(app)["probe"],
                  Delivery(trigger="admin", payload={"marker": str(marker)}),
                  scrub=get_settings(app).scrub)
    assert ran.status == "succeeded"
    assert len(executions(marker)) == 1
    assert sorted((r.status, str(r.message_id)) for r in runs(app)) == [
        ("skipped", "None"), ("succeeded", "None"), ("succeeded", "msg_someone-else")]


def test_routing_errors_are_json(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"
    wrong_method = client.get("/api/qstash")
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]


def test_receiver_url_is_the_configured_public_url(client: FlaskClient, marker: Path) -> None:
    # Behind a proxy the request arrives as http://10.0.0.5/...; APP_URL decides, not the Host.
    body = probe_body(marker)
    headers = delivery_headers(body, target="/api/cron/probe", url=RECEIVER_URL)
    response = client.post("/api/qstash", data=body, headers=headers,
                           base_url="http://10.0.0.5:8000")
    assert response.status_code == 200
