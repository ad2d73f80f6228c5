from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import bindparam, text
from sqlalchemy.exc import IntegrityError

from service.db import UTCDateTime, utcnow
from service.extensions import get_engine, get_sessions
from service.models import JobRun
from tests.helpers import delivery_headers, executions, job_body, runs
from tests.workers import deliver_in_fresh_process

pytestmark = pytest.mark.usefixtures("probes")


def test_same_message_from_many_threads_runs_once(app: Flask, marker: Path) -> None:
    body = job_body("probe", marker=str(marker), sleep=0.3)
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_threads")
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def deliver() -> None:
        client = app.test_client()
        barrier.wait()
        status = client.post("/api/qstash", data=body, headers=headers).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(executions(marker)) == 1
    counts = Counter(statuses)
    assert counts[200] >= 1
    assert set(counts) <= {200, 503}
    assert len(runs(app)) == 1


def run_in_two_processes(env: dict[str, str], deliveries: list[tuple[bytes, dict[str, str]]]
                         ) -> list[tuple[int, dict[str, object]]]:
    start_at = time.time() + 3.0  # both processes are importing and ready by then
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(deliver_in_fresh_process, env, body, headers, start_at)
                   for body, headers in deliveries]
        return [f.result(timeout=60) for f in futures]


@pytest.mark.slow
def test_same_message_from_two_processes_runs_once(
    app: Flask, env: dict[str, str], marker: Path
) -> None:
    body = job_body("probe", marker=str(marker), sleep=0.5)
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_procs")
    results = run_in_two_processes(env, [(body, headers), (body, headers)])
    assert len(executions(marker)) == 1
    statuses = sorted(status for status, _ in results)
    assert statuses in ([200, 200], [200, 503])
    assert len(runs(app)) == 1


@pytest.mark.slow
def test_overlap_guard_holds_across_processes(
    app: Flask, env: dict[str, str], marker: Path
) -> None:
    body = job_body("probe", marker=str(marker), sleep=1.0)
    deliveries = [(body, delivery_headers(body, target="/api/cron/probe", message_id=f"msg_{i}"))
                  for i in (1, 2)]
    results = run_in_two_processes(env, deliveries)
    assert [status for status, _ in results] == [200, 200]
    assert sorted(str(data["status"]) for _, data in results) == ["skipped", "succeeded"]
    assert len(executions(marker)) == 1
    assert sorted(run.status for run in runs(app)) == ["skipped", "succeeded"]


def test_a_duplicate_arriving_while_its_run_finishes_waits_for_the_outcome(
    app: Flask, marker: Path
) -> None:
    """The run's outcome is being written, uncommitted, when a duplicate of its message arrives.

    The duplicate must wait for that write (PostgreSQL: the row lock; SQLite: the writer lock),
    then answer the stored outcome, without running the job or deadlocking.
    """
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="finishing", message_id="msg_finishing", job="probe", retried=0,
                           attempts=1, trigger="qstash", status="running", started_at=now,
                           expires_at=now + timedelta(minutes=5)))
    body = job_body("probe", marker=str(marker))
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_finishing")
    answers = {}

    def deliver() -> None:
        answers["duplicate"] = app.test_client().post("/api/qstash", data=body, headers=headers)

    with get_engine(app).connect() as conn, conn.begin():
        conn.execute(text("UPDATE job_runs SET status = 'succeeded', finished_at = started_at,"
                          " duration_ms = 1 WHERE id = 'finishing'"))
        thread = threading.Thread(target=deliver)
        thread.start()
        time.sleep(0.5)  # the duplicate is now waiting on this transaction
        assert "duplicate" not in answers
    thread.join(timeout=30)
    duplicate = answers["duplicate"]
    assert duplicate.status_code == 200, duplicate.get_json()
    assert duplicate.get_json()["duplicate"] is True
    assert duplicate.get_json()["run_id"] == "finishing"
    assert executions(marker) == []
    [run] = runs(app)
    assert run.status == "succeeded"


def test_a_retry_racing_a_new_run_for_the_job_is_recorded_as_skipped(
    app: Flask, marker: Path
) -> None:
    """A retry finds the job free, but another delivery's run takes it before the retry's does.

    The other run is written in a transaction still open while the retry takes over its failed
    attempt: PostgreSQL shows it to the retry only when the takeover's write collides with it,
    SQLite makes the retry wait for it. Either way the retry is recorded as skipped, not failed.
    """
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="failed", message_id="msg_retry", job="probe", retried=0,
                           attempts=1, trigger="qstash", status="failed", started_at=now,
                           expires_at=now, finished_at=now, error="job_failed: first try"))
    body = job_body("probe", marker=str(marker))
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_retry",
                               retried=1)
    answers = {}

    def deliver() -> None:
        answers["retry"] = app.test_client().post("/api/qstash", data=body, headers=headers)

    with get_engine(app).connect() as conn, conn.begin():
        conn.execute(text("INSERT INTO job_runs (id, message_id, job, retried, attempts, trigger,"
                          " status, started_at, expires_at) VALUES ('other', 'msg_other',"
                          " 'probe', 0, 1, 'qstash', 'running', :now, :until)")
                     .bindparams(bindparam("now", type_=UTCDateTime()),
                                 bindparam("until", type_=UTCDateTime())),
                     {"now": now, "until": now + timedelta(minutes=5)})
        thread = threading.Thread(target=deliver)
        thread.start()
        time.sleep(0.5)  # the retry is now waiting on this transaction
    thread.join(timeout=30)
    retry = answers["retry"]
    assert retry.status_code == 200, retry.get_json()
    assert (retry.get_json()["status"], retry.get_json()["run_id"]) == ("skipped", "failed")
    by_id = {run.id: run for run in runs(app)}
    assert (by_id["failed"].status, by_id["failed"].attempts) == ("skipped", 2)
    assert by_id["other"].status == "running"
    assert executions(marker) == []


def test_claims_that_keep_colliding_answer_a_retryable_503_and_change_nothing(
    app: Flask, marker: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The PostgreSQL race that makes the slow path collide cannot be timed from a test; it is
    # injected here, every time, to see what the claim loop does once its attempts run out.
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="failed", message_id="msg_collide", job="probe", retried=0,
                           attempts=1, trigger="qstash", status="failed", started_at=now,
                           expires_at=now, finished_at=now, error="job_failed: first try"))
    settles = []

    def colliding(*args: object) -> None:
        settles.append(args)
        raise IntegrityError("INSERT INTO job_runs ...", {}, Exception("unique violation"))

    monkeypatch.setattr("service.runs.runner._settle", colliding)
    body = job_body("probe", marker=str(marker))
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_collide",
                               retried=1)
    answer = app.test_client().post("/api/qstash", data=body, headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "attempt_in_progress"
    assert answer.headers["Retry-After"] == "5"
    assert len(settles) == 3
    assert "could not claim the run" in caplog.text
    [run] = runs(app)
    assert (run.status, run.attempts) == ("failed", 1)
    assert executions(marker) == []
