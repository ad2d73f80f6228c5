from __future__ import annotations

import errno
import io
import queue
import select
import socket
import time
from typing import Any

from gunicorn import util
from gunicorn.http.body import Body
from gunicorn.http.errors import ParseException
from gunicorn.workers import gthread

from .settings import DEFAULT_MAX_BODY_BYTES


class RequestTimedOut(ConnectionResetError):
    """The client did not send its request (headers and body) within the read timeout."""


class _ReadDeadlineSocket(socket.socket):
    """A client connection whose reads fail once the request has taken too long to arrive.

    A per-read timeout is not enough: a client sending a byte every few seconds would never
    trip it. So each read waits at most until one deadline for the whole request.
    """

    deadline: float | None = None
    closing = False

    def shutdown(self, how: int) -> None:
        super().shutdown(how)
        self.closing = True

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.closing:
            # gunicorn closes a connection in its main loop, lingering up to 2 s for the peer
            # to close too: a client that never does would stall every connection of the
            # worker. Take only what has already arrived (so the close sends no RST for it).
            self.setblocking(False)
            return super().recv(bufsize, flags)
        self._arm()
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            if self._expired():
                raise self._timed_out() from None
            raise

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            if self._expired():
                raise self._timed_out() from None
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        # Writing is not bounded here: a job's answer may come long after the request arrived.
        if self.gettimeout() != 0.0:
            self.settimeout(None)
        super().sendall(data, flags)

    def _arm(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        current = self.gettimeout()
        if current is None or current > left:  # keep a shorter one (gunicorn's body drain)
            self.settimeout(left)

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _timed_out(self) -> RequestTimedOut:
        # ECONNRESET: gunicorn closes the connection quietly, as when a client goes away.
        return RequestTimedOut(errno.ECONNRESET, "the request did not arrive within its time")


class _BodyRead:
    """A request body already read by the worker, then whatever of it was not (over the bound)."""

    def __init__(self, head: bytes, rest: Body | None, error: BaseException | None) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest
        self._error = error

    def read(self, size: int) -> bytes:
        data = self._head.read(size)
        if data:
            return data
        if self._error is not None:  # reading it failed: the app sees the failure as before
            error, self._error = self._error, None
            raise error
        return self._rest.read(size) if self._rest is not None else b""


class BoundedThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, with a connection held by a thread only while it is busy.

    - A new connection that has sent nothing waits in the worker's poller, not in a thread
      (gunicorn's own worker parks it in a thread for 5 s), and is closed after `keepalive`.
    - Reading one request, headers and body, may take at most `read_timeout` seconds: a client
      that sends them slowly loses its connection instead of holding a thread.
    - The application runs in at most `app_slots` of the worker's threads at a time, each
      request once its body has arrived (up to `read_ahead` bytes): threads wait for clients,
      slots run Python. Python runs one thread of a process at a time; more requests at once
      only take turns, and each turn costs a switch (32 slots served about a sixth fewer
      deliveries per second than 4, see docs/benchmarks.md).
    - A thread serves the next request of its connection when it follows within
      `follow_up_wait`, up to `follow_ups` in a row.
    - A request gunicorn cannot parse is answered without quoting it back (a header line
      without a colon may hold a credential).
    """

    read_timeout = 10.0
    app_slots = 4
    # A client's next request on a kept-alive connection usually follows its answer at once
    # (QStash under load, a load balancer's pool): the thread waits this long for it and serves
    # it, instead of handing the connection to the main loop's poller and back to a thread
    # (+23 % deliveries/s on SQLite, +15 % on PostgreSQL, docs/benchmarks.md). At most
    # `follow_ups` in a row, so that connections queued for a thread get their turn.
    follow_up_wait = 0.002
    follow_ups = 16
    read_ahead = DEFAULT_MAX_BODY_BYTES + 1  # and a byte to tell it is over

    def init_process(self) -> None:
        # A queue of slots, not a threading.Semaphore: its wait and wake-up run in C, where the
        # semaphore's Python-level condition cost a fifth of the worker's time under load.
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.app_slots):
            self._slots.put(slot)
        super().init_process()

    def handle_request(self, req: Any, conn: Any) -> Any:
        self._read_body(req, conn)
        slot = self._slots.get()
        try:
            return super().handle_request(req, conn)
        finally:
            self._slots.put(slot)

    def _read_body(self, req: Any, conn: Any) -> None:
        """Read the body before the request takes a slot: a slow sender holds only its thread."""
        if req._expected_100_continue:  # the client sends its body once told to go on
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False
        chunks: list[bytes] = []
        left, error = self.read_ahead, None
        try:
            while left > 0 and (chunk := req.body.read(min(left, 65536))):
                chunks.append(chunk)
                left -= len(chunk)
        except Exception as exc:  # noqa: BLE001 - handed to the app's first read, unchanged
            error = exc
        body = Body(_BodyRead(b"".join(chunks), req.body if left <= 0 else None, error))
        body.failed = error is not None  # where the next request starts is then unknown
        req.body = body

    def handle(self, conn: Any) -> Any:
        if not conn.initialized and not conn.data_ready and not conn.wait_for_data(0):
            return gthread._DEFER  # back to the poller until it has sent something
        if not isinstance(conn.sock, _ReadDeadlineSocket):
            plain = conn.sock
            conn.sock = _ReadDeadlineSocket(plain.family, plain.type, plain.proto,
                                            fileno=plain.detach())
        for _ in range(self.follow_ups + 1):
            conn.sock.deadline = time.monotonic() + self.read_timeout
            try:
                result = super().handle(conn)
            finally:
                conn.sock.deadline = None
            if result is not True or not self.alive or not self._next_request_follows(conn):
                break
        return result

    def _next_request_follows(self, conn: Any) -> bool:
        """Whether the client's next request on this connection has begun to arrive."""
        if conn.parser.unreader.buf.getvalue():  # read together with the last request
            return True
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        return bool(poller.poll(self.follow_up_wait * 1000))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, ParseException):
            super().handle_error(req, client, addr, exc)
            return
        # Let gunicorn log the error and choose the status, then answer with an empty page.
        page = _Page()
        super().handle_error(req, page, addr, exc)
        status, _, reason = page.status_line().partition(" ")
        try:
            util.write_error(client, int(status), reason, "")
        except Exception:
            self.log.debug("Failed to send error message.")


class _Page:
    """Stands in for the client socket while gunicorn writes its error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status_line(self) -> str:
        first = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        return first.partition(" ")[2] or "400 Bad Request"


def thread_worker(*, read_timeout: float, app_slots: int) -> type[BoundedThreadWorker]:
    """Return the worker class for gunicorn's `worker_class`, with these bounds."""
    return type("BoundedThreadWorker", (BoundedThreadWorker,),
                {"read_timeout": read_timeout, "app_slots": app_slots})
