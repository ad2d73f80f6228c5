from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import requests
from flask import Flask
from qstash import QStash

from devtools import devstack
from devtools.gunicorn import running_gunicorn
from devtools.qstash_local import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_TOKEN,
    LocalQStash,
    LocalQStashConfig,
    serve,
)
from service.extensions import get_sessions
from service.qstash.signature import qstash_claims, sign_claims
from service.runs.history import run_history
from tests.helpers import ROOT, AppFactory, free_port
from tests.qstash_local.helpers import FakeClock

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    local: LocalQStash
    clock: FakeClock
    sdk: QStash
    env: dict[str, str]
    app: Flask
    url: str

    def flask(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "flask"), *args], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, **self.env, "FLASK_APP": "wsgi"})

    def publish(self, body: dict[str, object], target: str = "/api/cron/probe") -> str:
        response = self.sdk.message.publish(
            url=self.url + "/api/qstash", body=json.dumps(body),
            content_type="application/json", headers={"X-Qstash-Target-Url": target})
        return str(response.message_id)  # type: ignore[union-attr]

    def deliver_due(self) -> list[int | None]:
        """Run the server's delivery loop once; return the statuses of the new attempts."""
        before = len(self.local.attempts)
        self.local.tick()
        return [a.status for a in self.local.attempts[before:]]

    def runs(self) -> list[dict[str, object]]:
        return run_history(get_sessions(self.app))


@pytest.fixture
def stack(make_app: AppFactory, env: dict[str, str], request: pytest.FixtureRequest,
          tmp_path: Path) -> Iterator[Stack]:
    """Local QStash (driven by a clock the test moves) + the service under real gunicorn."""
    sign_with: Literal["current", "next"] = getattr(request, "param", "current")
    port = free_port()
    # Start 30 s into the previous minute, so a cron slot can be reached without signing
    # tokens in the future of the service's real clock.
    # Thirty seconds before the current minute's slot, or the previous minute's on the hour,
    # when the real jobs' schedules (0 */2 * * *, ...) would fire as well.
    minute = math.floor(time.time() / 60) * 60
    if time.gmtime(minute).tm_min == 0:
        minute -= 60
    clock = FakeClock(minute - 30)
    local = LocalQStash(LocalQStashConfig(sign_with=sign_with, backoff_scale=0.001),
                        clock=clock)
    with serve(local) as qstash_server:
        stack_env = devstack.stack_env(env, app_url=f"http://127.0.0.1:{port}",
                                       qstash_url=qstash_server.url)
        app = make_app(stack_env)
        sdk = QStash(DEV_TOKEN, base_url=qstash_server.url, retry=False)
        try:
            with running_gunicorn(
                "tests.probe_wsgi:app", port=port, log_path=tmp_path / "gunicorn.log",
                env={**os.environ, **stack_env, "GUNICORN_WORKERS": "2"},
            ) as gunicorn:
                yield Stack(local=local, clock=clock, sdk=sdk, env=stack_env, app=app,
                            url=gunicorn.url)
        finally:
            sdk.http._client.close()


def test_update_then_check_reports_in_sync(stack: Stack) -> None:
    update = stack.flask("qstash", "update")
    assert update.returncode == 0, update.stderr
    assert "created 3" in update.stdout
    check = stack.flask("qstash", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "status: ok" in check.stdout
    assert "schedules: in sync" in check.stdout


def test_a_schedule_fires_and_runs_its_job(stack: Stack) -> None:
    stack.env["JOB_PROCESS_TASKS_CRON"] = "* * * * *"
    assert stack.flask("qstash", "update").returncode == 0
    assert stack.deliver_due() == []  # not yet: the next minute has not started
    stack.clock.now += 31
    assert stack.deliver_due() == [200]
    [run] = stack.runs()
    assert (run["job"], run["trigger"], run["status"]) == ("process-tasks", "qstash", "succeeded")
    assert run["schedule_id"] == "eleva-jobs.development.process-tasks"
    assert stack.deliver_due() == []  # once per slot


def test_a_failed_delivery_is_retried_and_then_succeeds(stack: Stack, marker: Path) -> None:
    message_id = stack.publish({"job": "probe", "action": "fail_first", "marker": str(marker)})
    assert stack.deliver_due() == [500]
    stack.clock.now += 1
    assert stack.deliver_due() == [200]
    [run] = stack.runs()
    assert (run["message_id"], run["status"], run["attempts"], run["retried"]) == (
        message_id, "succeeded", 2, 1)
    assert len(marker.read_text().splitlines()) == 2


def test_a_489_stops_the_retries(stack: Stack, marker: Path) -> None:
    message_id = stack.publish({"job": "probe", "action": "permanent", "marker": str(marker)})
    assert stack.deliver_due() == [489]
    stack.clock.now += 3600
    assert stack.deliver_due() == []
    [entry] = stack.local.dlq.values()
    assert entry.message.message_id == message_id
    assert len(marker.read_text().splitlines()) == 1


def test_a_duplicate_delivery_runs_the_job_once(stack: Stack, marker: Path) -> None:
    body = json.dumps({"job": "probe", "marker": str(marker)})
    message_id = stack.publish(json.loads(body))
    assert stack.deliver_due() == [200]
    # QStash delivers at least once: the same message may arrive again, freshly signed.
    claims = qstash_claims(url=stack.url + "/api/qstash", body=body.encode(),
                           now=stack.clock.now)
    again = requests.post(stack.url + "/api/qstash", data=body, timeout=10, headers={
        "Upstash-Signature": sign_claims(claims, DEV_CURRENT_SIGNING_KEY),
        "Upstash-Message-Id": message_id, "Upstash-Retried": "0",
        "X-Qstash-Target-Url": "/api/cron/probe", "Content-Type": "application/json"})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert len(marker.read_text().splitlines()) == 1
    assert len(stack.runs()) == 1


@pytest.mark.parametrize("stack", ["next"], indirect=True)
def test_deliveries_signed_with_the_next_key_are_accepted(stack: Stack) -> None:
    stack.publish({"job": "probe"})
    assert stack.deliver_due() == [200]


def test_rolling_the_keys_twice_without_redeploying_breaks_delivery(stack: Stack) -> None:
    stack.sdk.signing_key.rotate()  # current := old next: still accepted
    stack.publish({"job": "probe"})
    assert stack.deliver_due() == [200]
    stack.sdk.signing_key.rotate()  # both keys the service knows are gone
    stack.publish({"job": "probe"})
    assert stack.deliver_due() == [401]


@pytest.mark.parametrize(("job", "statuses", "later"),
                         [("probe", [200, 200], []), ("probe-retry", [200, 503], [200])])
def test_overlapping_deliveries_meet_the_overlap_guard(
    stack: Stack, marker: Path, job: str, statuses: list[int], later: list[int]
) -> None:
    # QStash delivers concurrently: two messages for one job arrive while the first runs.
    body = {"job": job, "sleep": 2, "marker": str(marker)}
    for _ in range(2):
        stack.publish(body, target=f"/api/cron/{job}")
    assert sorted(s or 0 for s in stack.deliver_due()) == statuses
    stack.clock.now += 60  # the busy answer's Retry-After
    assert stack.deliver_due() == later
    outcomes = sorted(str(run["status"]) for run in stack.runs())
    if job == "probe":
        assert outcomes == ["skipped", "succeeded"]
        assert len(marker.read_text().splitlines()) == 1
    else:
        assert outcomes == ["succeeded", "succeeded"]
        assert len(marker.read_text().splitlines()) == 2
