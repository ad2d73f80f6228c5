from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.db import utcnow
from service.extensions import get_engine, get_jobs, get_sessions, get_settings
from service.models import JobRun
from service.runs.jobs import Delivery
from service.runs.runner import run_job
from tests.helpers import deliver, executions, finish, hold_job, job_body, probe_body, runs

pytestmark = pytest.mark.usefixtures("probes")


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
