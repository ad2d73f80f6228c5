from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from devtools.qstash_local import LocalQStash, RunningServer
from service.console.access import FREE_FAILURES, SignInThrottle
from service.db import utcnow
from service.extensions import get_sessions
from service.models import JobRun
from tests.console.helpers import add_dead_letter, csrf_of
from tests.helpers import (
    ADMIN_TOKEN,
    CURRENT_KEY,
    NEXT_KEY,
    AppFactory,
    add_expert,
    add_transfer,
    load_transfer,
)

PAGES = ("/admin/", "/admin/runs", "/admin/payouts", "/admin/dead-letters", "/admin/schedules",
         "/admin/jobs/process-tasks")
FORMS = ("/admin/sign-out", "/admin/jobs/process-tasks/trigger", "/admin/schedules/sync",
         "/admin/payouts/transfers/1/approve", "/admin/dead-letters/retry",
         "/admin/dead-letters/delete")
JOBS = ("process-tasks", "check-upcoming-payouts", "process-expert-transfers")


def add_run(app: Flask, *, job: str = "process-tasks", status: str = "succeeded",
            ago: timedelta = timedelta(hours=1), **fields: object) -> str:
    """Record a finished run of a job; return its id."""
    run_id = uuid.uuid4().hex
    started = utcnow() - ago
    values: dict[str, object] = {
        "id": run_id, "job": job, "trigger": "qstash", "status": status, "started_at": started,
        "expires_at": started, "finished_at": started + timedelta(seconds=2),
        "duration_ms": 2000, "result": {"pruned_runs": 3}, **fields}
    with get_sessions(app).begin() as session:
        session.add(JobRun(**values))
    return run_id


def text(answer: object) -> str:
    return answer.get_data(as_text=True)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("path", [*PAGES, "/admin/runs/abc", "/admin/payouts/transfers/1",
                                  "/admin/messages/msg_1"])
def test_signed_out_pages_send_to_sign_in(client: FlaskClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith("/admin/sign-in")


def test_sign_in_page_is_labelled_and_strict(client: FlaskClient) -> None:
    answer = client.get("/admin/sign-in")
    page = text(answer)
    assert answer.status_code == 200
    assert '<label for="token">' in page and 'id="token"' in page
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"


def test_sign_in_sets_a_strict_session_cookie(client: FlaskClient) -> None:
    answer = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN,
                                                 "csrf_token": csrf_of(client)})
    assert answer.status_code == 303
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Expires=" in cookie
    # APP_URL of the tests is https: the cookie goes only over TLS.
    assert "Secure" in cookie
    assert client.get("/admin/").status_code == 200


def test_cookie_is_not_secure_over_plain_http(make_app: AppFactory,
                                              qstash_env: dict[str, str]) -> None:
    client = make_app({**qstash_env, "APP_URL": "http://127.0.0.1:8000"}).test_client()
    answer = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN,
                                                 "csrf_token": csrf_of(client)})
    assert "Secure" not in answer.headers["Set-Cookie"]


def test_wrong_token_is_refused_logged_and_slowed(client: FlaskClient,
                                                  _no_pauses: list[float],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    answer = client.post("/admin/sign-in", data={"token": "guess",
                                                 "csrf_token": csrf_of(client)})
    assert answer.status_code == 401
    assert "not the ADMIN_API_TOKEN" in text(answer)
    assert _no_pauses == [0.5]
    assert any("sign-in failed" in r.getMessage() for r in caplog.records)
    assert client.get("/admin/").status_code == 303


def test_repeated_failures_lock_the_address_out(client: FlaskClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("blueprints.console.auth.throttle", SignInThrottle())
    for _ in range(FREE_FAILURES):
        answer = client.post("/admin/sign-in", data={"token": "guess",
                                                     "csrf_token": csrf_of(client)})
        assert answer.status_code == 401
    # Now even the right token is not looked at until the lockout ends.
    locked = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN,
                                                 "csrf_token": csrf_of(client)})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert client.get("/admin/").status_code == 303


def test_console_is_off_without_the_token(make_app: AppFactory,
                                          qstash_env: dict[str, str]) -> None:
    env = {k: v for k, v in qstash_env.items() if k != "ADMIN_API_TOKEN"}
    client = make_app(env).test_client()
    for path in ("/admin/", "/admin/sign-in"):
        answer = client.get(path)
        assert answer.status_code == 503
        assert "console is off" in text(answer)
    assert client.post("/admin/sign-in", data={"token": ""}).status_code == 503


def test_sign_out_ends_the_session(console: FlaskClient) -> None:
    answer = console.post("/admin/sign-out", data={"csrf_token": csrf_of(console, "/admin/")})
    assert answer.status_code == 303
    assert console.get("/admin/").status_code == 303


@pytest.mark.parametrize("path", FORMS)
def test_forms_without_csrf_are_refused(console: FlaskClient, path: str) -> None:
    assert console.post(path, data={"approved_by": "ops", "all": "1"}).status_code == 400
    assert console.post(path, data={"csrf_token": "forged", "all": "1"}).status_code == 400


