from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from qstash import QStash
from qstash.message import PublishResponse
from werkzeug.datastructures import Headers

from devtools.qstash_local import (
    LocalQStash,
    RunningServer,
)

HOOK = "http://127.0.0.1:5000/api/qstash/hook"


def ts(text: str) -> float:
    """Return the epoch seconds of a naive ISO time read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def padded_hash(body: bytes) -> str:
    """Return the body hash a QStash signature claims: base64url SHA-256 with padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()


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


def fire_next_slot(stack: Stack, schedule_id: str) -> int:
    """Move the clock to the schedule's next slot and deliver what is due."""
    stack.clock.set(stack.local.schedules[schedule_id].next_schedule_time)
    return stack.local.tick()
