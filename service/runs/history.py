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
) -> list[dict[str, Any]]:
    """Return the most recent runs, newest first, optionally filtered by job and status."""
    query = select(JobRun).order_by(JobRun.started_at.desc()).limit(limit)
    if job:
        query = query.where(JobRun.job == job)
    if status:
        query = query.where(JobRun.status == status)
    with sessions() as session:
        return [run.to_dict() for run in session.scalars(query)]


def prune_runs(engine: Engine, *, before: datetime) -> int:
    """Delete finished runs started before a time, and tokens used before it; count the runs."""
    with engine.begin() as conn:
        pruned = rowcount(conn.execute(
            delete(JobRun).where(JobRun.status != "running", JobRun.started_at < before)
        ))
        # Tokens used this long ago have expired: they can no longer be replayed anyway.
        conn.execute(delete(DeliveryToken).where(DeliveryToken.used_at < before))
    return pruned
