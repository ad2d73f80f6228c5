from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from service.db import utcnow
from service.extensions import get_engine, get_payout_provider, get_settings
from service.payouts import outbox
from service.payouts.maintenance import cancel_reversed_payments, recover_stale
from service.payouts.policy import PayoutPolicy
from service.qstash.delivery import JobBlueprint
from service.runs.history import prune_runs
from service.runs.jobs import Job, JobContext

from .notices import send_queued_notices


def process_tasks(ctx: JobContext) -> Mapping[str, Any]:
    """Run the daily maintenance: recover, check payments, retry notices, prune history."""
    settings = get_settings()
    engine = get_engine()
    provider = get_payout_provider()
    policy = PayoutPolicy.from_settings(settings)
    # Each provider-bound task gets a share of the budget so that one slow task cannot
    # starve the others; pruning is cheap and always runs.
    recovery = recover_stale(engine, provider, policy, deadline=_share(ctx, 0.25))
    payments = cancel_reversed_payments(engine, provider, policy, deadline=_share(ctx, 0.6))
    now = utcnow()
    released = outbox.release_stale(
        engine, claimed_before=now - timedelta(seconds=settings.payout_stale_after_seconds),
        now=now)
    notices = send_queued_notices(ctx)
    pruned_runs = prune_runs(
        engine, before=utcnow() - timedelta(days=settings.retention_job_runs_days))
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




def _share(ctx: JobContext, share: float) -> float:
    """Return the monotonic time by which `share` of the run's remaining budget is spent."""
    return time.monotonic() + max(ctx.time_left(), 0.0) * share


job = Job(
    name="process-tasks",
    cron="0 4 * * *",
    description="Daily payouts maintenance and cleanup of the run history.",
    handler=process_tasks,
    retries=3,
    timeout=900,
)
bp = JobBlueprint(job, __name__)
