from __future__ import annotations

import json
import time
from datetime import timedelta

from flask import Flask
from qstash import QStash

from devtools.qstash_local import DEV_TOKEN, LocalQStash, RunningServer
from service.db import utcnow
from service.extensions import get_sessions
from service.models import JobRun
from tests.helpers import ADMIN_TOKEN, AUTH, CURRENT_KEY, NEXT_KEY, AppFactory

Local = tuple[LocalQStash, RunningServer]
OWNED = "eleva-jobs.development."


def health(app: Flask) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = app.test_client().get("/api/admin/qstash-health", headers=AUTH)
    return response.status_code, response.get_json()


def synced(make_app: AppFactory, env: dict[str, str]) -> Flask:
    app = make_app(env)
    assert app.test_cli_runner().invoke(args=["qstash", "update"]).exit_code == 0
    return app


def test_ok_when_configured_synced_and_on_time(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    status, report = health(synced(make_app, qstash_env))
    assert status == 200, report
    assert report["status"] == "ok"
    assert report["reasons"] == []
    assert report["config"] == {"valid": True, "problems": []}
    assert report["qstash"]["reachable"] is True
    assert isinstance(report["qstash"]["latency_ms"], int)
    schedules = report["schedules"]
    assert schedules["in_sync"] is True
    assert (schedules["missing"], schedules["changed"], schedules["stale"],
            schedules["paused"], schedules["foreign_count"]) == ([], [], [], [], 0)
    per_job = schedules["per_job"]["process-expert-transfers"]
    assert per_job["schedule_id"] == OWNED + "process-expert-transfers"
    assert per_job["cron"] == "0 */2 * * *"
    assert per_job["next_run"] is not None
    job = report["jobs"]["process-tasks"]
    assert (job["last_run"], job["last_success"], job["overdue"]) == (None, None, False)
    # Counted from the schedule's creation, just now: overdue 15 minutes after the second 04:00.
    assert 86400 + 900 < job["overdue_after_seconds"] <= 2 * 86400 + 900
    assert job["enabled"] is True
    text = json.dumps(report)
    for secret in (DEV_TOKEN, CURRENT_KEY, NEXT_KEY, ADMIN_TOKEN):
        assert secret not in text


def test_missing_configuration_is_an_error(make_app: AppFactory, env: dict[str, str]) -> None:
    del env["QSTASH_TOKEN"], env["QSTASH_CURRENT_SIGNING_KEY"]
    status, report = health(make_app(env))
    assert status == 503
    assert report["status"] == "error"
    assert report["config"]["valid"] is False
    assert {p["variable"] for p in report["config"]["problems"]} == {
        "QSTASH_TOKEN", "QSTASH_CURRENT_SIGNING_KEY"}
    assert report["qstash"]["reachable"] is False
    assert "QSTASH_TOKEN is missing" in report["qstash"]["error"]


def test_qstash_down_answers_503_within_the_timeout(
    make_app: AppFactory, qstash_env: dict[str, str]
) -> None:
    app = make_app({**qstash_env, "QSTASH_URL": "http://127.0.0.1:9"})
    started = time.monotonic()
    status, report = health(app)
    assert time.monotonic() - started < 5
    assert status == 503
    assert report["status"] == "error"
    assert "cannot reach QStash" in report["qstash"]["error"]
    assert report["schedules"]["in_sync"] is None


def test_slow_qstash_is_cut_off(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, _ = local_qstash
    from werkzeug.wrappers import Request

    original = local.app.wsgi_app

    def slow(environ, start_response):
        if Request(environ).path == "/v2/schedules":
            time.sleep(4)
        return original(environ, start_response)

    local.app.wsgi_app = slow  # type: ignore[method-assign]
    started = time.monotonic()
    status, report = health(make_app(qstash_env))
    assert time.monotonic() - started < 4
    assert status == 503
    assert "ReadTimeout" in report["qstash"]["error"]


def test_drift_and_paused_schedules_degrade(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    _, server = local_qstash
    app = synced(make_app, qstash_env)
    client = QStash(DEV_TOKEN, base_url=server.url, retry=False)
    client.schedule.delete(OWNED + "process-tasks")
    client.schedule.pause(OWNED + "check-upcoming-payouts")
    client.schedule.create(destination="https://x.example/api/qstash", cron="0 1 * * *",
                           schedule_id=OWNED + "old-job")
    client.schedule.create(destination="https://x.example/h", cron="0 1 * * *",
                           schedule_id="eleva-jobs.production.process-tasks")
    client.http._client.close()
    status, report = health(app)
    assert status == 503
    assert report["status"] == "degraded"
    s = report["schedules"]
    assert s["in_sync"] is False
    assert s["missing"] == [OWNED + "process-tasks"]
    assert s["stale"] == [OWNED + "old-job"]
    assert s["paused"] == [OWNED + "check-upcoming-payouts"]
    assert s["foreign_count"] == 1
    assert s["per_job"]["process-tasks"] == {"schedule_id": OWNED + "process-tasks",
                                             "missing": True}


def test_changed_fields_are_named(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    synced(make_app, qstash_env)
    status, report = health(make_app({**qstash_env, "JOB_PROCESS_TASKS_CRON": "0 5 * * *"}))
    assert status == 503
    assert report["schedules"]["changed"] == [{"schedule_id": OWNED + "process-tasks",
                                               "fields": ["cron"]}]


def test_a_job_without_a_recent_success_is_overdue(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    app = synced(make_app, qstash_env)
    long_ago = utcnow() - timedelta(days=3)
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="old", job="check-upcoming-payouts", retried=0, attempts=1,
                           trigger="qstash", status="succeeded", started_at=long_ago,
                           expires_at=long_ago, finished_at=long_ago))
        session.add(JobRun(id="new", job="check-upcoming-payouts", retried=0, attempts=1,
                           trigger="qstash", status="failed", started_at=utcnow(),
                           expires_at=utcnow(), finished_at=utcnow(), error="boom"))
    status, report = health(app)
    assert status == 503
    assert report["status"] == "degraded"
    job = report["jobs"]["check-upcoming-payouts"]
    assert job["overdue"] is True
    assert job["last_run"]["status"] == "failed"
    assert job["last_success"] == long_ago.isoformat()
    assert report["jobs"]["process-tasks"]["overdue"] is False


def test_a_disabled_job_is_never_overdue(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    # Its schedule is gone, so it will not run again: that is not a fault to alarm on.
    app = synced(make_app, {**qstash_env, "JOB_CHECK_UPCOMING_PAYOUTS_ENABLED": "false"})
    long_ago = utcnow() - timedelta(days=30)
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="old", job="check-upcoming-payouts", retried=0, attempts=1,
                           trigger="qstash", status="succeeded", started_at=long_ago,
                           expires_at=long_ago, finished_at=long_ago))
    status, report = health(app)
    job = report["jobs"]["check-upcoming-payouts"]
    assert (job["enabled"], job["overdue"]) == (False, False)
    assert (status, report["status"], report["reasons"]) == (200, "ok", [])


def test_answers_are_cached_briefly(
    make_app: AppFactory, qstash_env: dict[str, str], local_qstash: Local
) -> None:
    local, _ = local_qstash
    app = synced(make_app, qstash_env)
    before = len(local.api_calls)
    first = health(app)
    second = health(app)
    assert first == second
    assert len(local.api_calls) == before + 1


def test_requires_the_admin_token(make_app: AppFactory, env: dict[str, str]) -> None:
    app = make_app(env)
    assert app.test_client().get("/api/admin/qstash-health").status_code == 401
    del env["ADMIN_API_TOKEN"]
    response = make_app(env).test_client().get("/api/admin/qstash-health", headers=AUTH)
    assert response.status_code == 503
    assert response.get_json()["error"] == "admin_api_disabled"
