from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from ..db import rowcount
from ..models import DeliveryToken, JobRun


def run_history(
    sessions: sessionmaker[Session],
    *,
    job: str | None = None,
    status: str | None = None,
    limit: int = 50,
    trigger: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Return the most recent runs, newest first, filtered by job, status, trigger and time."""
    query = (select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id)
             .limit(limit).offset(offset))
    if job:
        query = query.where(JobRun.job == job)
    if status:
        query = query.where(JobRun.status == status)
    if trigger:
        query = query.where(JobRun.trigger == trigger)
    if since is not None:
        query = query.where(JobRun.started_at >= since)
    if until is not None:
        query = query.where(JobRun.started_at < until)
    with sessions() as session:
        return [run.to_dict() for run in session.scalars(query)]


def find_run(sessions: sessionmaker[Session], *, run_id: str | None = None,
             message_id: str | None = None) -> dict[str, Any] | None:
    """Return one run by its id or by the QStash message that started it, or None."""
    if run_id is None and message_id is None:
        return None
    query = select(JobRun).where(JobRun.id == run_id if run_id is not None
                                 else JobRun.message_id == message_id)
    with sessions() as session:
        run = session.scalars(query).first()
        return None if run is None else run.to_dict()


def prune_runs(engine: Engine, *, before: datetime) -> int:
    """Delete finished runs started before a time, and tokens used before it; count the runs."""
    with engine.begin() as conn:
        pruned = rowcount(conn.execute(
            delete(JobRun).where(JobRun.status != "running", JobRun.started_at < before)
        ))
        # Tokens used this long ago have expired: they can no longer be replayed anyway.
        conn.execute(delete(DeliveryToken).where(DeliveryToken.used_at < before))
    return pruned
