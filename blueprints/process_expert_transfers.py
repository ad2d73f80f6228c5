from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.jobs import Job, JobBlueprint, JobContext


def process_expert_transfers(ctx: JobContext) -> Mapping[str, Any]:
    """Pay every due expert transfer."""
    # The transfer ledger arrives with the payouts migrations; until then nothing is due.
    return {"considered": 0, "paid": 0, "failed": 0, "retried": 0, "skipped": 0, "remaining": 0}


job = Job(
    name="process-expert-transfers",
    cron="0 */2 * * *",
    description="Pay experts their share of each session once it is due.",
    handler=process_expert_transfers,
    retries=3,
    timeout=900,
)
bp = JobBlueprint(job, __name__)
