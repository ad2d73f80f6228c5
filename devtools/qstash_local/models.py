from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .parsing import CronSpec

ScheduleState = Literal["IN_PROGRESS", "SUCCESS", "FAIL"]


@dataclass(kw_only=True)
class Schedule:
    """A schedule as stored by the local server; times are unix seconds."""

    schedule_id: str
    destination: str
    cron: CronSpec
    method: str
    headers: dict[str, list[str]]
    body: bytes
    retries: int
    delay: int | None
    timeout: int | None
    label: str | None
    retry_delay: str | None
    caller_ip: str
    created_at: float
    next_schedule_time: float
    paused: bool = False
    last_schedule_time: float | None = None
    # Only the messages of the latest firing, as QStash reports them.
    last_schedule_states: dict[str, ScheduleState] = field(default_factory=dict)


@dataclass(kw_only=True)
class Message:
    """A message waiting for (another) delivery attempt; times are unix seconds."""

    message_id: str
    url: str
    method: str
    headers: dict[str, list[str]]
    body: bytes
    max_retries: int
    not_before: float
    created_at: float
    caller_ip: str
    schedule_id: str | None = None
    label: str | None = None
    timeout: int | None = None
    retry_delay: str | None = None
    retried: int = 0
    next_attempt_at: float = 0.0


@dataclass(kw_only=True)
class DlqEntry:
    """A message that failed for good, with the last response it got."""

    dlq_id: str
    message: Message
    response_status: int
    response_headers: dict[str, list[str]]
    response_body: bytes
    error: str | None
    failed_at: float


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    """One outbound HTTP request made to a destination; status is None when none came back."""

    message_id: str
    schedule_id: str | None
    url: str
    retried: int
    at: float
    status: int | None
    error: str | None


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    """The answer to a publish request."""

    message_id: str
    deduplicated: bool = False


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """Render a schedule the way `GET /v2/schedules/{id}` does."""
    data: dict[str, Any] = {
        "scheduleId": schedule.schedule_id,
        "cron": schedule.cron.text,
        "destination": schedule.destination,
        "method": schedule.method,
        "createdAt": _ms(schedule.created_at),
        "retries": schedule.retries,
        "isPaused": schedule.paused,
        "callerIP": schedule.caller_ip,
        "nextScheduleTime": _ms(schedule.next_schedule_time),
        "lastScheduleStates": dict(schedule.last_schedule_states),
    }
    if schedule.headers:
        data["header"] = {k: list(v) for k, v in schedule.headers.items()}
    data.update(_body_json(schedule.body, "body"))
    if schedule.last_schedule_time is not None:
        data["lastScheduleTime"] = _ms(schedule.last_schedule_time)
    if schedule.delay is not None:
        data["delay"] = schedule.delay
    if schedule.timeout is not None:
        data["timeout"] = schedule.timeout
    if schedule.label is not None:
        data["label"] = schedule.label
    if schedule.retry_delay is not None:
        data["retryDelayExpression"] = schedule.retry_delay
    return data


def message_json(message: Message) -> dict[str, Any]:
    """Render a message the way `GET /v2/messages/{id}` does."""
    data: dict[str, Any] = {
        "messageId": message.message_id,
        "url": message.url,
        "method": message.method,
        "maxRetries": message.max_retries,
        "notBefore": _ms(message.not_before),
        "createdAt": _ms(message.created_at),
        "callerIP": message.caller_ip,
    }
    if message.headers:
        data["header"] = {k: list(v) for k, v in message.headers.items()}
    data.update(_body_json(message.body, "body"))
    _add_schedule_and_labels(data, message)
    if message.retry_delay is not None:
        data["retryDelayExpression"] = message.retry_delay
    return data


def _add_schedule_and_labels(data: dict[str, Any], message: Message) -> None:
    """Add the schedule id and labels a message has, as messages and events render them."""
    if message.schedule_id is not None:
        data["scheduleId"] = message.schedule_id
    if message.label is not None:
        labels = split_labels(message.label)
        data["label"] = labels[0] if labels else message.label
        data["labels"] = labels


def dlq_json(entry: DlqEntry) -> dict[str, Any]:
    """Render a DLQ entry the way `GET /v2/dlq` lists it."""
    data = message_json(entry.message)
    data["dlqId"] = entry.dlq_id
    data["responseStatus"] = entry.response_status
    data["responseHeader"] = {k: list(v) for k, v in entry.response_headers.items()}
    data.update(_body_json(entry.response_body, "responseBody"))
    return data


def event_json(
    message: Message,
    state: str,
    *,
    at: float,
    timeout: float,
    response: ResponseInfo | None = None,
) -> dict[str, Any]:
    """Render one log entry the way `GET /v2/events` lists it."""
    data: dict[str, Any] = {
        "time": _ms(at),
        "messageId": message.message_id,
        "state": state,
        "url": message.url,
        "method": message.method,
        "maxRetries": message.max_retries,
        # Milliseconds, unlike the other durations of the API.
        "timeout": int(timeout * 1000),
        "createdAt": _ms(message.created_at),
        "callerIP": message.caller_ip,
    }
    if message.headers:
        data["header"] = {k: list(v) for k, v in message.headers.items()}
    if message.body:
        data["body"] = base64.b64encode(message.body).decode("ascii")
    _add_schedule_and_labels(data, message)
    if message.retry_delay is not None:
        data["retryDelayExpr"] = message.retry_delay
    if state in ("CREATED", "RETRY"):
        data["nextDeliveryTime"] = _ms(message.next_attempt_at)
    if response is not None:
        if response.status is not None:
            data["responseStatus"] = response.status
        headers = {k: list(v) for k, v in response.headers.items()}
        # The reference names it responseHeaders; qstash-py reads responseHeader.
        data["responseHeaders"] = headers
        data["responseHeader"] = headers
        if response.body:
            data["responseBody"] = base64.b64encode(response.body).decode("ascii")
        if response.error is not None:
            data["error"] = response.error
    return data


class ResponseInfo(Protocol):
    """What an event needs to know about a destination's answer."""

    @property
    def status(self) -> int | None: ...
    @property
    def headers(self) -> dict[str, list[str]]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def error(self) -> str | None: ...


def split_labels(label: str) -> list[str]:
    """Return the labels of a comma-separated `Upstash-Label` value."""
    return [part.strip() for part in label.split(",") if part.strip()]


def _body_json(body: bytes, key: str) -> dict[str, str]:
    if not body:
        return {}
    try:
        return {key: body.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{key}Base64": base64.b64encode(body).decode("ascii")}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
