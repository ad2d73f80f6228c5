from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from service.extensions import get_sessions
from service.runs.history import run_history
from tests.helpers import delivery_headers, free_port, job_body, wait_until_live

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(app: Flask, env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Run the real service under gunicorn on loopback, on the test database."""
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, **env, "GUNICORN_BIND": f"127.0.0.1:{port}",
             "GUNICORN_WORKERS": "2"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, tmp_path / "gunicorn.log")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


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
