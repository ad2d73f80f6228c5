from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.db import utcnow
from service.extensions import get_engine
from service.payouts.upcoming import queue_upcoming_notices
from service.qstash.delivery import JobBlueprint
from service.runs.jobs import Job, JobContext

from .notices import send_queued_notices


def check_upcoming_payouts(ctx: JobContext) -> Mapping[str, Any]:
    """Queue an upcoming-payout notice for transfers due within two days, not yet due."""
    report = queue_upcoming_notices(get_engine(), now=utcnow(), deadline=ctx.deadline)
    notices = send_queued_notices(ctx)
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
