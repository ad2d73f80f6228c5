from __future__ import annotations

import fcntl
import functools
import glob
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from importlib import metadata
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from ..db import utcnow
from ..errors import ConfigurationError
from ..extensions import get_engine, get_health_cache, get_jobs, get_settings
from ..health import qstash_health
from ..models import JobRun, Notification, PaymentTransfer
from ..qstash.protocol import JOB_PATH_PREFIX, RECEIVER_PATH
from . import (
    LAST_IN_SYNC,
    NOTICE_KINDS,
    OTHER,
    REGISTRY,
    _child,
    _label,
    record_delivery,
)
from .files import _locked

log = logging.getLogger("eleva.metrics")
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Leading failed runs counted for eleva_job_consecutive_failures; a bound on the query.
MAX_CONSECUTIVE = 10
NOTICE_STATUSES = ("PENDING", "FAILED")
TRANSFER_STATUSES = ("PENDING", "PROCESSING")



def init_app(app: Flask) -> None:
    """Count every request to a delivery endpoint once it is answered, whatever answered it."""
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


class StateCollector(Collector):
    """Gauges read at scrape time: build info, and state from the database and health report.

    Every query is bounded: counts over partial indexes of live rows, a LIMIT per job, and
    the outbox's pending and failed notices (a table that retention keeps small).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        settings = get_settings(self.app)
        info = GaugeMetricFamily("eleva_build_info", "The running build; always 1.",
                                 labels=["version", "app_env", "service"])
        info.add_metric([_version(), settings.app_env, settings.service_name], 1)
        yield info
        yield from self._health()
        yield from self._database()

    def _health(self) -> Iterator[Metric]:
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

    transfers = GaugeMetricFamily("eleva_payouts_transfers",
                                  "Transfers not yet settled, by status.", labels=["status"])
    for status in TRANSFER_STATUSES:
        transfers.add_metric([status], conn.execute(
            select(func.count()).select_from(PaymentTransfer)
            .where(PaymentTransfer.status == status)).scalar_one())
    yield transfers
    unknown = GaugeMetricFamily(
        "eleva_payouts_outcome_unknown",
        "Transfers whose outcome is unknown: claims older than PAYOUT_STALE_AFTER_SECONDS, and "
        "pending rows kept after their attempts because a transfer may exist.")
    stale = and_(PaymentTransfer.status == "PROCESSING",
                 PaymentTransfer.claimed_at < now - timedelta(seconds=stale_after))
    kept = and_(PaymentTransfer.status == "PENDING", PaymentTransfer.attempts >= max_attempts)
    unknown.add_metric([], conn.execute(
        select(func.count()).select_from(PaymentTransfer).where(or_(stale, kept))).scalar_one())
    yield unknown

    notices = GaugeMetricFamily("eleva_notices", "Notices waiting to be sent, or given up on.",
                                labels=["kind", "status"])
    counts = {(kind, status): 0 for kind in sorted(NOTICE_KINDS) for status in NOTICE_STATUSES}
    for kind, status, count in conn.execute(
            select(Notification.kind, Notification.status, func.count())
            .where(Notification.status.in_(NOTICE_STATUSES))
            .group_by(Notification.kind, Notification.status)).all():
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


