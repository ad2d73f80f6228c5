from __future__ import annotations

import io
import re

import pytest
from flask.testing import FlaskClient

from service.limits import MAX_HEADER_BYTES, MAX_HEADERS, MAX_URL_BYTES
from tests.helpers import ADMIN_TOKEN, APP_URL, AppFactory, delivery_headers, job_body


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


BODY_LIMIT = 2048


def body_of_exactly(size: int) -> bytes:
    """Return a job body that is a JSON object of exactly `size` bytes."""
    head = job_body("process-tasks", pad="")
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


def concrete(rule: str) -> str:
    return re.sub(r"<int:\w+>", "1", re.sub(r"<(?!int:)\w+>", "exp_1", rule))


@pytest.mark.parametrize("over", [0, 1, 40_000])
def test_a_chunked_body_over_the_limit_is_refused_on_every_endpoint_that_takes_one(
    make_app: AppFactory, env: dict[str, str], over: int
) -> None:
    env["MAX_BODY_BYTES"] = str(BODY_LIMIT)
    app = make_app(env)
    client = app.test_client()
    head = body_of_exactly(BODY_LIMIT)
    routes = [(rule.rule, method) for rule in app.url_map.iter_rules()
              for method in sorted((rule.methods or set()) & {"POST", "PUT", "PATCH"})]
    assert {path for path, _ in routes} >= {"/api/qstash", "/api/cron/process-tasks",
                                            "/api/transfers"}
    for rule, method in routes:
        path = concrete(rule)
        # Signed over the first BODY_LIMIT bytes: what a server that cuts the body would check.
        headers = {**delivery_headers(head, url=APP_URL + path), "Authorization":
                   f"Bearer {ADMIN_TOKEN}", "Transfer-Encoding": "chunked"}
        response = client.open(path, method=method, headers=headers,
                               input_stream=io.BytesIO(head + b"y" * over),
                               # What gunicorn says of a chunked body it terminates itself.
                               environ_overrides={"wsgi.input_terminated": True})
        if over and rule.startswith("/admin/"):  # the console answers with its HTML pages
            assert response.status_code == 413, rule
            assert "Too large" in response.get_data(as_text=True), rule
        elif over:
            assert response.status_code == 413, (rule, response.get_json())
            assert response.get_json()["error"] == "payload_too_large"
        else:
            assert response.status_code != 413, rule
