from __future__ import annotations

from service.extensions import get_engine, get_notifier, get_settings
from service.payouts.outbox import DeliveryReport, deliver_pending
from service.runs.jobs import JobContext


def send_queued_notices(ctx: JobContext) -> DeliveryReport:
    """Send the due notices (those this run queued among them) within the run's budget."""
    settings = get_settings()
    return deliver_pending(
        get_engine(), get_notifier(), sender_id=ctx.run_id,
        limit=settings.notifier_max_per_run, deadline=ctx.deadline,
        max_attempts=settings.notifier_max_attempts,
    )
