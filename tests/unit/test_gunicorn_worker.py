from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers import gthread

from service.gunicorn_worker import BoundedThreadWorker, thread_worker


def echo_path(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: jobs.example\r\n\r\n".encode()


def make_worker(**attributes: float) -> BoundedThreadWorker:
    """A worker as gunicorn builds it, with its one application slot, but no process of its own."""
    cfg = Config()
    worker = thread_worker(read_timeout=5.0, app_slots=1)(
        age=1, ppid=os.getpid(), sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg))
    worker.wsgi = echo_path
    worker._slots = queue.SimpleQueue()
    worker._slots.put(0)
    for name, value in attributes.items():
        setattr(worker, name, value)
    return worker


@contextmanager
def connection(worker: BoundedThreadWorker) -> Iterator[tuple[gthread.TConn, socket.socket]]:
    server, client = socket.socketpair()
    conn = gthread.TConn(worker.cfg, server, ("127.0.0.1", 50000), ("127.0.0.1", 8000))
    try:
        yield conn, client
    finally:
        conn.sock.close()
        client.close()
        worker.tmp.close()  # the heartbeat file gunicorn gives each worker


def answered_paths(client: socket.socket) -> list[str]:
    """The bodies of the answers the worker has written so far, in order."""
    client.setblocking(False)
    data = b""
    try:
        while chunk := client.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    return [answer.rsplit(b"\r\n\r\n", 1)[1].decode()
            for answer in data.split(b"HTTP/1.1 200 OK")[1:]]


def test_a_thread_serves_requests_that_follow_on_its_connection() -> None:
    worker = make_worker()
    with connection(worker) as (conn, client):
        client.sendall(request("/a") + request("/b"))  # the second behind the first
        assert worker.handle(conn) is True  # kept alive
        assert answered_paths(client) == ["/a", "/b"]


def test_a_request_sent_after_the_answer_is_served_by_the_same_thread() -> None:
    worker = make_worker(follow_up_wait=5.0)
    with connection(worker) as (conn, client):
        client.sendall(request("/a"))

        def answer_then_send() -> None:
            client.recv(65536)  # /a's answer
            client.sendall(request("/b"))
            client.shutdown(socket.SHUT_WR)  # and no more

        sender = threading.Thread(target=answer_then_send)
        sender.start()
        assert worker.handle(conn) is False  # the client's end, seen by the same thread
        sender.join()
        assert answered_paths(client) == ["/b"]


def test_follow_ups_are_bounded_so_queued_connections_get_a_thread() -> None:
    worker = make_worker(follow_ups=1)
    with connection(worker) as (conn, client):
        client.sendall(request("/a") + request("/b") + request("/c"))
        assert worker.handle(conn) is True
        assert answered_paths(client) == ["/a", "/b"]
        # /c waits for the main loop, which hands the connection to a thread again.
        assert conn.parser.unreader.buf.getvalue().startswith(b"GET /c ")


def test_without_a_follow_up_the_connection_goes_back_to_the_poller() -> None:
    worker = make_worker(follow_up_wait=0.01)
    with connection(worker) as (conn, client):
        client.sendall(request("/a"))
        assert worker.handle(conn) is True
        assert answered_paths(client) == ["/a"]
