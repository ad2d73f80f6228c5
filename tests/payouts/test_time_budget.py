from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask import Flask

from devtools.qstash_local import LocalQStash, RunningServer
from service.extensions import get_jobs, services
from service.payouts.continuation import publish_continuation
from service.runs.jobs import JobContext
from tests.helpers import (
    APP_URL,
    AppFactory,
    add_expert,
    add_transfer,
    delivery_headers,
    load_transfer,
)

JOB = "process-expert-transfers"
SLOW = {"PAYOUT_SIMULATED_LATENCY_MS": "100", "PAYOUT_CONCURRENCY": "2"}


def context(app: Flask, *, budget: float, run_id: str = "run0001") -> JobContext:
    return JobContext(job=get_jobs(app)[JOB], run_id=run_id, trigger="cli",
                      message_id=None, retried=0, payload={},
                      deadline=time.monotonic() + budget)


def run(app: Flask, ctx: JobContext) -> dict[str, Any]:
    """Call the job's handler as the runner does, inside the app's context."""
    with app.app_context():
        return dict(ctx.job.handler(ctx))


def backlog(app: Flask, count: int) -> list[int]:
    add_expert(app)
    return [add_transfer(app) for _ in range(count)]


def test_a_run_stops_before_its_budget_and_hands_over_through_qstash(
    make_app: AppFactory, qstash_env: dict[str, str],
    local_qstash: tuple[LocalQStash, RunningServer],
) -> None:
    local, _ = local_qstash
    app = make_app({**qstash_env, **SLOW})
    ids = backlog(app, 40)
    ctx = context(app, budget=1.0)

    started = time.monotonic()
    result = run(app, ctx)
    elapsed = time.monotonic() - started

    # Claims stop at 0.9 s; the calls in flight (at most 2 x 2 of 0.1 s) finish after it.
    assert elapsed < 1.0 + 0.5
    assert result["stopped_early"] is True
    assert 4 <= result["paid"] < 40
    assert result["considered"] == result["paid"]
    assert result["remaining"] == 40 - result["paid"]
    assert result["continuation"] == "published"
    statuses = [load_transfer(app, i).status for i in ids]
    assert statuses.count("PROCESSING") == 0
    assert statuses.count("COMPLETED") == result["paid"]

    [message] = local.messages.values()
    assert message.url == f"{APP_URL}/api/qstash"
    assert message.headers["X-Qstash-Target-Url"] == [f"/api/cron/{JOB}"]
    assert json.loads(message.body) == {"job": JOB, "continuation_of": "run0001"}
    assert message.max_retries == 3
    # Delayed, so that this run has released the job lease when it arrives.
    assert message.not_before - message.created_at == pytest.approx(5, abs=1)
    # Publishing again for the same run is deduplicated by its run id.
    again = publish_continuation(services(app).qstash, app_url=APP_URL, job=ctx.job,
                                 run_id=ctx.run_id)
    assert again.status == "published" and again.message_id == message.message_id
    assert len(local.messages) == 1


def test_the_continuation_delivery_drains_the_rest(
    make_app: AppFactory, qstash_env: dict[str, str],
    local_qstash: tuple[LocalQStash, RunningServer],
) -> None:
    local, _ = local_qstash
    app = make_app({**qstash_env, **SLOW})
    ids = backlog(app, 12)
    ctx = context(app, budget=0.3)
    first = run(app, ctx)
    assert first["continuation"] == "published" and first["remaining"] > 0

    [message] = local.messages.values()
    headers = delivery_headers(message.body, target=message.headers["X-Qstash-Target-Url"][0],
                               message_id=message.message_id)
    response = app.test_client().post("/api/qstash", data=message.body, headers=headers)

    assert response.status_code == 200, response.get_json()
    second: dict[str, Any] = response.get_json()["result"]
    assert second["paid"] == first["remaining"]
    assert (second["remaining"], second["continuation"]) == (0, "not_needed")
    assert {load_transfer(app, i).status for i in ids} == {"COMPLETED"}


def test_without_qstash_a_run_reports_not_configured(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    env = {k: v for k, v in env.items() if k != "QSTASH_TOKEN"}
    app = make_app({**env, **SLOW})
    backlog(app, 10)
    ctx = context(app, budget=0.3)
    result = run(app, ctx)
    assert result["remaining"] > 0
    assert result["continuation"] == "not_configured"


def test_a_qstash_refusal_is_reported_not_raised(
    make_app: AppFactory, qstash_env: dict[str, str],
    local_qstash: tuple[LocalQStash, RunningServer],
) -> None:
    local, _ = local_qstash
    local.inject_api_failure(status=400, path_prefix="/v2/publish")
    app = make_app({**qstash_env, **SLOW})
    backlog(app, 10)
    ctx = context(app, budget=0.3)
    assert run(app, ctx)["continuation"] == "failed"


def test_a_run_that_finishes_in_time_publishes_nothing(
    make_app: AppFactory, qstash_env: dict[str, str],
    local_qstash: tuple[LocalQStash, RunningServer],
) -> None:
    local, _ = local_qstash
    app = make_app(qstash_env)
    backlog(app, 5)
    ctx = context(app, budget=30)
    result = run(app, ctx)
    assert (result["paid"], result["stopped_early"], result["continuation"]) == (
        5, False, "not_needed")
    assert local.messages == {}
