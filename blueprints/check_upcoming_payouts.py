from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.jobs import Job, JobBlueprint, JobContext


def check_upcoming_payouts(ctx: JobContext) -> Mapping[str, Any]:
    """Queue an upcoming-payout notice for transfers due in the next one to two days."""
    # The transfer ledger arrives with the payouts migrations; until then nothing is upcoming.
    return {"considered": 0, "queued": 0}


job = Job(
    name="check-upcoming-payouts",
    cron="0 12 * * *",
    description="Tell experts about payouts due in the next one to two days.",
    handler=check_upcoming_payouts,
    retries=3,
    timeout=300,
)
bp = JobBlueprint(job, __name__)
