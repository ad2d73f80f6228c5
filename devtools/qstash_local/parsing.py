from __future__ import annotations

import ast
import ipaddress
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_plus, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from werkzeug.datastructures import Headers

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
DEFAULT_RETRIES = 3
MAX_RETRY_AFTER = 86400.0

_FORWARD_PREFIX = "upstash-forward-"
_SCHEDULE_ID = re.compile(r"[A-Za-z0-9._-]+")
_DURATION = re.compile(r"(?:\d+[smhd])+")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_UNSUPPORTED = (
    "Upstash-Callback",
    "Upstash-Failure-Callback",
    "Upstash-Queue-Name",
    "Upstash-Flow-Control-Key",
    "Upstash-Flow-Control-Value",
)


class ApiError(Exception):
    """An error answered to an API client as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, kw_only=True)
class DeliveryOptions:
    """What a publish or schedule request says about how to deliver its messages."""

    method: str
    headers: dict[str, list[str]]
    retries: int
    delay: int | None
    timeout: int | None
    label: str | None
    retry_delay: str | None


@dataclass(frozen=True, kw_only=True)
class CronSpec:
    """A validated 5-field cron expression and the zone it is evaluated in."""

    text: str
    fields: str
    zone: tzinfo


def canonical_header(name: str) -> str:
    """Return `name` canonicalised like Go's `textproto.CanonicalMIMEHeaderKey`."""
    if not name or any(c not in _TOKEN_CHARS for c in name):
        # Go leaves names with invalid characters untouched.
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def parse_duration(value: str, *, header: str) -> int:
    """Return the seconds in a QStash duration such as `50s`, `3m`, `10h`, `1d` or `1h30m`."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise ApiError(
            400, f"invalid {header} {value!r}: expected a number with a unit s, m, h or d"
        )
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_cron(value: str) -> CronSpec:
    """Validate an `Upstash-Cron` value: 5 fields, optionally prefixed by `CRON_TZ=<zone> `."""
    text = value.strip()
    fields = text
    zone: tzinfo = UTC
    if text.startswith("CRON_TZ="):
        prefix, _, fields = text.partition(" ")
        name = prefix.removeprefix("CRON_TZ=")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(400, f"invalid cron {value!r}: unknown time zone {name!r}") from None
        fields = fields.strip()
    if len(fields.split()) != 5:
        raise ApiError(400, f"invalid cron {value!r}: expected 5 fields")
    try:
        valid = croniter.is_valid(fields)
    except Exception:
        valid = False
    if not valid:
        raise ApiError(400, f"invalid cron {value!r}")
    return CronSpec(text=text, fields=fields, zone=zone)


def next_fire_time(spec: CronSpec, after: float) -> float:
    """Return the first cron slot strictly after the unix time `after`."""
    start = datetime.fromtimestamp(after, tz=spec.zone)
    slot: datetime = croniter(spec.fields, start).get_next(datetime)
    return slot.timestamp()


def parse_schedule_id(headers: Headers) -> str | None:
    """Return the requested `Upstash-Schedule-Id`, refusing characters QStash refuses."""
    value = headers.get("Upstash-Schedule-Id")
    if value is None:
        return None
    if not _SCHEDULE_ID.fullmatch(value):
        raise ApiError(
            400,
            f"invalid Upstash-Schedule-Id {value!r}: only letters, digits, '-', '_' and '.' "
            "are allowed",
        )
    return value


def merge_query_options(headers: Headers, query: str) -> Headers:
    """Return `headers` plus the `upstash-*` options given as query parameters."""
    merged = Headers(headers)
    for key, value in _query_pairs(query):
        if key.lower().startswith("upstash-") and key not in merged:
            merged.add(key, value)
    return merged


def build_destination(destination: str, query: str) -> str:
    """Return the destination with the API request's own query parameters put back."""
    kept = [
        part
        for part in query.split("&")
        if part and not _is_api_parameter(unquote_plus(part.partition("=")[0]))
    ]
    return f"{destination}?{'&'.join(kept)}" if kept else destination


