from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from importlib import metadata
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .notifications import Channel, Notice
    from .payouts.provider import PaymentState, PayoutProvider, TransferRequest, TransferResult
    from .runs.jobs import RunOutcome

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
CONTENT_TYPE = CONTENT_TYPE_LATEST
REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
CURRENCY_RE = re.compile(r"[a-z]{3}")
HTTP_STATUS_RE = re.compile(r"status: (\d{3})")
NOTICE_KINDS = frozenset({"upcoming_payout", "payout_sent", "payout_failed"})
CHANNELS = frozenset({"log", "smtp"})
QSTASH_OPERATIONS = {"list": "list_schedules", "upsert": "upsert_schedule",
                     "delete": "delete_schedule", "publish": "publish"}
TRANSFER_STATUSES = ("PENDING", "PROCESSING")
NOTICE_STATUSES = ("PENDING", "FAILED")
# Leading failed runs counted for eleva_job_consecutive_failures; a bound on the query.
MAX_CONSECUTIVE = 10
LOCK_FILE = ".merge.lock"
ARCHIVE = "archive"


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
    import httpx
    from qstash.errors import QStashError, RateLimitExceededError

    if isinstance(exc, RateLimitExceededError):
        return "rate_limited"
    if isinstance(exc, QStashError):
        status = _http_status(exc)
        return "server_error" if status is None or status >= 500 else "refused"
    if isinstance(exc, httpx.HTTPError):
        return "unreachable"
    return "error"


def _http_status(exc: Exception) -> int | None:
    # The SDK says the status only in its message (as service/qstash_api.py reads it).
    match = HTTP_STATUS_RE.search(str(exc))
    return int(match.group(1)) if match else None


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
    from .payouts.provider import ProviderError

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
        from .notifications import DeliveryError

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


# --- The app side: counting delivery requests, and collecting at scrape time ----------------


def init_app(app: Flask) -> None:
    """Count every request to a delivery endpoint once it is answered, whatever answered it."""
    from .extensions import get_settings
    from .qstash.protocol import JOB_PATH_PREFIX, RECEIVER_PATH

    directory = get_settings(app).prometheus_multiproc_dir
    if directory is not None:
        check_multiprocess(directory)

    @app.after_request
    def count_delivery(response: Response) -> Response:
        rule = request.url_rule
        if rule is None or not (rule.rule == RECEIVER_PATH
                                or rule.rule.startswith(JOB_PATH_PREFIX)):
            return response
        if response.status_code == 200:
            record_delivery(rule.rule, g.get("eleva_delivery_outcome", "succeeded"))
            return response
        body = response.get_json(silent=True) if response.is_json else None
        code = body.get("error") if isinstance(body, dict) else None
        outcome, reason = _error_outcome(response.status_code, _label(code))
        record_delivery(rule.rule, outcome, reason)
        return response


def _error_outcome(status: int, code: str) -> tuple[str, str]:
    if status == 503 and code == "job_busy":
        return "job_busy", ""
    if status == 489:
        return "non_retryable", code
    if status == 503:
        return "unavailable", code
    if status >= 500:
        return "failed", code
    return "rejected", code


def check_multiprocess(directory: str) -> None:
    """Create the multiprocess directory; refuse one that cannot be used, or is ignored."""
    from .errors import ConfigurationError

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        pass  # reported below
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ConfigurationError(
            "PROMETHEUS_MULTIPROC_DIR is not a writable directory; point it at a directory "
            "of its own (e.g. on a tmpfs), or unset it for a single process"
        )
    # prometheus-client picks its value store when imported, from the process environment.
    if not getattr(values.ValueClass, "_multiprocess", False) or os.environ.get(
            "PROMETHEUS_MULTIPROC_DIR") != directory:
        raise ConfigurationError(
            "PROMETHEUS_MULTIPROC_DIR must be set in the process environment (not only in "
            ".env) before the server starts, so that every worker writes its metrics there"
        )


