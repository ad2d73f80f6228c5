from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .db import utcnow
from .errors import ConfigurationError
from .extensions import get_config_report, get_jobs, get_qstash, get_sessions, get_settings
from .models import JobRun
from .qstash.api import QStashApiError
from .qstash.schedules import (
    Plan,
    RemoteSchedule,
    ScheduleConfigError,
    cron_period,
    desired_schedules,
    firing_after,
    plan,
    schedule_prefix,
)
from .runs.jobs import Job

OVERDUE_GRACE = timedelta(minutes=15)


def qstash_health(app: Flask) -> dict[str, Any]:
    """Check configuration, QStash reachability, schedule drift and job runs in one report."""
    now = utcnow()
    report = get_config_report(app)
    settings = get_settings(app)
    jobs = get_jobs(app)
    problems: list[str] = []
    degraded: list[str] = []
    if not report.valid:
        problems.append("configuration is invalid")

    qstash: dict[str, Any] = {"reachable": False, "latency_ms": None, "error": None}
    remote: list[RemoteSchedule] | None = None
    try:
        api = get_qstash(app, probe=True)
        started = time.monotonic()
        remote = api.list_schedules()
        qstash.update(reachable=True, latency_ms=int((time.monotonic() - started) * 1000))
    except (ConfigurationError, QStashApiError) as exc:
        qstash["error"] = str(exc)
        problems.append("QStash is not reachable")

    schedules: dict[str, Any] = {"in_sync": None, "error": None}
    effective_cron = {name: job.cron for name, job in jobs.items()}
    remote_by_id = {s.schedule_id: s for s in remote or []}
    try:
        desired = desired_schedules(settings, jobs)
        effective_cron.update({d.job: d.cron for d in desired})
    except ScheduleConfigError as exc:
        desired = None
        schedules["error"] = str(exc)
        degraded.append("schedule configuration is invalid")
    if remote is not None and desired is not None:
        schedules.update(_drift(plan(desired, remote, prefix=schedule_prefix(settings)),
                                remote_by_id))
        if not schedules["in_sync"]:
            degraded.append("schedules are not in sync; run `flask qstash update`")
        if schedules["paused"]:
            degraded.append("some schedules are paused")

    try:
        job_report = _jobs(get_sessions(app), jobs, effective_cron, remote_by_id, settings_prefix=
                           schedule_prefix(settings), now=now,
                           enabled=None if desired is None else {d.job for d in desired})
        if any(j["overdue"] for j in job_report.values()):
            degraded.append("some jobs are overdue")
    except SQLAlchemyError as exc:
        job_report = {}
        problems.append(f"the database is unreachable ({type(exc).__name__})")

    status = "error" if problems else "degraded" if degraded else "ok"
    return {
        "status": status,
        "checked_at": now.isoformat(),
        "reasons": problems + degraded,
        "config": report.to_dict(),
        "qstash": qstash,
        "schedules": schedules,
        "jobs": job_report,
    }


def _drift(found: Plan, remote_by_id: Mapping[str, RemoteSchedule]) -> dict[str, Any]:
    per_job = {}
    for item in found.items:
        if item.job is None or item.action == "delete":
            continue
        have = remote_by_id.get(item.schedule_id)
        per_job[item.job] = have.summary() if have else {"schedule_id": item.schedule_id,
                                                          "missing": True}
    owned = [s for s in remote_by_id.values() if s not in found.foreign]
    return {
        "in_sync": found.empty,
        "missing": [i.schedule_id for i in found.of("create")],
        "changed": [{"schedule_id": i.schedule_id, "fields": [c.field for c in i.changes]}
                    for i in found.of("update")],
        "stale": [i.schedule_id for i in found.of("delete")],
        "paused": sorted(s.schedule_id for s in owned if s.paused),
        "foreign_count": len(found.foreign),
        "per_job": per_job,
    }


def _jobs(
    sessions: sessionmaker[Session],
    jobs: Mapping[str, Job],
    crons: Mapping[str, str],
    remote_by_id: Mapping[str, RemoteSchedule],
    *,
    settings_prefix: str,
    now: datetime,
    enabled: set[str] | None,
) -> dict[str, dict[str, Any]]:
    """Report each job's last run and success, and whether it is overdue.

    A job is overdue when the second firing of its schedule after its last success (or, if it
    never succeeded, after its schedule was created) is more than OVERDUE_GRACE past: one missed
    firing is tolerated. A disabled job (JOB_<NAME>_ENABLED=false: no schedule) is never overdue.
    """
    report = {}
    with sessions() as session:
        for name in jobs:
            last = session.scalars(select(JobRun).where(JobRun.job == name)
                                   .order_by(JobRun.started_at.desc()).limit(1)).first()
            success = session.scalars(
                select(JobRun).where(JobRun.job == name, JobRun.status == "succeeded")
                .order_by(JobRun.started_at.desc()).limit(1)).first()
            schedule = remote_by_id.get(settings_prefix + name)
            # Without a success, count from when the schedule was created, if QStash says.
            since = (success.started_at if success else
                     datetime.fromtimestamp(schedule.created_at / 1000, UTC)
                     if schedule and schedule.created_at else None)
            is_enabled = enabled is None or name in enabled
            if since is None:
                window = 2 * cron_period(crons[name], now=now) + OVERDUE_GRACE
            else:
                window = firing_after(crons[name], since, count=2) + OVERDUE_GRACE - since
            report[name] = {
                "cron": crons[name],
                "enabled": is_enabled,
                "last_run": None if last is None else {
                    "status": last.status, "started_at": last.started_at.isoformat(),
                    "run_id": last.id},
                "last_success": success.started_at.isoformat() if success else None,
                "overdue": is_enabled and since is not None and now - since > window,
                "overdue_after_seconds": int(window.total_seconds()),
            }
    return report
