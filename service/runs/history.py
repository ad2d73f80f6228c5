from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, delete, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from ..models import DeliveryToken, JobRun

# Written as a literal, so that a prepared statement's generic plan can use the partial indexes
# whose predicate is the status ('running' or not): a bound parameter would hide it.
RUNNING = literal_column("'running'", String)
PRUNE_BATCH = 500  # rows deleted per transaction


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
    query = select(JobRun).order_by(JobRun.started_at.desc())
    filters = [JobRun.job == job] if job else []
    filters += [JobRun.status == status] if status else []
    filters += [JobRun.trigger == trigger] if trigger else []
    filters += [JobRun.started_at >= since] if since is not None else []
    filters += [JobRun.started_at < until] if until is not None else []
    with sessions() as session:
        if filters:
            return [run.to_dict() for run in
                    session.scalars(query.where(*filters).limit(limit).offset(offset))]
        # Unfiltered: the newest runs that ended, through the partial index
        # ix_job_runs_ended_started, and the running ones (one per job at most, through
        # uq_job_runs_running_job); neither read grows with the history.
        runs = [*session.scalars(query.where(JobRun.status != RUNNING).limit(limit + offset)),
                *session.scalars(select(JobRun).where(JobRun.status == RUNNING))]
    runs.sort(key=lambda run: run.started_at, reverse=True)
    return [run.to_dict() for run in runs[offset:offset + limit]]


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
    pruned = _prune(engine, JobRun.id, JobRun.started_at, before, JobRun.status != RUNNING)
    # Tokens used this long ago have expired: they can no longer be replayed anyway.
    _prune(engine, DeliveryToken.token_id, DeliveryToken.used_at, before)
    return pruned


def _prune(engine: Engine, key: InstrumentedAttribute[str], age: InstrumentedAttribute[datetime],
           before: datetime, *where: ColumnElement[bool]) -> int:
    """Delete the rows older than `before`, oldest first, in short transactions; count them."""
    # Ordered and limited, a batch is read through the index on `age` and deleted by key,
    # whatever the plan's estimate of how many rows are old: one DELETE of them all was planned
    # (generically: `age < $1` is a third of the table) as a scan of the whole table.
    oldest = (select(key).where(age < before, *where).order_by(age)
              .limit(literal_column(str(PRUNE_BATCH))))
    pruned = 0
    while True:
        with engine.begin() as connection:
            keys = connection.execute(oldest).scalars().all()
            if keys:
                connection.execute(delete(key.class_).where(key.in_(keys)))
        pruned += len(keys)
        if len(keys) < PRUNE_BATCH:
            return pruned
