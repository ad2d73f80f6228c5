from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.extensions import get_engine, get_payout_provider, get_settings, services
from service.payouts.continuation import publish_continuation
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy
from service.qstash.delivery import JobBlueprint
from service.runs.jobs import Job, JobContext

from .notices import send_queued_notices


def process_expert_transfers(ctx: JobContext) -> Mapping[str, Any]:
    """Pay every due expert transfer, then send the notices it queued."""
    settings = get_settings()
    report = process_due_transfers(
        get_engine(), get_payout_provider(), PayoutPolicy.from_settings(settings),
        run_id=ctx.run_id, deadline=ctx.deadline,
    )
    notices = send_queued_notices(ctx)
    # Published last: the next run cannot start before this one releases the job lease.
    continuation = (
        publish_continuation(services().qstash, app_url=settings.app_url, job=ctx.job,
                             run_id=ctx.run_id).status
        if report.stopped_early and report.remaining > 0 else "not_needed"
    )
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
