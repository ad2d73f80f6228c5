from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, request
from qstash import QStash
from qstash.message import PublishResponse
from werkzeug.datastructures import Headers

from devtools.qstash_local import (
    DEV_TOKEN,
    LocalQStash,
    LocalQStashConfig,
    RunningServer,
    serve,
    serve_wsgi,
)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    sleep: float = 0.0


class Receiver:
    """A destination that records what it receives and answers queued replies (else 200)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Reply] = []
        self.received = threading.Event()
        # How many requests were being handled at once, at most: proves deliveries overlap.
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self.app = Flask(__name__)
        self.app.add_url_rule(
            "/<path:path>",
            view_func=self._handle,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )
        self.url = ""

    @property
    def hook(self) -> str:
        return f"{self.url}/hook"

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def _handle(self, path: str) -> Response:
        with self._lock:
            self.requests.append(
                Recorded(
                    method=request.method,
                    path=request.path,
                    query=request.query_string.decode(),
                    headers=Headers(request.headers),
                    body=request.get_data(),
                )
            )
            reply = self.replies.pop(0) if self.replies else Reply()
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.received.set()
        try:
            if reply.sleep:
                time.sleep(reply.sleep)
            return Response(reply.body, status=reply.status, headers=reply.headers)
        finally:
            with self._lock:
                self.active -= 1


def publish(client: QStash, **options: Any) -> PublishResponse:
    """Publish to a URL through the SDK, whose return type also covers URL groups."""
    response = client.message.publish(**options)
    assert isinstance(response, PublishResponse)
    return response


@dataclass(frozen=True)
class Stack:
    local: LocalQStash
    server: RunningServer
    client: QStash
    clock: FakeClock


@pytest.fixture
def clock() -> FakeClock:
    # Two minutes in the past, so that tokens signed at a fired cron slot are neither
    # issued in the future nor expired for a verifier using the real clock.
    return FakeClock(time.time() - 120)


@pytest.fixture
def make_stack(clock: FakeClock) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**config: object) -> Stack:
        local = LocalQStash(LocalQStashConfig(**config), clock=clock)  # type: ignore[arg-type]
        server = serve(local)
        # No client-side retries: a test must see exactly the calls it makes.
        client = QStash(DEV_TOKEN, base_url=server.url, retry=False)
        stack = Stack(local=local, server=server, client=client, clock=clock)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.client.http._client.close()
        stack.server.shutdown()


@pytest.fixture
def qs(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recorder = Receiver()
    with serve_wsgi(recorder.app) as server:
        recorder.url = server.url
        yield recorder
