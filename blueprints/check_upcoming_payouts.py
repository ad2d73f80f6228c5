from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.db import utcnow
from service.extensions import get_engine, get_notifier, get_settings
from service.jobs import Job, JobBlueprint, JobContext
from service.payouts.outbox import deliver_pending
from service.payouts.upcoming import queue_upcoming_notices


def check_upcoming_payouts(ctx: JobContext) -> Mapping[str, Any]:
    """Queue an upcoming-payout notice for transfers due within two days, not yet due."""
    settings = get_settings(ctx.app)
    engine = get_engine(ctx.app)
    report = queue_upcoming_notices(engine, now=utcnow(), deadline=ctx.deadline)
    notices = deliver_pending(
        engine, get_notifier(ctx.app), sender_id=ctx.run_id,
        limit=settings.notifier_max_per_run, deadline=ctx.deadline,
        max_attempts=settings.notifier_max_attempts,
    )
    return {"considered": report.considered, "queued": report.queued,
            "delivered": notices.delivered, "delivery_retrying": notices.retrying,
            "delivery_failed": notices.failed}


job = Job(
    name="check-upcoming-payouts",
    cron="0 12 * * *",
    description="Tell experts about payouts due in the next two days.",
    handler=check_upcoming_payouts,
    retries=3,
    timeout=300,
)
bp = JobBlueprint(job, __name__)
