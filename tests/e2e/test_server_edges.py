from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from flask import Flask

from devtools.gunicorn import Gunicorn, running_gunicorn
from service.db import utcnow
from service.extensions import get_sessions
from service.runs.history import run_history
from tests.helpers import (
    ADMIN_TOKEN,
    APP_URL,
    CURRENT_KEY,
    delivery_headers,
    free_port,
    job_body,
)

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def gunicorn(env: dict[str, str], tmp_path: Path, *, app: str = "wsgi:app",
             **extra: str) -> Iterator[Gunicorn]:
    """Run the real service under gunicorn.conf.py on loopback, 2 workers, its log in a file."""
    port = free_port()
    with running_gunicorn(app, port=port, log_path=tmp_path / f"gunicorn-{port}.log",
                          env={**os.environ, **env, "GUNICORN_WORKERS": "2", **extra},
                          stop_timeout=60) as server:
        yield server


def raw_exchange(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection; return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


# -- 1. idle and slow clients ------------------------------------------------------------------

IDLE = 64
SLOW = 16


class Attackers:
    """Idle connections, and connections that send their headers or body a byte at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sockets.append(sock)
        return sock

    def trickle(self, prefix: bytes, payload: bytes) -> None:
        # Reconnect when cut off, as an attacker would: the pressure never lets up.
        while not self.stop.is_set():
            try:
                sock = self.connect()
                sock.sendall(prefix)
                for byte in payload:
                    if self.stop.wait(0.5):
                        return
                    sock.sendall(bytes([byte]))
            except OSError:
                self.stop.wait(0.1)

    def start(self) -> None:
        for _ in range(IDLE):
            self.connect()
        # Headers that get a delivery as far as reading its body.
        head = (b"POST /api/qstash HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                b"Content-Type: application/json\r\nUpstash-Message-Id: msg_slow\r\n"
                b"Upstash-Signature: x.y.z\r\n")
        slow_headers = (b"", head + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n")
        slow_body = (head + b"\r\n", b"{" * 100)  # the headers at once, then the body
        for i in range(SLOW):
            prefix, payload = slow_body if i % 2 else slow_headers
            thread = threading.Thread(target=self.trickle, args=(prefix, payload), daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def test_idle_and_slow_connections_do_not_take_the_service_down(
    app: Flask, env: dict[str, str], tmp_path: Path
) -> None:
    # One application slot per worker: a slow sender that held one while its body trickled
    # in would stop its worker.
    with gunicorn(env, tmp_path, REQUEST_READ_TIMEOUT="2", GUNICORN_APP_SLOTS="1") as server:
        attackers = Attackers(server.port)
        attackers.start()
        try:
            # Long enough for the slow ones to be cut off and come back at least once.
            deadline = time.monotonic() + 6
            slowest = 0.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                health = requests.get(server.url + "/healthz", timeout=5)
                slowest = max(slowest, time.monotonic() - started)
                assert health.status_code == 200
                time.sleep(0.2)
            body = job_body("process-tasks")
            started = time.monotonic()
            delivered = requests.post(server.url + "/api/qstash", data=body, timeout=10,
                                      headers=delivery_headers(body, message_id="msg_siege"))
            delivery_seconds = time.monotonic() - started
        finally:
            attackers.close()
        output = server.log()
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s"
    # Slow clients cut off are not the service's failure: no 500, no traceback.
    assert "Traceback" not in output and '" 500 ' not in output, output
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "succeeded"
    assert delivery_seconds < 2.0
    assert [(r["message_id"], r["status"]) for r in run_history(get_sessions(app))] == [
        ("msg_siege", "succeeded")]


def test_a_request_read_slower_than_the_read_timeout_is_cut_off(
    env: dict[str, str], tmp_path: Path
) -> None:
    with gunicorn(env, tmp_path, REQUEST_READ_TIMEOUT="1") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            answer = b"x"
            with contextlib.suppress(OSError):
                for _ in range(20):  # a header line every 0.5 s: never idle, never done
                    sock.sendall(b"X-A: b\r\n")
                    time.sleep(0.5)
            with contextlib.suppress(OSError):
                answer = sock.recv(1024)
            cut_after = time.monotonic() - started
    assert answer == b""
    assert cut_after < 5


def test_clients_that_never_close_do_not_stall_the_worker(
    env: dict[str, str], tmp_path: Path
) -> None:
    # gunicorn closes a connection in the worker's main loop and would wait there up to 2 s
    # for the client to close too: a few such clients would stall every other connection.
    with gunicorn(env, tmp_path, GUNICORN_WORKERS="1") as server:
        kept: list[socket.socket] = []
        try:
            for _ in range(4):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                kept.append(sock)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            health = requests.get(server.url + "/healthz", timeout=30)
            waited = time.monotonic() - started
        finally:
            for sock in kept:
                sock.close()
    assert health.status_code == 200
    assert waited < 1.0, f"/healthz took {waited:.2f} s"


def test_a_job_outlasts_the_read_timeout_and_a_stop_lets_it_finish(
    app: Flask, env: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    body = job_body("probe", marker=str(marker), sleep=3)
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_long")
    answers: list[requests.Response] = []
    with gunicorn(env, tmp_path, app="tests.probe_wsgi:app", REQUEST_READ_TIMEOUT="1") as server:
        delivery = threading.Thread(target=lambda: answers.append(requests.post(
            server.url + "/api/qstash", data=body, headers=headers, timeout=30)))
        delivery.start()
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:  # the job has started
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)  # a deploy stops the service meanwhile
        delivery.join(timeout=30)
        server.process.wait(timeout=30)
    [answer] = answers
    assert (answer.status_code, answer.json()["status"]) == (200, "succeeded")


@pytest.mark.parametrize("slots", [1, 2])
def test_the_application_runs_in_at_most_its_slots_at_once(
    app: Flask, env: dict[str, str], tmp_path: Path, slots: int
) -> None:
    marker = tmp_path / "marker"
    body = job_body("probe", marker=str(marker), sleep=1.5)
    headers = delivery_headers(body, target="/api/cron/probe", message_id="msg_slot")
    answers: list[int] = []
    with gunicorn(env, tmp_path, app="tests.probe_wsgi:app", GUNICORN_WORKERS="1",
                  GUNICORN_APP_SLOTS=str(slots)) as server:
        def deliver() -> None:
            answer = requests.post(server.url + "/api/qstash", data=body, headers=headers,
                                   timeout=30)
            answers.append(answer.status_code)

        delivery = threading.Thread(target=deliver)
        delivery.start()
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:  # the job holds a slot
            time.sleep(0.02)
        health = requests.get(server.url + "/healthz", timeout=30)
        health_answered = utcnow()
        delivery.join(timeout=30)
    [run] = run_history(get_sessions(app))
    job_finished = datetime.fromisoformat(run["finished_at"])
    assert (health.status_code, answers, run["status"]) == (200, [200], "succeeded")
    # With one slot the health check waits for the job's; with two it is answered meanwhile.
    # (Compared with the run's recorded end, not with the order in which the two client
    # threads happen to be scheduled once both have their answers.)
    assert (health_answered > job_finished) == (slots == 1)


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(
    app: Flask, env: dict[str, str], tmp_path: Path
) -> None:
    body = job_body("process-tasks")
    headers = {**delivery_headers(body, message_id="msg_expect"), "Host": "x",
               "Content-Length": str(len(body)), "Expect": "100-continue"}
    head = "POST /api/qstash HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with gunicorn(env, tmp_path) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n")
        go_on = sock.recv(1024)  # before the body: the worker reads it ahead of the app
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert go_on == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b'"status":"succeeded"' in answer.replace(b" ", b"")
    assert [(r["message_id"], r["status"]) for r in run_history(get_sessions(app))] == [
        ("msg_expect", "succeeded")]


# -- 2. a chunked body over MAX_BODY_BYTES -----------------------------------------------------

BODY_LIMIT = 4096


def body_of_exactly(size: int) -> bytes:
    head = job_body("process-tasks", pad="")
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


BODY_ENDPOINTS = [("/api/qstash", "POST"), ("/api/cron/process-tasks", "POST"),
                  ("/api/transfers", "POST"), ("/api/transfers/1/approve", "POST"),
                  ("/api/experts/exp_1", "PUT")]


def test_a_chunked_body_over_the_limit_is_413_through_gunicorn(
    app: Flask, env: dict[str, str], tmp_path: Path
) -> None:
    head = body_of_exactly(BODY_LIMIT)

    def chunks(extra: int) -> Iterator[bytes]:
        yield head
        if extra:
            yield b"y" * extra

    answers = {}
    with gunicorn(env, tmp_path, MAX_BODY_BYTES=str(BODY_LIMIT)) as server:
        for number, (path, method) in enumerate(BODY_ENDPOINTS):
            # Signed over the first BODY_LIMIT bytes: what a server cutting the body would check.
            headers = {**delivery_headers(head, url=APP_URL + path, message_id=f"msg_{number}"),
                       "Authorization": f"Bearer {ADMIN_TOKEN}"}
            over = requests.request(method, server.url + path, data=chunks(40_000),
                                    headers=headers, timeout=30)
            assert over.request.headers.get("Transfer-Encoding") == "chunked"
            exact = requests.request(method, server.url + path, data=chunks(0),
                                     headers={**headers,
                                              "Upstash-Message-Id": f"msg_exact_{number}"},
                                     timeout=30)
            answers[path] = (over.status_code, over.json()["error"], exact.status_code)
    assert {path: (over, error) for path, (over, error, _) in answers.items()} == {
        path: (413, "payload_too_large") for path, _ in BODY_ENDPOINTS}
    assert all(exact != 413 for _, _, exact in answers.values()), answers
    runs = run_history(get_sessions(app))
    assert runs and all(run["message_id"].startswith("msg_exact_") for run in runs)


# -- 3. secrets in gunicorn's own lines --------------------------------------------------------

def test_gunicorn_lines_and_error_pages_carry_no_secret(
    app: Flask, env: dict[str, str], tmp_path: Path
) -> None:
    with gunicorn(env, tmp_path, LOG_FORMAT="text") as server:
        basic = requests.get(server.url + "/api/transfers", auth=(ADMIN_TOKEN, ""), timeout=10)
        query = requests.get(server.url + f"/api/transfers?token={ADMIN_TOKEN}&key={CURRENT_KEY}",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        page = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                            + f"Authorization Bearer {ADMIN_TOKEN}\r\n\r\n".encode())
        time.sleep(0.5)  # let the workers flush their last lines
        output = server.log()
    assert basic.status_code == 401 and query.status_code == 200
    assert page.startswith(b"HTTP/1.1 400 ")
    assert ADMIN_TOKEN.encode() not in page
    assert b"Authorization" not in page
    basic_credentials = base64.b64encode(f"{ADMIN_TOKEN}:".encode()).decode()
    for secret in (ADMIN_TOKEN, CURRENT_KEY, basic_credentials):
        assert secret not in output, output
    access = [line for line in output.splitlines() if '"GET /api/transfers' in line]
    assert len(access) == 2, output
    assert all('"GET /api/transfers HTTP/1.1"' in line for line in access), access
    assert all(" - - [" in line for line in access), access  # no user field
    assert "Invalid HTTP Header" in output  # gunicorn's warning is there, scrubbed


# -- 4. no control socket ----------------------------------------------------------------------

def test_gunicorn_opens_no_control_socket(env: dict[str, str], tmp_path: Path) -> None:
    # gunicorn (25+) would listen on $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl
    # for `gunicornc` (add workers, reload, stop): a way around the service's own operations.
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    with gunicorn(env, tmp_path, HOME=str(home), XDG_RUNTIME_DIR=str(runtime)) as server:
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        time.sleep(1.0)  # the master opens it after booting its workers
        created = sorted(str(p.relative_to(tmp_path)) for p in (*home.rglob("*"),
                                                                 *runtime.rglob("*")))
    assert created == []
