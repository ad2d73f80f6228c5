from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import (
    RECEIVER_URL,
    deliver,
    delivery_headers,
    executions,
    job_body,
    probe_body,
    runs,
)

pytestmark = pytest.mark.usefixtures("probes")


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
