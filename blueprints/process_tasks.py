from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from service.db import rowcount, utcnow
from service.extensions import get_sessions
from service.jobs import Job, JobBlueprint, JobContext
from service.models import JobRun

RUN_RETENTION = timedelta(days=30)


def process_tasks(ctx: JobContext) -> Mapping[str, Any]:
    """Run the daily maintenance: prune finished job runs past their retention."""
    cutoff = utcnow() - RUN_RETENTION
    with get_sessions(ctx.app).begin() as session:
        pruned = rowcount(session.execute(
            delete(JobRun).where(JobRun.status != "running", JobRun.started_at < cutoff)
        ))
    return {"pruned_job_runs": pruned}


job = Job(
    name="process-tasks",
    cron="0 4 * * *",
    description="Daily maintenance and cleanup of the ledger and run history.",
    handler=process_tasks,
    retries=3,
    timeout=900,
)
bp = JobBlueprint(job, __name__)