def check_destination(url: str, *, allow_remote: bool) -> None:
    """Refuse destinations that are not http(s) URLs, or not loopback unless allowed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ApiError(400, f"invalid destination {url!r}") from None
    if not url or parts.scheme not in ("http", "https") or not host:
        raise ApiError(
            400,
            f"invalid destination {url!r}: expected an http(s) URL "
            "(URL groups are not supported by the local server)",
        )
    if not allow_remote and not is_loopback_host(host):
        raise ApiError(
            400,
            f"destination {url!r} is not a loopback address; the local server only delivers "
            "to 127.0.0.0/8, ::1 and localhost unless allow_remote_destinations is set",
        )


def is_loopback_host(host: str) -> bool:
    """Tell whether `host` names this machine."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_delivery_options(headers: Headers) -> DeliveryOptions:
    """Read method, forwarded headers, retries, delay, timeout and label from API headers."""
    for name in _UNSUPPORTED:
        if name in headers:
            raise ApiError(400, f"{name} is not supported by the local QStash server")
    method = headers.get("Upstash-Method", "POST").strip().upper()
    if method not in METHODS:
        raise ApiError(400, f"invalid Upstash-Method {method!r}: expected one of {sorted(METHODS)}")
    retries = DEFAULT_RETRIES
    raw_retries = headers.get("Upstash-Retries")
    if raw_retries is not None:
        try:
            retries = int(raw_retries.strip())
        except ValueError:
            retries = -1
        if retries < 0:
            raise ApiError(
                400, f"invalid Upstash-Retries {raw_retries!r}: expected a non-negative integer"
            )
    delay = _optional_duration(headers, "Upstash-Delay")
    timeout = _optional_duration(headers, "Upstash-Timeout")
    if timeout == 0:
        raise ApiError(400, "invalid Upstash-Timeout: must be positive")
    retry_delay = headers.get("Upstash-Retry-Delay")
    if retry_delay is not None:
        compile_retry_delay(retry_delay)
    return DeliveryOptions(
        method=method,
        headers=forwarded_headers(headers),
        retries=retries,
        delay=delay,
        timeout=timeout,
        label=headers.get("Upstash-Label"),
        retry_delay=retry_delay,
    )


def forwarded_headers(headers: Headers) -> dict[str, list[str]]:
    """Return the `Upstash-Forward-*` headers unprefixed and canonicalised, plus Content-Type."""
    forwarded: dict[str, list[str]] = {}
    for name, value in headers.items():
        if name.lower().startswith(_FORWARD_PREFIX) and len(name) > len(_FORWARD_PREFIX):
            key = canonical_header(name[len(_FORWARD_PREFIX) :])
            forwarded.setdefault(key, []).append(value)
    content_type = headers.get("Content-Type")
    if content_type:
        forwarded["Content-Type"] = [content_type]
    return forwarded


def parse_not_before(headers: Headers) -> int | None:
    """Return `Upstash-Not-Before` as unix seconds."""
    value = headers.get("Upstash-Not-Before")
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise ApiError(
            400, f"invalid Upstash-Not-Before {value!r}: expected unix time in seconds"
        ) from None


def is_true(value: str | None) -> bool:
    """Read a boolean header; the Python SDK sends `True`, other clients `true`."""
    return value is not None and value.strip().lower() == "true"


def compile_retry_delay(expression: str) -> Callable[[int], float]:
    """Compile an `Upstash-Retry-Delay` expression into a function of `retried` (in ms)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        _check_expression(tree.body)
    except (SyntaxError, ValueError):
        raise ApiError(
            400,
            f"invalid Upstash-Retry-Delay {expression!r}: use numbers, `retried`, + - * / % ** "
            f"and {', '.join(_FUNCTIONS)}",
        ) from None

    def evaluate(retried: int) -> float:
        return float(_evaluate(tree.body, retried))

    return evaluate


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Return the delay a `Retry-After` value asks for, or None when unusable or over a day."""
    text = value.strip()
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif _GO_DURATION.fullmatch(text):
        seconds = sum(
            float(n) * _GO_DURATION_UNITS[unit] for n, unit in _GO_DURATION_PART.findall(text)
        )
    else:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if seconds > MAX_RETRY_AFTER:
        return None
    return max(0.0, seconds)


def _optional_duration(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    return None if value is None else parse_duration(value, header=name)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


def _is_api_parameter(key: str) -> bool:
    return key == "qstash_token" or key.lower().startswith("upstash-")


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "pow": math.pow,
    "sqrt": math.sqrt,
    "abs": abs,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
    "min": min,
    "max": max,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: math.pow,
}


def _check_expression(node: ast.expr) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError("only numbers are allowed")
    elif isinstance(node, ast.Name):
        if node.id != "retried":
            raise ValueError(f"unknown name {node.id}")
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise ValueError("unsupported operator")
        _check_expression(node.operand)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise ValueError("unsupported operator")
        _check_expression(node.left)
        _check_expression(node.right)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise ValueError("unsupported call")
        for arg in node.args:
            _check_expression(arg)
    else:
        raise ValueError("unsupported expression")


def _evaluate(node: ast.expr, retried: int) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "retried":
        return float(retried)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, retried)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, retried), _evaluate(node.right, retried))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_evaluate(arg, retried) for arg in node.args]
        return float(_FUNCTIONS[node.func.id](*args))
    raise ValueError("unsupported expression")