def test_sign_in_without_csrf_is_refused(client: FlaskClient) -> None:
    assert client.post("/admin/sign-in", data={"token": ADMIN_TOKEN}).status_code == 400


def test_session_ends_when_the_token_rotates(make_app: AppFactory,
                                             qstash_env: dict[str, str]) -> None:
    first = make_app(qstash_env).test_client()
    first.post("/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(first)})
    cookie = first.get_cookie("eleva_console", path="/admin")
    assert cookie is not None
    rotated = make_app({**qstash_env, "ADMIN_API_TOKEN": "another-admin-token-987654"})
    second = rotated.test_client()
    second.set_cookie("eleva_console", cookie.value, path="/admin", domain=cookie.domain)
    assert second.get("/admin/").status_code == 303


@pytest.mark.parametrize("path", ["/admin/runs/nope", "/admin/jobs/nope",
                                  "/admin/payouts/transfers/999",
                                  "/admin/payouts/transfers/99999999999",
                                  "/admin/messages/msg_unknown", "/admin/nowhere"])
def test_unknown_ids_are_404(console: FlaskClient, path: str) -> None:
    assert console.get(path).status_code == 404


def test_unknown_ids_in_forms_are_404(console: FlaskClient) -> None:
    token = csrf_of(console, "/admin/")
    assert console.post("/admin/jobs/nope/trigger", data={"csrf_token": token}
                        ).status_code == 404
    assert console.post("/admin/payouts/transfers/999/approve",
                        data={"csrf_token": token, "approved_by": "ops"}).status_code == 404
    for action in ("retry", "delete"):
        assert console.post(f"/admin/dead-letters/{action}",
                            data={"csrf_token": token, "dlq_id": "1-404"}).status_code == 404
        assert console.post(f"/admin/dead-letters/{action}",
                            data={"csrf_token": token, "dlq_id": "../x"}).status_code == 404


def test_overview_shows_the_three_jobs_in_words(console: FlaskClient, app: Flask) -> None:
    run_id = add_run(app, job="process-tasks", duration_ms=1500)
    page = text(console.get("/admin/"))
    for job in JOBS:
        assert f'href="/admin/jobs/{job}"' in page
    assert "at 04:00, every day" in page and "every 2 hours, on the hour" in page
    assert "at 12:00, every day" in page
    assert f"/admin/runs/{run_id}" in page and "1.5 s" in page
    # Nothing synced yet: drift is reported, with the way to fix it.
    assert "Not in sync" in page and "Sync schedules" in page
    assert "<svg" in page and 'class="mark mark-succeeded"' in page


def test_job_page_draws_its_timeline(console: FlaskClient, app: Flask) -> None:
    add_run(app, job="process-tasks", status="failed", ago=timedelta(days=2), error="boom")
    add_run(app, job="process-tasks", ago=timedelta(days=40))  # older than the picture
    page = text(console.get("/admin/jobs/process-tasks"))
    assert page.count("<circle") == 1
    assert "1 failed" in page


def test_runs_filter_and_page(console: FlaskClient, app: Flask) -> None:
    for minutes in range(55):
        add_run(app, job="check-upcoming-payouts", ago=timedelta(minutes=minutes + 1))
    failed = add_run(app, job="process-tasks", status="failed", ago=timedelta(days=3),
                     trigger="admin")
    first = text(console.get("/admin/runs"))
    assert first.count('<th scope="row"><a href="/admin/runs/') == 50
    assert "Older runs" in first
    second = text(console.get("/admin/runs?page=2"))
    assert second.count('<th scope="row"><a href="/admin/runs/') == 6
    only = text(console.get("/admin/runs?status=failed&trigger=admin"))
    assert failed[:12] in only and only.count('<th scope="row"><a href="/admin/runs/') == 1
    day = (utcnow() - timedelta(days=3)).date().isoformat()
    dated = text(console.get(f"/admin/runs?from={day}&to={day}"))
    assert failed[:12] in dated
    wrong = console.get("/admin/runs?status=exploded&from=yesterday&page=0")
    assert wrong.status_code == 200
    assert "Ignored invalid filters" in text(wrong)


def test_run_page_lays_out_the_result_and_error(console: FlaskClient, app: Flask) -> None:
    run_id = add_run(app, status="failed", message_id="msg_abc", error="job_failed: boom",
                     result={"pruned_runs": 3, "outcomes": [{"id": 1}]})
    page = text(console.get(f"/admin/runs/{run_id}"))
    assert "msg_abc" in page and "job_failed: boom" in page
    assert "pruned runs" in page and "<pre>" in page
    assert "Run process-tasks again through QStash" in page


def test_trigger_publishes_and_links_to_the_run(console: FlaskClient, app: Flask,
                                                local_qstash: tuple[LocalQStash, RunningServer]
                                                ) -> None:
    local, _ = local_qstash
    answer = console.post("/admin/jobs/process-tasks/trigger",
                          data={"csrf_token": csrf_of(console, "/admin/")})
    assert answer.status_code == 303
    message_id = answer.headers["Location"].rsplit("/", 1)[1]
    assert message_id in local.messages
    assert local.messages[message_id].headers["X-Qstash-Target-Url"] == ["/api/cron/process-tasks"]
    waiting = console.get(f"/admin/messages/{message_id}")
    assert waiting.status_code == 200 and "has not arrived yet" in text(waiting)
    run_id = add_run(app, message_id=message_id)
    arrived = console.get(f"/admin/messages/{message_id}")
    assert arrived.status_code == 303 and arrived.headers["Location"].endswith(run_id)


def test_sync_shows_the_plan_then_applies_it(console: FlaskClient,
                                             local_qstash: tuple[LocalQStash, RunningServer]
                                             ) -> None:
    local, _ = local_qstash
    plan = text(console.get("/admin/schedules"))
    assert plan.count("<td>create</td>") == 3 and "Apply this plan" in plan
    assert local.schedules == {}
    answer = console.post("/admin/schedules/sync",
                          data={"csrf_token": csrf_of(console, "/admin/")})
    assert answer.status_code == 303
    assert len(local.schedules) == 3
    assert "everything is in sync" in text(console.get("/admin/schedules")).lower()


def test_payouts_list_what_needs_a_person_and_approve(console: FlaskClient, app: Flask) -> None:
    add_expert(app, email="ana.silva@example.com")
    waiting = add_transfer(app, requires_approval=True)
    failed = add_transfer(app, status="FAILED", attempts=3, last_error_code="account_invalid")
    unknown = add_transfer(app, attempts=3, last_error_code="timeout")
    add_transfer(app, status="COMPLETED", amount=1000)
    page = text(console.get("/admin/payouts"))
    for transfer_id in (waiting, failed, unknown):
        assert f"/admin/payouts/transfers/{transfer_id}" in page
    assert "Awaiting approval: 1" in page and "account_invalid" in page
    assert "€10.00" in page  # the completed one's total
    assert "ana.silva@example.com" not in page
    missing = console.post(f"/admin/payouts/transfers/{waiting}/approve",
                           data={"csrf_token": csrf_of(console, "/admin/"), "approved_by": " "})
    assert missing.status_code == 422
    answer = console.post(f"/admin/payouts/transfers/{waiting}/approve",
                          data={"csrf_token": csrf_of(console, "/admin/"),
                                "approved_by": "Rita (ops)"})
    assert answer.status_code == 303
    assert load_transfer(app, waiting).approved_by == "Rita (ops)"
    detail = text(console.get(answer.headers["Location"]))
    assert "approved by Rita (ops)" in detail and "a***@example.com" in detail
    refused = console.post(f"/admin/payouts/transfers/{failed}/approve",
                           data={"csrf_token": csrf_of(console, "/admin/"),
                                 "approved_by": "Rita"})
    assert refused.status_code == 409


def test_dead_letters_retry_and_delete(console: FlaskClient,
                                       local_qstash: tuple[LocalQStash, RunningServer]) -> None:
    local, _ = local_qstash
    first = add_dead_letter(local, answer=b'{"error":"job_failed","message":"a@b.example"}')
    second = add_dead_letter(local, job="check-upcoming-payouts")
    page = text(console.get("/admin/dead-letters"))
    assert first in page and second in page and "HTTP 500" in page
    assert "check-upcoming-payouts" in page
    assert "a@b.example" not in page and "a***@b.example" in page
    token = csrf_of(console, "/admin/")
    retried = console.post("/admin/dead-letters/retry", data={"csrf_token": token,
                                                              "dlq_id": first})
    assert retried.status_code == 303 and "/admin/messages/" in retried.headers["Location"]
    assert first not in local.dlq and len(local.messages) == 1
    assert console.get(retried.headers["Location"]).status_code == 200
    deleted = console.post("/admin/dead-letters/delete", data={"csrf_token": token, "all": "1"})
    assert deleted.status_code == 303
    assert local.dlq == {}


def test_no_secret_on_any_page(console: FlaskClient, app: Flask, qstash_env: dict[str, str],
                               local_qstash: tuple[LocalQStash, RunningServer]) -> None:
    add_expert(app, email="secret.person@example.com")
    transfer_id = add_transfer(app, requires_approval=True,
                               last_error_code="x", last_error_message=f"key {ADMIN_TOKEN}")
    run_id = add_run(app, status="failed",
                     error=f"token {ADMIN_TOKEN} for secret.person@example.com",
                     result={"note": qstash_env["QSTASH_TOKEN"]})
    add_dead_letter(local_qstash[0], answer=f'{{"leak":"{CURRENT_KEY}"}}'.encode())
    secrets = [ADMIN_TOKEN, qstash_env["QSTASH_TOKEN"], CURRENT_KEY, NEXT_KEY,
               "secret.person@example.com"]
    pages = [*PAGES, f"/admin/runs/{run_id}", f"/admin/payouts/transfers/{transfer_id}",
             "/admin/sign-in"]
    for path in pages:
        answer = console.get(path)
        page = text(answer)
        assert answer.status_code in (200, 303), path
        for secret in secrets:
            assert secret not in page, (path, secret)
        # Strict CSP: no inline script or style anywhere.
        assert "<script" not in page and not re.search(r"\sstyle=", page), path

