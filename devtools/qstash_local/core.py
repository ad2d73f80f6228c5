from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import Headers

from service.qstash.signature import qstash_claims, sign_claims

from .api import create_api
from .config import LocalQStashConfig
from .delivery import DeliveryRequest, DeliveryResponse, default_backoff, send
from .filters import Filters
from .models import (
    DeliveryAttempt,
    DlqEntry,
    Message,
    PublishResult,
    Schedule,
    ScheduleState,
    dlq_json,
    event_json,
    message_json,
    schedule_json,
)
from .parsing import (
    MAX_RETRY_AFTER,
    ApiError,
    DeliveryOptions,
    build_destination,
    check_destination,
    compile_retry_delay,
    is_true,
    merge_query_options,
    next_fire_time,
    parse_cron,
    parse_delivery_options,
    parse_not_before,
    parse_retry_after,
    parse_schedule_id,
)

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

DEDUPLICATION_WINDOW = 600.0
DLQ_PAGE = 100
EVENT_LOG_SIZE = 10_000

HeaderInput = Headers | Mapping[str, str] | None


@dataclass(kw_only=True)
class ApiFailure:
    """A canned answer given to the next `remaining` matching API requests."""

    status: int
    remaining: int
    method: str | None
    path_prefix: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and path.startswith(
            self.path_prefix
        )


