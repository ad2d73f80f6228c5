from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Engine, bindparam, false, select, true, update

from service.db import rowcount

from . import outbox
from .models import Expert, PaymentTransfer
from .rules import PENDING
from .sql import after_key, is_

# A daily run notifies each row one to two days before it is due. The window starts at `now`,
# not a day later: a row that two runs' windows missed (a retried delivery starts later than the
# day before's) or that was registered less than a day before it is due is still notified, by
# the next run, as long as it is not due yet. notified_at keeps it to one notice.
WINDOW_END: Final = timedelta(days=2)
BATCH: Final = 200

_MARK = (
    update(PaymentTransfer)
    .where(PaymentTransfer.id == bindparam("tid"), is_(PaymentTransfer.status, PENDING),
           PaymentTransfer.notified_at.is_(None))
    .values(notified_at=bindparam("now"), updated_at=bindparam("now"))
)


@dataclass(kw_only=True)
class UpcomingReport:
    considered: int = 0
    queued: int = 0


def queue_upcoming_notices(engine: Engine, *, now: datetime, deadline: float) -> UpcomingReport:
    """Queue one upcoming-payout notice per pending transfer due within two days, not yet due.

    `notified_at` is set only in the transaction that adds the notice, and only if it was
    still unset, so a notice is never lost and never queued twice. Rows awaiting approval or
    whose expert cannot be paid are left out: they would not be paid on that date.
    """
    report = UpcomingReport()
    end = now + WINDOW_END
    after: tuple[datetime, int] | None = None
    while time.monotonic() < deadline:
        query = (
            select(PaymentTransfer.id, PaymentTransfer.scheduled_transfer_at,
                   PaymentTransfer.amount, PaymentTransfer.currency, Expert.email,
                   Expert.first_name)
            .join(Expert, Expert.id == PaymentTransfer.expert_id)
            .where(is_(PaymentTransfer.status, PENDING),
                   PaymentTransfer.scheduled_transfer_at > now,
                   PaymentTransfer.scheduled_transfer_at < end,
                   PaymentTransfer.notified_at.is_(None),
                   PaymentTransfer.requires_approval == false(), Expert.payouts_enabled == true(),
                   Expert.stripe_account_id.is_not(None))
            .order_by(PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)
            .limit(BATCH)
        )
        query = after_key(query, after, PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)
        with engine.begin() as connection:
            rows = connection.execute(query).all()
            for row in rows:
                report.considered += 1
                if rowcount(connection.execute(_MARK, {"tid": row.id, "now": now})) != 1:
                    continue
                report.queued += outbox.queue_notice(
                    connection, kind=outbox.UPCOMING_PAYOUT, transfer_id=row.id,
                    recipient=row.email, now=now, payload={
                        "first_name": row.first_name, "amount": row.amount,
                        "currency": row.currency,
                        "scheduled_date": row.scheduled_transfer_at.date().isoformat()})
        if len(rows) < BATCH:
            break
        after = (rows[-1].scheduled_transfer_at, rows[-1].id)
    return report