def render(app: Flask) -> bytes:
    """Return the metrics of every worker and the state read from the database, as text."""
    from prometheus_client import generate_latest

    from .extensions import get_settings

    registry = CollectorRegistry(auto_describe=False)
    directory = get_settings(app).prometheus_multiproc_dir
    if directory is None:
        registry.register(_Forward(REGISTRY))
    else:
        registry.register(_LockedMultiProcessCollector(directory))
    registry.register(StateCollector(app))
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


class _LockedMultiProcessCollector(Collector):
    """Sum the workers' files, never while a dead worker's values are being archived."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        with _locked(self.directory, fcntl.LOCK_SH):
            files = glob.glob(os.path.join(self.directory, "*.db"))
            return list(MultiProcessCollector.merge(files, accumulate=True))


@contextlib.contextmanager
def _locked(directory: str, mode: int) -> Iterator[None]:
    with open(os.path.join(directory, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class StateCollector(Collector):
    """Gauges read at scrape time: build info, and state from the database and health report.

    Every query is bounded: counts over partial indexes of live rows, a LIMIT per job, and
    the outbox's pending and failed notices (a table that retention keeps small).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        from .extensions import get_settings

        settings = get_settings(self.app)
        info = GaugeMetricFamily("eleva_build_info", "The running build; always 1.",
                                 labels=["version", "app_env", "service"])
        info.add_metric([_version(), settings.app_env, settings.service_name], 1)
        yield info
        yield from self._health()
        yield from self._database()

    def _health(self) -> Iterator[Metric]:
        from .extensions import get_health_cache
        from .health import qstash_health

        try:
            report = get_health_cache(self.app).get(lambda: qstash_health(self.app))
        except Exception:
            # The rest of the scrape is still worth having; the report's gauges are left out.
            log.exception("metrics: the health report failed")
            return
        up = GaugeMetricFamily("eleva_qstash_up", "1 when the last check reached the QStash API.")
        up.add_metric([], 1 if report["qstash"]["reachable"] else 0)
        yield up
        in_sync = report["schedules"]["in_sync"]
        if in_sync is not None:
            if in_sync:
                checked = datetime.fromisoformat(report["checked_at"]).timestamp()
                _child(LAST_IN_SYNC, "check").set(checked)
            family = GaugeMetricFamily("eleva_schedules_in_sync",
                                       "1 when QStash's schedules match the jobs in code.")
            family.add_metric([], 1 if in_sync else 0)
            yield family
        overdue = GaugeMetricFamily(
            "eleva_job_overdue", "1 when the job missed two firings (the health report's rule).",
            labels=["job_name"])
        for name, job in report["jobs"].items():
            overdue.add_metric([name], 1 if job["overdue"] else 0)
        yield overdue

    def _database(self) -> Iterator[Metric]:
        from sqlalchemy.exc import SQLAlchemyError

        from .extensions import get_engine, get_jobs, get_settings

        up = GaugeMetricFamily("eleva_database_up", "1 when the database answered this scrape.")
        try:
            with get_engine(self.app).connect() as conn:
                families = list(_database_families(
                    conn, list(get_jobs(self.app)),
                    stale_after=get_settings(self.app).payout_stale_after_seconds,
                    max_attempts=get_settings(self.app).payout_max_attempts))
        except SQLAlchemyError as exc:
            log.error("metrics: database unreachable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def _database_families(conn: Any, jobs: list[str], *, stale_after: int,
                       max_attempts: int) -> Iterator[Metric]:
    from sqlalchemy import and_, func, or_, select

    from .db import utcnow
    from .models import JobRun, Notification, PaymentTransfer

    now = utcnow()
    running = GaugeMetricFamily("eleva_job_runs_in_progress",
                                "Runs holding their job's lease now (0 or 1).", labels=["job_name"])
    failures = GaugeMetricFamily(
        "eleva_job_consecutive_failures",
        f"Executed runs that failed since the job's last success (at most {MAX_CONSECUTIVE}).",
        labels=["job_name"])
    last = GaugeMetricFamily("eleva_job_last_success_timestamp_seconds",
                             "Start time of the job's last successful run.", labels=["job_name"])
    for name in jobs:
        success = conn.execute(
            select(JobRun.started_at).where(JobRun.job == name, JobRun.status == "succeeded")
            .order_by(JobRun.started_at.desc()).limit(1)).scalar()
        if success is not None:
            last.add_metric([name], success.timestamp())
        running.add_metric([name], conn.execute(
            select(func.count()).select_from(JobRun).where(
                JobRun.job == name, JobRun.status == "running", JobRun.expires_at > now)
        ).scalar_one())
        # A run blocked by a busy job is written with expires_at = started_at: it never ran.
        recent = conn.execute(
            select(JobRun.status).where(
                JobRun.job == name, JobRun.status.in_(("succeeded", "failed")),
                JobRun.expires_at > JobRun.started_at)
            .order_by(JobRun.started_at.desc()).limit(MAX_CONSECUTIVE)).scalars().all()
        streak = next((i for i, status in enumerate(recent) if status != "failed"), len(recent))
        failures.add_metric([name], streak)
    yield running
    yield failures
    yield last

    T = PaymentTransfer
    transfers = GaugeMetricFamily("eleva_payouts_transfers",
                                  "Transfers not yet settled, by status.", labels=["status"])
    for status in TRANSFER_STATUSES:
        transfers.add_metric([status], conn.execute(
            select(func.count()).select_from(T).where(T.status == status)).scalar_one())
    yield transfers
    unknown = GaugeMetricFamily(
        "eleva_payouts_outcome_unknown",
        "Transfers whose outcome is unknown: claims older than PAYOUT_STALE_AFTER_SECONDS, and "
        "pending rows kept after their attempts because a transfer may exist.")
    stale = and_(T.status == "PROCESSING", T.claimed_at < now - timedelta(seconds=stale_after))
    kept = and_(T.status == "PENDING", T.attempts >= max_attempts)
    unknown.add_metric([], conn.execute(
        select(func.count()).select_from(T).where(or_(stale, kept))).scalar_one())
    yield unknown

    N = Notification
    notices = GaugeMetricFamily("eleva_notices", "Notices waiting to be sent, or given up on.",
                                labels=["kind", "status"])
    counts = {(kind, status): 0 for kind in sorted(NOTICE_KINDS) for status in NOTICE_STATUSES}
    for kind, status, count in conn.execute(
            select(N.kind, N.status, func.count()).where(N.status.in_(NOTICE_STATUSES))
            .group_by(N.kind, N.status)).all():
        key = (kind if kind in NOTICE_KINDS else OTHER, status)
        counts[key] = counts.get(key, 0) + count
    for (kind, status), count in counts.items():
        notices.add_metric([kind, status], count)
    yield notices


@functools.cache
def _version() -> str:
    try:
        return metadata.version("eleva-jobs")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- gunicorn multiprocess mode: start-up and worker exit ------------------------------------


def reset_directory(directory: str) -> None:
    """Empty the multiprocess directory at server start: values of an earlier run must go."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def worker_exited(pid: int, directory: str) -> None:
    """Fold a dead worker's files into the archive files, so that its counts outlive it.

    Counters and histograms are added up; the most recent gauge value is kept; live gauges
    are dropped. The directory thus holds the live workers' files plus one archive per kind.
    """
    with _locked(directory, fcntl.LOCK_EX):
        mark_process_dead(pid, directory)
        for prefix in ("counter", "histogram", "gauge_mostrecent"):
            dead = os.path.join(directory, f"{prefix}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(directory, f"{prefix}_{ARCHIVE}.db"))
            try:
                for key, value, stamp, _ in MmapedDict.read_all_values_from_file(dead):
                    old, old_stamp = archive.read_value(key)
                    if prefix == "gauge_mostrecent":
                        if stamp >= old_stamp:
                            archive.write_value(key, value, stamp)
                    else:
                        archive.write_value(key, old + value, max(stamp, old_stamp))
            finally:
                archive.close()
            os.remove(dead)
