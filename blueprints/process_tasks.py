from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, delete, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute

from service.db import utcnow
from service.extensions import (
    get_engine,
    get_notifier,
    get_payout_provider,
    get_settings,
)
from service.jobs import Job, JobBlueprint, JobContext
from service.models import DeliveryToken, JobRun
from service.payouts import outbox
from service.payouts.transfers import PayoutPolicy, cancel_reversed_payments, recover_stale

PRUNE_BATCH = 500  # rows deleted per transaction


def process_tasks(ctx: JobContext) -> Mapping[str, Any]:
    """Run the daily maintenance: recover, check payments, retry notices, prune history."""
    settings = get_settings(ctx.app)
    engine = get_engine(ctx.app)
    provider = get_payout_provider(ctx.app)
    policy = PayoutPolicy.from_settings(settings)
    # Each provider-bound task gets a share of the budget so that one slow task cannot
    # starve the others; pruning is cheap and always runs.
    recovery = recover_stale(engine, provider, policy, deadline=_share(ctx, 0.25))
    payments = cancel_reversed_payments(engine, provider, policy, deadline=_share(ctx, 0.6))
    now = utcnow()
    released = outbox.release_stale(
        engine, claimed_before=now - timedelta(seconds=settings.payout_stale_after_seconds),
        now=now)
    notices = outbox.deliver_pending(
        engine, get_notifier(ctx.app), sender_id=ctx.run_id,
        limit=settings.notifier_max_per_run, deadline=ctx.deadline,
        max_attempts=settings.notifier_max_attempts,
    )
    run_cutoff = utcnow() - timedelta(days=settings.retention_job_runs_days)
    # The literal states the partial index's predicate (ix_job_runs_ended_started).
    pruned_runs = _prune(engine, JobRun.id, JobRun.started_at, run_cutoff,
                         JobRun.status != literal_column("'running'", String))
    # Tokens used this long ago have expired: they can no longer be replayed anyway.
    _prune(engine, DeliveryToken.token_id, DeliveryToken.used_at, run_cutoff)
    pruned_notices = outbox.prune_sent(
        engine, sent_before=utcnow() - timedelta(days=settings.retention_notifications_days))
    return {
        "recovered_completed": recovery.completed,
        "recovered_released": recovery.released,
        "recovery_errors": recovery.errors,
        "payments_checked": payments.checked,
        "cancelled_refunded": payments.cancelled_refunded,
        "cancelled_disputed": payments.cancelled_disputed,
        "payment_check_errors": payments.errors,
        "refunded_after_transfer": payments.refunded_after_transfer,
        "notifications_released": released,
        "notifications_delivered": notices.delivered,
        "notifications_retrying": notices.retrying,
        "notifications_failed": notices.failed,
        "pruned_job_runs": pruned_runs,
        "pruned_notifications": pruned_notices,
    }


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


def _share(ctx: JobContext, share: float) -> float:
    """Return the monotonic time by which `share` of the run's remaining budget is spent."""
    return time.monotonic() + max(ctx.time_left(), 0.0) * share


job = Job(
    name="process-tasks",
    cron="0 4 * * *",
    description="Daily maintenance and cleanup of the ledger and run history.",
    handler=process_tasks,
    retries=3,
    timeout=900,
)
bp = JobBlueprint(job, __name__)