class LocalQStash:
    """Keep QStash state in memory, serve its REST API and deliver signed messages on tick()."""

    def __init__(
        self,
        config: LocalQStashConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or LocalQStashConfig()
        self._clock = clock
        # Guards all state below; never held during outbound HTTP.
        self._lock = threading.Lock()
        self._keys = (self.config.current_signing_key, self.config.next_signing_key)
        self.api_calls: list[tuple[str, str]] = []
        self.schedules: dict[str, Schedule] = {}
        self.messages: dict[str, Message] = {}
        self.dlq: dict[str, DlqEntry] = {}
        self.attempts: list[DeliveryAttempt] = []
        self._dedup: dict[str, tuple[str, float]] = {}
        self._failures: list[ApiFailure] = []
        self._dlq_ids = itertools.count()
        # One thread per delivery in flight, at most config.concurrency of them.
        self._in_flight: dict[str, threading.Thread] = {}
        # The logs `GET /v2/events` lists, oldest first, each with its sequence number.
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=EVENT_LOG_SIZE)
        self._event_seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._app = create_api(self)

    @property
    def app(self) -> Flask:
        """Return the WSGI app implementing the QStash REST API."""
        return self._app

    @property
    def keys(self) -> tuple[str, str]:
        """Return the (current, next) signing keys."""
        with self._lock:
            return self._keys

    # REST operations. They raise ApiError, which the app renders as {"error": ...}.

    def _target(self, destination: str, query: str,
                options_headers: Headers) -> tuple[str, DeliveryOptions]:
        """Return the checked destination URL and the delivery options of a publish or schedule."""
        url = build_destination(destination, query)
        check_destination(url, allow_remote=self.config.allow_remote_destinations)
        return url, parse_delivery_options(options_headers)

    def is_authorized(self, token: str | None) -> bool:
        """Tell whether `token` is the configured API token."""
        return token is not None and hmac.compare_digest(token.encode(), self.config.token.encode())

    def publish(self, destination: str, *, body: bytes = b"", headers: HeaderInput = None,
                query: str = "", caller_ip: str = "127.0.0.1") -> PublishResult:
        """Accept a message for `destination` as `POST /v2/publish/{destination}` does."""
        options_headers = merge_query_options(Headers(headers), query)
        url, options = self._target(destination, query, options_headers)
        not_before = parse_not_before(options_headers)
        self._check_size(body)
        dedup_key = None
        dedup_id = options_headers.get("Upstash-Deduplication-Id")
        if dedup_id is not None:
            dedup_key = f"id:{dedup_id}"
        elif is_true(options_headers.get("Upstash-Content-Based-Deduplication")):
            dedup_key = f"content:{_content_hash(url, body, options.headers)}"
        with self._lock:
            now = self._clock()
            self._dedup = {k: v for k, v in self._dedup.items() if v[1] > now}
            if dedup_key is not None and dedup_key in self._dedup:
                return PublishResult(message_id=self._dedup[dedup_key][0], deduplicated=True)
            # Upstash-Not-Before wins over Upstash-Delay.
            due = float(not_before) if not_before is not None else now + (options.delay or 0)
            self._check_delay(due - now)
            message = self._add_message(
                url=url,
                method=options.method,
                headers=options.headers,
                body=body,
                max_retries=options.retries,
                not_before=due,
                created_at=now,
                caller_ip=caller_ip,
                label=options.label,
                timeout=options.timeout,
                retry_delay=options.retry_delay,
            )
            if dedup_key is not None:
                self._dedup[dedup_key] = (message.message_id, now + DEDUPLICATION_WINDOW)
        return PublishResult(message_id=message.message_id)

    def upsert_schedule(self, destination: str, *, body: bytes = b"", headers: HeaderInput = None,
                        query: str = "", caller_ip: str = "127.0.0.1") -> str:
        """Create or replace a schedule as `POST /v2/schedules/{destination}` does."""
        options_headers = merge_query_options(Headers(headers), query)
        raw_cron = options_headers.get("Upstash-Cron")
        if not raw_cron or not raw_cron.strip():
            raise ApiError(400, "Upstash-Cron header is required")
        cron = parse_cron(raw_cron)
        schedule_id = parse_schedule_id(options_headers)
        url, options = self._target(destination, query, options_headers)
        self._check_size(body)
        self._check_delay(options.delay or 0)
        with self._lock:
            now = self._clock()
            existing = self.schedules.get(schedule_id) if schedule_id is not None else None
            quota = self.config.schedule_quota
            if existing is None and quota is not None and len(self.schedules) >= quota:
                raise ApiError(
                    412, f"schedule quota exceeded: at most {quota} schedules are allowed"
                )
            schedule_id = schedule_id or f"scd_{uuid.uuid4().hex}"
            self.schedules[schedule_id] = Schedule(
                schedule_id=schedule_id,
                destination=url,
                cron=cron,
                method=options.method,
                headers=options.headers,
                body=body,
                retries=options.retries,
                delay=options.delay,
                timeout=options.timeout,
                label=options.label,
                retry_delay=options.retry_delay,
                caller_ip=caller_ip,
                # Every configurable field is replaced; identity and run history are kept.
                created_at=existing.created_at if existing else now,
                paused=existing.paused if existing else False,
                last_schedule_time=existing.last_schedule_time if existing else None,
                last_schedule_states=dict(existing.last_schedule_states) if existing else {},
                next_schedule_time=next_fire_time(cron, now),
            )
        return schedule_id

    def list_schedules(self) -> list[dict[str, Any]]:
        """Return every schedule as `GET /v2/schedules` renders it."""
        with self._lock:
            return [schedule_json(s) for s in self.schedules.values()]

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Return one schedule as `GET /v2/schedules/{id}` renders it."""
        with self._lock:
            return schedule_json(self._schedule(schedule_id))

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; messages it already created stay queued, as in QStash."""
        with self._lock:
            self._schedule(schedule_id)
            del self.schedules[schedule_id]

    def set_paused(self, schedule_id: str, paused: bool) -> None:
        """Pause or resume a schedule; repeating either is harmless."""
        with self._lock:
            self._schedule(schedule_id).paused = paused

    def get_message(self, message_id: str) -> dict[str, Any]:
        """Return a pending message as `GET /v2/messages/{id}` renders it."""
        with self._lock:
            return message_json(self._message(message_id))

    def cancel_message(self, message_id: str) -> None:
        """Cancel one pending message."""
        with self._lock:
            message = self._message(message_id)
            del self.messages[message_id]
            self._record_state(message, "FAIL")
            self._log(message, "CANCELED")

    def cancel_messages(
        self, message_ids: Iterable[str] | None = None, *, where: Filters | None = None
    ) -> int:
        """Cancel the given pending messages, else those matching `where`, else all of them."""
        with self._lock:
            if message_ids is not None:
                ids = list(message_ids)
            else:
                ids = [
                    m.message_id
                    for m in self.messages.values()
                    if where is None or where.matches(message_json(m))
                ]
            cancelled = [self.messages.pop(i) for i in ids if i in self.messages]
            for message in cancelled:
                self._record_state(message, "FAIL")
                self._log(message, "CANCELED")
            return len(cancelled)

    def list_dlq(
        self,
        *,
        dlq_ids: Iterable[str] | None = None,
        where: Filters | None = None,
        count: int = DLQ_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Return a page of DLQ entries as `GET /v2/dlq` lists them, and the next cursor."""
        with self._lock:
            entries = self._select_dlq(dlq_ids, where, after=cursor)
            page = entries[:count]
            more = len(entries) > count
            return [dlq_json(e) for e in page], (page[-1].dlq_id if more and page else None)

    def get_dlq(self, dlq_id: str) -> dict[str, Any]:
        """Return one DLQ entry."""
        with self._lock:
            return dlq_json(self._dlq_entry(dlq_id))

    def delete_dlq(self, dlq_ids: Iterable[str]) -> int:
        """Remove DLQ entries and return how many existed."""
        with self._lock:
            return sum(self.dlq.pop(i, None) is not None for i in dlq_ids)

    def delete_dlq_where(self, where: Filters | None, *, count: int) -> tuple[int, str | None]:
        """Remove up to `count` DLQ entries matching `where`; return how many and a cursor."""
        with self._lock:
            entries = self._select_dlq(None, where)
            for entry in entries[:count]:
                del self.dlq[entry.dlq_id]
            # Deleted entries are gone, so the next call starts from the beginning again.
            return min(count, len(entries)), ("more" if len(entries) > count else None)

    def retry_dlq(
        self,
        dlq_ids: Iterable[str] | None = None,
        *,
        where: Filters | None = None,
        count: int = DLQ_PAGE,
        headers: HeaderInput = None,
    ) -> tuple[list[str], str | None]:
        """Publish DLQ entries again as new messages and remove them from the DLQ.

        Configuration headers (`Upstash-Retries`, `-Delay`, `-Timeout`, `-Retry-Delay`,
        `-Method`) override the original message's. Unknown ids answer 404 and retry nothing.
        """
        overrides = Headers(headers)
        options = parse_delivery_options(overrides)
        self._check_delay(options.delay or 0)
        with self._lock:
            if dlq_ids is not None:
                ids = list(dlq_ids)
                missing = [i for i in ids if i not in self.dlq]
                if missing:
                    raise ApiError(404, f"dlq message(s) not found: {', '.join(missing)}")
                entries = [self.dlq[i] for i in dict.fromkeys(ids)]
                more = False
            else:
                selected = self._select_dlq(None, where)
                entries, more = selected[:count], len(selected) > count
            now = self._clock()
            new_ids = []
            for entry in entries:
                del self.dlq[entry.dlq_id]
                old = entry.message
                delay = options.delay if "Upstash-Delay" in overrides else None
                message = self._add_message(
                    url=old.url,
                    method=options.method if "Upstash-Method" in overrides else old.method,
                    headers={k: list(v) for k, v in old.headers.items()},
                    body=old.body,
                    max_retries=(
                        options.retries if "Upstash-Retries" in overrides else old.max_retries
                    ),
                    not_before=now + (delay or 0),
                    created_at=now,
                    caller_ip=old.caller_ip,
                    schedule_id=old.schedule_id,
                    label=old.label,
                    timeout=options.timeout if "Upstash-Timeout" in overrides else old.timeout,
                    retry_delay=(
                        options.retry_delay
                        if "Upstash-Retry-Delay" in overrides
                        else old.retry_delay
                    ),
                )
                new_ids.append(message.message_id)
            return new_ids, ("more" if more else None)

    def list_events(
        self,
        *,
        message_ids: Iterable[str] | None = None,
        where: Filters | None = None,
        count: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Return a page of logs, newest first, as `GET /v2/events` lists them."""
        before = _event_cursor(cursor)
        wanted = None if message_ids is None else set(message_ids)
        with self._lock:
            events = list(self.events)
        page: list[tuple[int, dict[str, Any]]] = []
        for seq, entry in reversed(events):
            if before is not None and seq >= before:
                continue
            if wanted is not None and entry["messageId"] not in wanted:
                continue
            if where and not where.matches(entry):
                continue
            if len(page) == count:
                # Older entries remain: the cursor is the sequence of the last one listed.
                return [e for _, e in page], str(page[-1][0])
            page.append((seq, entry))
        return [e for _, e in page], None

    def rotate_keys(self) -> tuple[str, str]:
        """Roll the signing keys as QStash does: current := next, next := new."""
        with self._lock:
            self._keys = (self._keys[1], f"sig_{secrets.token_urlsafe(21)}")
            return self._keys

    # Inspection and fault injection for tests.

    def inject_api_failure(
        self,
        *,
        status: int,
        times: int = 1,
        method: str | None = None,
        path_prefix: str = "/v2/",
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next `times` matching API requests with `status` instead of serving them."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failures.append(
                ApiFailure(
                    status=status,
                    remaining=times,
                    method=method,
                    path_prefix=path_prefix,
                    headers=dict(headers or {}),
                    body=body,
                )
            )

    def record_api_call(self, method: str, path: str) -> ApiFailure | None:
        """Count an API request and return the injected failure it must get, if any."""
        with self._lock:
            self.api_calls.append((method, path))
            for failure in self._failures:
                if failure.matches(method, path):
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures.remove(failure)
                    return failure
        return None

    # Running.

    def tick(self, *, wait: bool = True) -> int:
        """Fire due schedules and start due deliveries; return how many attempts were started.

        Deliveries run concurrently, up to `config.concurrency` at a time; a message already in
        flight is not started again. With `wait` (the default, for tests that drive the clock)
        tick() returns once the attempts it started have been settled.
        """
        with self._lock:
            now = self._clock()
            self._fire_due_schedules(now)
            free = max(0, self.config.concurrency - len(self._in_flight))
            due = sorted(
                (
                    m
                    for m in self.messages.values()
                    if m.next_attempt_at <= now and m.message_id not in self._in_flight
                ),
                key=lambda m: (m.next_attempt_at, m.created_at),
            )[:free]
            started = []
            for message in due:
                thread = threading.Thread(
                    target=self._deliver,
                    args=(self._delivery_request(message),),
                    name=f"qstash-local-delivery-{message.message_id}",
                    # A destination that never answers must not keep the process alive.
                    daemon=True,
                )
                self._in_flight[message.message_id] = thread
                started.append(thread)
        for thread in started:
            thread.start()
        if wait:
            for thread in started:
                thread.join()
        return len(started)

    def in_flight(self) -> int:
        """Return how many deliveries are waiting for their destination's answer."""
        with self._lock:
            return len(self._in_flight)

    def start(self, interval: float = 1.0) -> None:
        """Call tick() every `interval` seconds of wall-clock time in a daemon thread."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        if self._thread is not None:
            raise RuntimeError("the local QStash ticker is already running")
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run, args=(interval, stop), name="qstash-local-ticker", daemon=True
        )
        self._thread.start()

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop the ticker thread; wait up to `grace` seconds for deliveries in progress."""
        thread, stop = self._thread, self._stop
        if thread is None or stop is None:
            return
        stop.set()
        thread.join()
        self._thread = None
        self._stop = None
        with self._lock:
            deliveries = list(self._in_flight.values())
        # A job may legitimately run for the plan's 15 minutes; Ctrl-C must not wait for it.
        # Delivery threads are daemons, so those still running are simply abandoned.
        deadline = time.monotonic() + grace
        for delivery in deliveries:
            delivery.join(max(0.0, deadline - time.monotonic()))

    def _run(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                # Without waiting, so that a slow destination delays nothing else.
                self.tick(wait=False)
            except Exception:
                # A bug in one tick must not stop deliveries for the rest of the session.
                logger.exception("local QStash tick failed")
            stop.wait(interval)

    def _deliver(self, delivery: DeliveryRequest) -> None:
        try:
            with self._lock:
                message = self.messages.get(delivery.message_id)
                if message is None:
                    return  # cancelled before it went out
                self._log(message, "ACTIVE")
                key = self._keys[0 if self.config.sign_with == "current" else 1]
                signed_at = self._clock()
            signature = sign_claims(
                qstash_claims(url=delivery.url, body=delivery.body, now=signed_at), key
            )
            response = send(delivery, signature=signature)
            with self._lock:
                self._settle(delivery, response, self._clock())
        except Exception:
            # A bug in one delivery must not stop the others; the message is tried again.
            logger.exception("local QStash delivery of %s failed", delivery.message_id)
        finally:
            with self._lock:
                self._in_flight.pop(delivery.message_id, None)

    def _check_size(self, body: bytes) -> None:
        limit = self.config.max_message_size
        if limit is not None and len(body) > limit:
            raise ApiError(
                413,
                f"message size {len(body)} bytes exceeds the plan's maximum of {limit} bytes",
            )

    def _check_delay(self, delay: float) -> None:
        limit = self.config.max_delay
        if limit is not None and delay > limit:
            raise ApiError(
                400, f"delay of {int(delay)}s exceeds the plan's maximum delay of {limit}s"
            )

    # Internals; callers hold self._lock.

    def _schedule(self, schedule_id: str) -> Schedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None:
            raise ApiError(404, f"schedule {schedule_id!r} not found")
        return schedule

    def _message(self, message_id: str) -> Message:
        message = self.messages.get(message_id)
        if message is None:
            raise ApiError(404, f"message {message_id!r} not found")
        return message

    def _dlq_entry(self, dlq_id: str) -> DlqEntry:
        entry = self.dlq.get(dlq_id)
        if entry is None:
            raise ApiError(404, f"dlq message {dlq_id!r} not found")
        return entry

    def _select_dlq(
        self, dlq_ids: Iterable[str] | None, where: Filters | None, *, after: str | None = None
    ) -> list[DlqEntry]:
        entries = list(self.dlq.values())
        if after:
            # The cursor is the last id of the previous page; the sequence in ids only grows.
            last = _dlq_sequence(after)
            entries = [e for e in entries if _dlq_sequence(e.dlq_id) > last]
        if dlq_ids is not None:
            wanted = set(dlq_ids)
            return [e for e in entries if e.dlq_id in wanted]
        if where:
            return [e for e in entries if where.matches(dlq_json(e))]
        return entries

    def _add_message(self, **fields: Any) -> Message:
        message = Message(message_id=f"msg_{uuid.uuid4().hex}", **fields)
        message.next_attempt_at = message.not_before
        self.messages[message.message_id] = message
        self._log(message, "CREATED")
        return message

    def _log(
        self, message: Message, state: str, response: DeliveryResponse | None = None
    ) -> None:
        entry = event_json(
            message, state, at=self._clock(), timeout=self._timeout(message), response=response
        )
        self.events.append((next(self._event_seq), entry))

    def _fire_due_schedules(self, now: float) -> None:
        for schedule in self.schedules.values():
            if schedule.next_schedule_time > now:
                continue
            # A paused schedule keeps its trigger times but skips the firing.
            if not schedule.paused:
                message = self._add_message(
                    url=schedule.destination,
                    method=schedule.method,
                    headers={k: list(v) for k, v in schedule.headers.items()},
                    body=schedule.body,
                    max_retries=schedule.retries,
                    not_before=now + (schedule.delay or 0),
                    created_at=now,
                    caller_ip=schedule.caller_ip,
                    schedule_id=schedule.schedule_id,
                    label=schedule.label,
                    timeout=schedule.timeout,
                    retry_delay=schedule.retry_delay,
                )
                schedule.last_schedule_time = now
                schedule.last_schedule_states = {message.message_id: "IN_PROGRESS"}
                logger.info(
                    "schedule %s fired message %s", schedule.schedule_id, message.message_id
                )
            # Slots missed while the clock jumped collapse into this single firing.
            schedule.next_schedule_time = next_fire_time(schedule.cron, now)

    def _timeout(self, message: Message) -> float:
        if message.timeout is None:
            return self.config.delivery_timeout
        # Upstash-Timeout can only shorten the plan's limit.
        return min(self.config.delivery_timeout, float(message.timeout))

    def _delivery_request(self, message: Message) -> DeliveryRequest:
        timeout = self._timeout(message)
        return DeliveryRequest(
            message_id=message.message_id,
            schedule_id=message.schedule_id,
            url=message.url,
            method=message.method,
            headers={k: list(v) for k, v in message.headers.items()},
            body=message.body,
            retried=message.retried,
            caller_ip=message.caller_ip,
            timeout=timeout,
        )

    def _settle(self, delivery: DeliveryRequest, response: DeliveryResponse, now: float) -> None:
        self.attempts.append(
            DeliveryAttempt(
                message_id=delivery.message_id,
                schedule_id=delivery.schedule_id,
                url=delivery.url,
                retried=delivery.retried,
                at=now,
                status=response.status,
                error=response.error,
            )
        )
        logger.info(
            "delivered %s to %s %s (retried=%d): %s",
            delivery.message_id,
            delivery.method,
            delivery.url,
            delivery.retried,
            response.status if response.error is None else response.error,
        )
        message = self.messages.get(delivery.message_id)
        if message is None or message.retried != delivery.retried:
            return  # cancelled while the request was in flight
        if response.ok:
            del self.messages[message.message_id]
            self._record_state(message, "SUCCESS")
            self._log(message, "DELIVERED", response)
            return
        self._log(message, "ERROR", response)
        if response.non_retryable or message.retried >= message.max_retries:
            del self.messages[message.message_id]
            self._move_to_dlq(message, response, now)
            self._record_state(message, "FAIL")
            self._log(message, "FAILED", response)
        else:
            message.retried += 1
            message.next_attempt_at = now + self._retry_delay(message, response, now)
            self._log(message, "RETRY")

    def _retry_delay(self, message: Message, response: DeliveryResponse, now: float) -> float:
        retry_after = response.header("Retry-After")
        if retry_after is not None:
            # An explicit request from the destination is honoured as is, without scaling.
            delay = parse_retry_after(retry_after, now=now)
            if delay is not None:
                return delay
        backoff = default_backoff(message.retried)
        if message.retry_delay is not None:
            try:
                # The expression gives milliseconds and counts `retried` from 0.
                millis = compile_retry_delay(message.retry_delay)(message.retried - 1)
                if math.isfinite(millis):
                    backoff = min(MAX_RETRY_AFTER, max(0.0, millis / 1000))
            except (ApiError, ArithmeticError, ValueError):
                pass
        return backoff * self.config.backoff_scale

    def _move_to_dlq(self, message: Message, response: DeliveryResponse, now: float) -> None:
        dlq_id = f"{int(now * 1000)}-{next(self._dlq_ids)}"
        self.dlq[dlq_id] = DlqEntry(
            dlq_id=dlq_id,
            message=message,
            response_status=response.status or 0,
            response_headers=response.headers,
            response_body=response.body,
            error=response.error,
            failed_at=now,
        )
        logger.warning("message %s moved to the DLQ as %s", message.message_id, dlq_id)

    def _record_state(self, message: Message, state: ScheduleState) -> None:
        schedule = self.schedules.get(message.schedule_id or "")
        if schedule is not None and message.message_id in schedule.last_schedule_states:
            schedule.last_schedule_states[message.message_id] = state


def _event_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(cursor)
    except ValueError:
        raise ApiError(400, f"invalid cursor {cursor!r}") from None


def _dlq_sequence(dlq_id: str) -> int:
    try:
        return int(dlq_id.rpartition("-")[2])
    except ValueError:
        raise ApiError(400, f"invalid cursor {dlq_id!r}") from None


def _content_hash(url: str, body: bytes, headers: Mapping[str, list[str]]) -> str:
    digest = hashlib.sha256()
    for part in (url.encode(), body, repr(sorted(headers.items())).encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
