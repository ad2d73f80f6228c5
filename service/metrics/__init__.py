from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from flask import g
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from ..notifications import DeliveryError
from ..payouts.provider import ProviderError
from ..qstash.protocol import sdk_error_status

if TYPE_CHECKING:
    from ..notifications import Channel, Notice
    from ..payouts.provider import PaymentState, PayoutProvider, TransferRequest, TransferResult
    from ..runs.jobs import RunOutcome

log = logging.getLogger("eleva.metrics")

P = ParamSpec("P")
T = TypeVar("T")

# Per-process metrics. Every one has labels, so that defining them creates no value (and, in
# multiprocess mode, no file) until a first call records one. Label values come from fixed
# sets: each recording function below maps anything else to "other".
REGISTRY = CollectorRegistry(auto_describe=True)
DELIVERIES = Counter(
    "eleva_deliveries", "Requests to the delivery endpoints, by outcome and reason code.",
    ["endpoint", "outcome", "reason"], registry=REGISTRY)
VERIFICATION = Histogram(
    "eleva_delivery_verification_seconds", "Time to check a delivery's Upstash-Signature.",
    ["result"], registry=REGISTRY,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
JOB_RUNS = Counter(
    "eleva_job_runs", "Job runs by final status (skipped: not run, the job was busy).",
    ["job_name", "status"], registry=REGISTRY)
JOB_DURATION = Histogram(
    "eleva_job_run_duration_seconds", "Duration of executed job runs.", ["job_name"],
    registry=REGISTRY, buckets=(0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200))
PROVIDER_CALLS = Counter(
    "eleva_payout_provider_calls", "Calls to the payout provider by operation and outcome.",
    ["operation", "outcome"], registry=REGISTRY)
PROVIDER_LATENCY = Histogram(
    "eleva_payout_provider_call_duration_seconds", "Latency of payout provider calls.",
    ["operation"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60))
RATE_LIMIT_WAITS = Counter(
    "eleva_payout_rate_limit_waits",
    "Provider calls refused for its rate limit; each row waits for its retry backoff.",
    ["operation"], registry=REGISTRY)
PAID = Counter(
    "eleva_payouts_paid_minor_units",
    "Amount transferred to experts, in the currency's minor unit (cents).",
    ["currency"], registry=REGISTRY)
NOTICE_SENDS = Counter(
    "eleva_notice_sends", "Notice sends by channel, kind and outcome.",
    ["channel", "kind", "outcome"], registry=REGISTRY)
QSTASH_CALLS = Counter(
    "eleva_qstash_api_calls", "QStash API calls (each attempt) by operation and outcome.",
    ["operation", "outcome"], registry=REGISTRY)
QSTASH_LATENCY = Histogram(
    "eleva_qstash_api_call_duration_seconds", "Latency of QStash API calls.", ["operation"],
    registry=REGISTRY, buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LAST_IN_SYNC = Gauge(
    "eleva_schedules_last_in_sync_timestamp_seconds",
    "When the schedules were last synced (source=sync) or checked and found in sync "
    "(source=check).", ["source"], registry=REGISTRY, multiprocess_mode="mostrecent")

OTHER = "other"
REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
CURRENCY_RE = re.compile(r"[a-z]{3}")
NOTICE_KINDS = frozenset({"upcoming_payout", "payout_sent", "payout_failed"})
CHANNELS = frozenset({"log", "smtp"})
QSTASH_OPERATIONS = {"list": "list_schedules", "upsert": "upsert_schedule",
                     "delete": "delete_schedule", "publish": "publish"}


def _label(value: str | None, pattern: re.Pattern[str] = REASON_RE) -> str:
    return value if value is not None and pattern.fullmatch(value) else OTHER


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """Return the metric's child for these label values, looked up once: labels() is slow.

    The cache is bounded because the label values are (see _label and the fixed sets).
    """
    return metric.labels(*labels)


# --- Recording: one-line calls from the code being measured ---------------------------------


def timed_verification(verify: Callable[P, T]) -> Callable[P, T]:
    """Decorate the signature check so that its time lands in the verification histogram."""

    @functools.wraps(verify)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        result = "rejected"
        try:
            value = verify(*args, **kwargs)
            result = "accepted"
            return value
        finally:
            _child(VERIFICATION, result).observe(time.perf_counter() - started)

    return wrapper


def delivered(outcome: RunOutcome) -> RunOutcome:
    """Note a delivery answered 200 (succeeded, duplicate or skipped) for the request's count."""
    g.eleva_delivery_outcome = "duplicate" if outcome.duplicate else outcome.status
    return outcome


def record_delivery(endpoint: str, outcome: str, reason: str = "") -> None:
    """Count one request to a delivery endpoint."""
    _child(DELIVERIES, endpoint, outcome, reason).inc()


def observe_run(job: str, status: str, seconds: float | None) -> None:
    """Count a finished run; executed ones (seconds given) also go into the duration histogram."""
    _child(JOB_RUNS, job, status).inc()
    if seconds is not None:
        _child(JOB_DURATION, job).observe(seconds)


def record_paid(currency: str, amount: int) -> None:
    """Add a completed transfer's amount (minor units) to the paid total of its currency."""
    _child(PAID, _label(currency.lower(), CURRENCY_RE)).inc(amount)


def schedules_synced(source: str = "sync") -> None:
    """Note that the schedules match the code now."""
    _child(LAST_IN_SYNC, source).set(time.time())


def qstash_call(what: str, call: Callable[[], T]) -> T:
    """Make one QStash API call, counting it by operation and outcome with its latency."""
    operation = QSTASH_OPERATIONS.get(what.partition(" ")[0], OTHER)
    started = time.perf_counter()
    outcome = "error"
    try:
        result = call()
        outcome = "ok"
        return result
    except Exception as exc:
        outcome = _qstash_outcome(exc)
        raise
    finally:
        _child(QSTASH_LATENCY, operation).observe(time.perf_counter() - started)
        _child(QSTASH_CALLS, operation, outcome).inc()


def _qstash_outcome(exc: Exception) -> str:
    # Loaded already: only a QStash call, made through the SDK, gets here (service/qstash/api.py).
    import httpx
    from qstash.errors import QStashError, RateLimitExceededError

    if isinstance(exc, RateLimitExceededError):
        return "rate_limited"
    if isinstance(exc, QStashError):
        status = sdk_error_status(exc)
        return "server_error" if status is None or status >= 500 else "refused"
    if isinstance(exc, httpx.HTTPError):
        return "unreachable"
    return "error"


class InstrumentedProvider:
    """A payout provider whose calls are counted and timed; everything else passes through."""

    def __init__(self, provider: PayoutProvider) -> None:
        self._provider = provider
        self.name = getattr(provider, "name", OTHER)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)  # close(), and whatever else callers look up

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = call()
            outcome = "ok" if result is not None else "not_found"
            return result
        except Exception as exc:
            outcome = _provider_outcome(exc)
            if outcome == "rate_limited":
                _child(RATE_LIMIT_WAITS, operation).inc()
            raise
        finally:
            _child(PROVIDER_LATENCY, operation).observe(time.perf_counter() - started)
            _child(PROVIDER_CALLS, operation, outcome).inc()

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        return self._call("create_transfer", lambda: self._provider.create_transfer(request))

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        return self._call("find_transfer", lambda: self._provider.find_transfer(
            transfer_id=transfer_id, transfer_group=transfer_group))

    def payment_state(self, payment_id: str) -> PaymentState:
        return self._call("payment_state", lambda: self._provider.payment_state(payment_id))


def instrument_provider(provider: PayoutProvider) -> PayoutProvider:
    """Return the provider wrapped so that its calls are measured (once, however often called)."""
    if isinstance(provider, InstrumentedProvider):
        return provider
    return InstrumentedProvider(provider)


def _provider_outcome(exc: Exception) -> str:
    if not isinstance(exc, ProviderError):
        return "error"
    if exc.code == "rate_limited":
        return "rate_limited"
    if exc.outcome_unknown:
        return "unknown"
    return "transient" if exc.retryable else "permanent"


class InstrumentedChannel:
    """A notification channel whose sends are counted by kind and outcome."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self.name = getattr(channel, "name", OTHER)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def send(self, notice: Notice) -> None:
        outcome = "error"
        try:
            self._channel.send(notice)
            outcome = "sent"
        except DeliveryError as exc:
            outcome = "retryable" if exc.retryable else "permanent"
            raise
        finally:
            _child(NOTICE_SENDS, self.name if self.name in CHANNELS else OTHER,
                                notice.kind if notice.kind in NOTICE_KINDS else OTHER,
                                outcome).inc()


def instrument_channel(channel: Channel) -> Channel:
    """Return the channel wrapped so that its sends are counted (once)."""
    if isinstance(channel, InstrumentedChannel):
        return channel
    return InstrumentedChannel(channel)


