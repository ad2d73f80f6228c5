from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from werkzeug.datastructures import MultiDict

from .parsing import ApiError

# Query parameters of the bulk and listing endpoints that are not filters.
PAGING = frozenset({"count", "cursor", "async", "qstash_token"})
# Filters that match a field of the rendered message or DLQ entry as is.
_FIELDS = {
    "messageId": "messageId",
    "url": "url",
    "scheduleId": "scheduleId",
    "topicName": "topicName",
    "queueName": "queueName",
    "flowControlKey": "flowControlKey",
    "callerIp": "callerIP",
    "callerIP": "callerIP",
    "responseStatus": "responseStatus",
    "state": "state",
}
# Filters that every listing takes.
_SHARED_FILTERS = frozenset({
    "url", "label", "scheduleId", "topicName", "queueName", "flowControlKey",
    "callerIp", "callerIP", "fromDate", "toDate",
})
MESSAGE_FILTERS = _SHARED_FILTERS | {"host", "path"}
DLQ_FILTERS = _SHARED_FILTERS | {"messageId", "responseStatus"}
EVENT_FILTERS = MESSAGE_FILTERS | {"messageId", "state"}


@dataclass(frozen=True)
class Filters:
    """The filters of a listing or bulk request: values OR-ed within a key, keys AND-ed."""

    values: dict[str, frozenset[str]] = field(default_factory=dict)
    from_ms: int | None = None
    to_ms: int | None = None
    # The rendered field holding the time that fromDate/toDate compare against.
    time_key: str = "createdAt"

    def __bool__(self) -> bool:
        return bool(self.values) or self.from_ms is not None or self.to_ms is not None

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Tell whether a rendered message, DLQ entry or event passes every filter."""
        for key, accepted in self.values.items():
            if not _values(record, key) & accepted:
                return False
        moment = record.get(self.time_key)
        if self.from_ms is not None and (moment is None or moment < self.from_ms):
            return False
        return not (self.to_ms is not None and (moment is None or moment > self.to_ms))


def multi_values(args: MultiDict[str, str], key: str) -> list[str] | None:
    """Return a multi-value parameter given repeated or comma-separated; None when absent."""
    if key not in args:
        return None
    parts = (part.strip() for value in args.getlist(key) for part in value.split(","))
    return [part for part in parts if part]


def parse_filters(
    args: MultiDict[str, str],
    *,
    allowed: frozenset[str],
    ignore: Iterable[str] = (),
    time_key: str = "createdAt",
) -> Filters:
    """Read the filters of a request, refusing parameters the endpoint does not know."""
    skipped = PAGING | frozenset(ignore)
    unknown = sorted(k for k in args if k not in allowed and k not in skipped)
    if unknown:
        # A mistyped filter must not widen a bulk action to every message.
        raise ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")
    values: dict[str, frozenset[str]] = {}
    for key in sorted(allowed - {"fromDate", "toDate"}):
        given = multi_values(args, key)
        if given is not None:
            # callerIP is the deprecated spelling of callerIp; both filter the same field.
            name = "callerIp" if key == "callerIP" else key
            if key == "state" and "IN_PROGRESS" in given:
                # A log filter that stands for the states of a message not yet settled.
                given = [*given, "ACTIVE", "RETRY", "ERROR"]
            values[name] = values.get(name, frozenset()) | frozenset(given)
    return Filters(
        values=values,
        from_ms=_millis(args, "fromDate"),
        to_ms=_millis(args, "toDate"),
        time_key=time_key,
    )


def page_size(args: MultiDict[str, str], *, default: int, maximum: int) -> int:
    """Return the `count` parameter, capped like the real API caps it."""
    raw = args.get("count")
    if raw is None:
        return default
    try:
        count = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid count {raw!r}: expected a positive integer") from None
    if count < 1:
        raise ApiError(400, f"invalid count {raw!r}: expected a positive integer")
    return min(count, maximum)


def _values(record: Mapping[str, Any], key: str) -> set[str]:
    if key == "label":
        labels = record.get("labels") or []
        return {str(label) for label in labels}
    if key in ("host", "path"):
        url = record.get("url") or ""
        parts = urlsplit(url)
        if key == "path":
            return {parts.path}
        return {v for v in (parts.hostname, parts.netloc) if v}
    value = record.get(_FIELDS.get(key, key))
    return set() if value is None else {str(value)}


def _millis(args: MultiDict[str, str], key: str) -> int | None:
    raw = args.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"invalid {key} {raw!r}: expected unix time in milliseconds") from None
