from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.extensions import get_engine, get_notifier, get_payout_provider, get_settings
from service.jobs import Job, JobBlueprint, JobContext
from service.payouts.continuation import publish_continuation
from service.payouts.outbox import deliver_pending
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy


def process_expert_transfers(ctx: JobContext) -> Mapping[str, Any]:
    """Pay every due expert transfer, then send the notices it queued."""
    settings = get_settings(ctx.app)
    engine = get_engine(ctx.app)
    report = process_due_transfers(
        engine, get_payout_provider(ctx.app), PayoutPolicy.from_settings(settings),
        run_id=ctx.run_id, deadline=ctx.deadline,
    )
    notices = deliver_pending(
        engine, get_notifier(ctx.app), sender_id=ctx.run_id,
        limit=settings.notifier_max_per_run, deadline=ctx.deadline,
        max_attempts=settings.notifier_max_attempts,
    )
    # Published last: the next run cannot start before this one releases the job lease.
    continuation = (publish_continuation(ctx).status
                    if report.stopped_early and report.remaining > 0 else "not_needed")
    return {**report.to_dict(), "continuation": continuation,
            "notifications": notices.to_dict()}


job = Job(
    name="process-expert-transfers",
    cron="0 */2 * * *",
    description="Pay experts their share of each session once it is due.",
    handler=process_expert_transfers,
    retries=3,
    timeout=900,
    # A continuation may arrive before this run has released the lease: answer 503 so that
    # QStash delivers it again shortly instead of dropping it as skipped.
    overlap="retry",
)
bp = JobBlueprint(job, __name__)
