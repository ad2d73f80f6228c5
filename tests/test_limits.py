from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from service.limits import MAX_HEADER_BYTES, MAX_HEADERS, MAX_URL_BYTES


@pytest.mark.parametrize("path", ["/api/qstash", "/api/cron/process-tasks", "/healthz"])
def test_options_is_not_answered_2xx(client: FlaskClient, path: str) -> None:
    response = client.options(path)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"


def test_long_url_is_refused_in_json(client: FlaskClient) -> None:
    response = client.get("/healthz?x=" + "a" * MAX_URL_BYTES)
    assert response.status_code == 414
    assert response.get_json()["error"] == "uri_too_long"


def test_large_header_is_refused_in_json(client: FlaskClient) -> None:
    response = client.post("/api/qstash", headers={"Upstash-Signature": "x" * MAX_HEADER_BYTES})
    assert response.status_code == 431
    assert response.get_json()["error"] == "headers_too_large"


def test_too_many_headers_are_refused_in_json(client: FlaskClient) -> None:
    headers = {f"X-Extra-{i}": "1" for i in range(MAX_HEADERS + 1)}
    response = client.post("/api/qstash", headers=headers)
    assert response.status_code == 431
    assert response.get_json()["error"] == "headers_too_large"


def test_headers_within_limits_pass(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Note": "x" * (MAX_HEADER_BYTES - 100)})
    assert response.status_code == 200
