from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from devtools.gunicorn import running_gunicorn
from service.extensions import get_sessions
from service.runs.history import run_history
from tests.helpers import delivery_headers, job_body


@pytest.fixture
def server(app: Flask, env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Run the real service under gunicorn on loopback, on the test database."""
    with running_gunicorn("wsgi:app", env={**os.environ, **env, "GUNICORN_WORKERS": "2"},
                          log_path=tmp_path / "gunicorn.log") as gunicorn:
        yield gunicorn.url


@pytest.mark.slow
def test_signed_delivery_through_gunicorn(server: str, app: Flask) -> None:
    body = job_body("process-tasks")
    headers = delivery_headers(body, message_id="msg_e2e")
    with requests.Session() as http:
        first = http.post(server + "/api/qstash", data=body, headers=headers, timeout=30)
        again = http.post(server + "/api/qstash", data=body, headers=headers, timeout=30)
        forged = http.post(server + "/api/qstash", data=body + b" ", headers=headers, timeout=30)
        ready = http.get(server + "/readyz", timeout=30)
        # Over the app's header limit but under gunicorn's: the app answers, in JSON.
        big = http.post(server + "/api/qstash", data=body, timeout=30,
                        headers={**headers, "Upstash-Signature": "x" * 10_000})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "succeeded"
    assert again.json()["duplicate"] is True
    assert forged.status_code == 401
    assert forged.json()["error"] == "body_mismatch"
    assert ready.status_code == 200
    assert big.status_code == 431
    assert big.json()["error"] == "headers_too_large"
    runs = run_history(get_sessions(app))
    assert [(r["message_id"], r["status"]) for r in runs] == [("msg_e2e", "succeeded")]
