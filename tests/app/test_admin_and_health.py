from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import db
from service.extensions import get_sessions
from service.runs.history import run_history
from tests.helpers import ADMIN_TOKEN, APP_URL, AUTH, AppFactory, delivery_headers, job_body, mint


def test_liveness(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["X-Request-Id"]


def test_readiness_when_migrated(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": {"revision": db.head_revision()}}


def test_readiness_fails_before_migrations(make_app: AppFactory, env: dict[str, str]) -> None:
    response = make_app(env, migrate=False).test_client().get("/readyz")
    assert response.status_code == 503
    data = response.get_json()
    assert data["error"] == "database_not_migrated"
    assert "flask db upgrade" in data["message"]


def test_readiness_fails_when_the_database_is_unreachable(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"
    response = make_app(env, migrate=False).test_client().get("/readyz")
    assert response.status_code == 503
    data = response.get_json()
    assert data["error"] == "database_unavailable"
    assert "nobody" not in data["message"]


def test_request_id_is_echoed(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers[
        "X-Request-Id"] == "abc-123"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": ADMIN_TOKEN}])
def test_admin_requires_the_token(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get("/api/admin/job-runs", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert ADMIN_TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/admin/job-runs"),
                                              ("POST", "/api/cron/process-tasks")])
def test_admin_is_disabled_without_a_token(make_app: AppFactory, env: dict[str, str],
                                           method: str, path: str) -> None:
    del env["ADMIN_API_TOKEN"]
    app = make_app(env)
    response = app.test_client().open(path, method=method, headers=AUTH)
    assert response.status_code == 503
    assert response.get_json()["error"] == "admin_api_disabled"
    assert run_history(get_sessions(app)) == []


@pytest.mark.usefixtures("probes")
def test_job_runs_lists_and_filters(client: FlaskClient, marker: Path) -> None:
    for i, action in enumerate(["ok", "ok", "permanent"]):
        body = job_body("probe", marker=str(marker), action=action)
        client.post("/api/qstash", data=body,
                    headers=delivery_headers(body, target="/api/cron/probe",
                                             message_id=f"msg_{i}"))
    body = job_body("process-tasks")
    client.post("/api/qstash", data=body, headers=delivery_headers(body, message_id="msg_pt"))

    everything = client.get("/api/admin/job-runs", headers=AUTH).get_json()
    assert everything["count"] == 4
    assert [r["message_id"] for r in everything["runs"]] == ["msg_pt", "msg_2", "msg_1", "msg_0"]

    failed = client.get("/api/admin/job-runs?job=probe&status=failed", headers=AUTH).get_json()
    assert [r["message_id"] for r in failed["runs"]] == ["msg_2"]
    assert failed["runs"][0]["error"].startswith("probe_refused")

    limited = client.get("/api/admin/job-runs?limit=1", headers=AUTH).get_json()
    assert [r["message_id"] for r in limited["runs"]] == ["msg_pt"]


def test_job_runs_rejects_bad_filters(client: FlaskClient) -> None:
    response = client.get("/api/admin/job-runs?job=nope&status=weird&limit=0", headers=AUTH)
    assert response.status_code == 422
    data = response.get_json()
    assert data["error"] == "validation_failed"
    assert set(data["fields"]) == {"job", "status", "limit"}


def test_direct_cron_endpoint_with_admin_token(app: Flask, client: FlaskClient) -> None:
    response = client.post("/api/cron/process-tasks", headers=AUTH)
    assert response.status_code == 200
    run_id = response.get_json()["run_id"]
    runs = client.get("/api/admin/job-runs", headers=AUTH).get_json()["runs"]
    assert [(r["id"], r["trigger"], r["message_id"]) for r in runs] == [(run_id, "admin", None)]


def test_direct_cron_endpoint_with_a_signature_for_its_own_url(client: FlaskClient) -> None:
    body = job_body("process-tasks")
    headers = delivery_headers(body, target=None, message_id="msg_direct",
                               url=APP_URL + "/api/cron/process-tasks")
    response = client.post("/api/cron/process-tasks", data=body, headers=headers)
    assert response.status_code == 200
    runs = client.get("/api/admin/job-runs", headers=AUTH).get_json()["runs"]
    assert [(r["trigger"], r["message_id"]) for r in runs] == [("qstash", "msg_direct")]


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "unauthorized"),
    ({"Authorization": "Bearer wrong"}, "invalid_token"),
    ({"Upstash-Signature": mint(b"")}, "wrong_subject"),  # signed for /api/qstash
    ({"Upstash-Signature": "garbage"}, "malformed"),
])
def test_direct_cron_endpoint_refuses_everything_else(
    client: FlaskClient, headers: dict[str, str], code: str
) -> None:
    response = client.post("/api/cron/process-tasks", data=b"", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == code
    runs = client.get("/api/admin/job-runs", headers=AUTH).get_json()["runs"]
    assert runs == []


@pytest.mark.parametrize("limit", ["%C2%B2", "99999999999999999999", "501", "0"])
def test_job_runs_refuses_a_bad_limit(client: FlaskClient, limit: str) -> None:
    response = client.get(f"/api/admin/job-runs?limit={limit}", headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert set(response.get_json()["fields"]) == {"limit"}
