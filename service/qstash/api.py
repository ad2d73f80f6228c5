from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .. import metrics
from ..redaction import redact_url
from .messages import CONTENT_TYPE, JobMessage
from .protocol import sdk_error_status
from .schedules import DesiredSchedule, RemoteSchedule, remote_from_sdk

if TYPE_CHECKING:
    from qstash import QStash
    from qstash.errors import QStashError

log = logging.getLogger("eleva.qstash")
T = TypeVar("T")
DEFAULT_BASE_URL = "https://qstash.upstash.io"


class QStashApiError(Exception):
    """A QStash API call failed for good; `code` says why in one word."""

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class QStashApi:
    """The QStash calls the service makes, with one retry policy and a bounded wait.

    Retries rate limits (honouring Burst-RateLimit-Reset), 5xx answers and network errors;
    gives up at once on anything else. The SDK's own network retries are turned off so that
    this is the only policy.
    """

    def __init__(
        self,
        *,
        token: str,
        base_url: str | None = None,
        timeout: float = 10.0,
        attempts: int = 5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url or DEFAULT_BASE_URL
        self._token = token
        self.timeout = timeout
        self._client: QStash | None = None
        self._lock = threading.Lock()
        self.attempts = attempts
        self.max_wait = max_wait
        self.sleep = sleep or (lambda seconds: wait(seconds))
        self.clock = clock

    @property
    def client(self) -> QStash:
        """The SDK's client, built by the first call that needs it."""
        with self._lock:
            if self._client is None:
                # Deferred: the SDK and httpx cost about 60 ms of import in every process, and
                # most (gunicorn's workers serving deliveries) never call QStash.
                import httpx
                from qstash import QStash

                client = QStash(self._token, retry=False, base_url=self.base_url)
                # The SDK waits up to 600 s per call; nothing here may hang that long.
                client.http._client.timeout = httpx.Timeout(self.timeout,
                                                            connect=min(self.timeout, 5.0))
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.http._client.close()

    def __repr__(self) -> str:
        return f"QStashApi(base_url={redact_url(self.base_url)!r})"

    def list_schedules(self) -> list[RemoteSchedule]:
        """Return every schedule on the account."""
        return [remote_from_sdk(s) for s in self._call("list schedules",
                                                        self.client.schedule.list)]

    def upsert_schedule(self, schedule: DesiredSchedule) -> str:
        """Create or replace a schedule under its deterministic id."""
        return self._call(f"upsert {schedule.schedule_id}", lambda: self.client.schedule.create(
            destination=schedule.destination,
            cron=schedule.cron,
            body=schedule.body,
            content_type=schedule.headers["Content-Type"][0],
            method=schedule.method,  # type: ignore[arg-type]
            headers={name: values[0] for name, values in schedule.headers.items()
                     if name != "Content-Type"},
            retries=schedule.retries,
            timeout=schedule.timeout,
            schedule_id=schedule.schedule_id,
            label=schedule.label,
        ))

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; one that is already gone counts as deleted."""
        if not schedule_id:
            raise ValueError("refusing to delete a schedule with an empty id")
        try:
            self._call(f"delete {schedule_id}", lambda: self.client.schedule.delete(schedule_id))
        except QStashApiError as exc:
            if exc.status != 404:
                raise

    def publish(self, message: JobMessage) -> str:
        """Publish one job's message (after its delay); return the message id."""
        response = self._call("publish", lambda: self.client.message.publish(
            url=message.url, body=message.body, content_type=CONTENT_TYPE,
            headers=dict(message.headers), retries=message.retries, timeout=message.timeout,
            deduplication_id=message.deduplication_id, delay=message.delay,
        ))
        return str(response.message_id)  # type: ignore[union-attr]

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        # Deferred as in `client`: every call goes on to build it, which loads them anyway.
        import httpx
        from qstash.errors import QStashError, RateLimitExceededError

        started = self.clock()
        for attempt in range(1, self.attempts + 1):
            try:
                return metrics.qstash_call(what, fn)
            except RateLimitExceededError as exc:
                wait = self._until_reset(exc.reset)
                failure = QStashApiError(f"{what}: QStash rate limit", code="rate_limited",
                                         status=429)
            except QStashError as exc:
                status = sdk_error_status(exc)
                if status in (401, 403):
                    raise QStashApiError(
                        f"{what}: QStash refused the token (HTTP {status}); check QSTASH_TOKEN "
                        "and QSTASH_URL", code="auth_failed", status=status) from None
                if status is None or status < 500:
                    raise QStashApiError(f"{what}: {_describe(exc)}", code="request_failed",
                                         status=status) from None
                wait = min(self.max_wait, 0.5 * 2 ** (attempt - 1))
                failure = QStashApiError(f"{what}: QStash answered HTTP {status}",
                                         code="unavailable", status=status)
            except httpx.HTTPError as exc:
                wait = min(self.max_wait, 0.5 * 2 ** (attempt - 1))
                failure = QStashApiError(
                    f"{what}: cannot reach QStash at {redact_url(self.base_url)} "
                    f"({type(exc).__name__}); check QSTASH_URL and the network",
                    code="unreachable")
            spent = self.clock() - started
            if attempt == self.attempts or spent + wait > self.max_wait:
                raise failure
            log.warning("%s; retrying in %.1fs (attempt %d of %d)", failure, wait, attempt,
                        self.attempts)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _until_reset(self, reset: str | None) -> float:
        try:
            # Burst-RateLimit-Reset is a unix time; some servers send seconds to wait.
            value = float(reset) if reset else 1.0
        except ValueError:
            value = 1.0
        wait = value - self.clock() if value > 1e9 else value
        return max(0.2, min(wait, self.max_wait))


def wait(seconds: float) -> None:
    """Sleep between retries (looked up at call time, so tests can record the waits)."""
    time.sleep(seconds)


def _describe(exc: QStashError) -> str:
    return str(exc)[:300]
