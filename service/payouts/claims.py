from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Update,
    and_,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
    true,
    update,
)

from service.db import rowcount

from .models import Expert, PaymentTransfer
from .rules import PENDING, PROCESSING
from .sql import AnyRow, AnySelect, after_key, claim_by_ids, is_, is_postgresql

log = logging.getLogger("eleva.payouts")


@dataclass(frozen=True, kw_only=True)
class Claimed:
    """A row this run holds in PROCESSING, with what the call and the notice need."""

    id: int
    expert_id: str
    payment_id: str
    charge_id: str | None
    amount: int
    currency: str
    attempts: int
    claimed_before: bool
    # None: registered before migration 0006 (see rules.legacy_idempotency_key).
    idempotency_key: str | None
    destination: str
    email: str
    first_name: str


def payable() -> Any:
    """Return the condition that an expert can be paid: payouts enabled, an account."""
    return and_(Expert.payouts_enabled == true(), Expert.stripe_account_id.is_not(None))


def ready(now: datetime) -> Any:
    """Return the condition that a row is not waiting for its next attempt."""
    return or_(PaymentTransfer.next_attempt_at.is_(None), PaymentTransfer.next_attempt_at <= now)


def claim_query(phase: str, now: datetime, after: tuple[datetime, int] | None,
                size: int) -> AnySelect:
    """Select the next `size` payable rows of `phase` ("approved" or "due") after `after`."""
    query = (
        select(PaymentTransfer.id, PaymentTransfer.scheduled_transfer_at,
               PaymentTransfer.expert_id, PaymentTransfer.payment_id, PaymentTransfer.charge_id,
               PaymentTransfer.amount, PaymentTransfer.currency, PaymentTransfer.attempts,
               PaymentTransfer.claimed_at, PaymentTransfer.idempotency_key,
               Expert.stripe_account_id, Expert.email, Expert.first_name)
        .join(Expert, Expert.id == PaymentTransfer.expert_id)
        .where(is_(PaymentTransfer.status, PENDING), ready(now), payable())
        .order_by(PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)
        .limit(size)
    )
    if phase == "approved":
        # Approval makes a row eligible whatever its date (ix_payment_transfers_pending_approved).
        query = query.where(PaymentTransfer.approved_at.is_not(None))
    else:
        # Due by date and not waiting for approval (ix_payment_transfers_pending_due).
        query = query.where(PaymentTransfer.scheduled_transfer_at <= now,
                            PaymentTransfer.requires_approval == false())
    return after_key(query, after, PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)


_CLAIM = claim_by_ids(PaymentTransfer, waiting=PENDING, claimed=PROCESSING)


def update_held() -> Update:
    """Start an UPDATE of row `tid` only while run `run` holds it in PROCESSING."""
    return (
        update(PaymentTransfer)
        .where(PaymentTransfer.id == bindparam("tid"), is_(PaymentTransfer.status, PROCESSING),
               PaymentTransfer.claimed_by == bindparam("run"))
    )


@dataclass(kw_only=True)
class ClaimCursor:
    """Where the claim scan is: approved rows first, then rows due by date, in key order."""

    phase: Literal["approved", "due", "done"] = "approved"
    after: tuple[datetime, int] | None = None

    def advance(self, last: tuple[datetime, int] | None, full: bool) -> None:
        if full and last is not None:
            self.after = last
            return
        self.phase = "due" if self.phase == "approved" else "done"
        self.after = None


def claim_batch(
    engine: Engine, *, run_id: str, size: int, now: datetime, cursor: ClaimCursor | None = None
) -> list[Claimed]:
    """Atomically move up to `size` due rows from PENDING to PROCESSING for `run_id`.

    PostgreSQL locks the selected rows with FOR UPDATE SKIP LOCKED, so concurrent claims pass
    over each other's rows; SQLite's BEGIN IMMEDIATE makes the select and the update one
    serialised step. The update still names the expected status, whatever the database.
    """
    cursor = cursor or ClaimCursor()
    while cursor.phase != "done":
        with engine.begin() as connection:
            query = claim_query(cursor.phase, now, cursor.after, size)
            if is_postgresql(connection):
                query = query.with_for_update(skip_locked=True, of=PaymentTransfer)
            rows = connection.execute(query).all()
            claimed = _mark_claimed(connection, rows, run_id=run_id, now=now)
        last = (rows[-1].scheduled_transfer_at, rows[-1].id) if rows else None
        cursor.advance(last, full=len(rows) == size)
        if claimed:
            return claimed
    return []


def _mark_claimed(
    connection: Connection, rows: Sequence[AnyRow], *, run_id: str, now: datetime
) -> list[Claimed]:
    if not rows:
        return []
    ids = [row.id for row in rows]
    taken = rowcount(connection.execute(_CLAIM, {"ids": ids, "run": run_id, "now": now}))
    if taken != len(ids):
        # Cannot happen under the locks above; if it ever does, only the rows this run
        # actually holds may be paid.
        held = set(connection.execute(
            select(PaymentTransfer.id).where(PaymentTransfer.id.in_(ids),
                                             is_(PaymentTransfer.status, PROCESSING),
                                             PaymentTransfer.claimed_by == run_id)
        ).scalars())
        log.warning("claimed %d of %d selected transfers", len(held), len(ids))
        rows = [row for row in rows if row.id in held]
    return [
        Claimed(id=row.id, expert_id=row.expert_id, payment_id=row.payment_id,
                charge_id=row.charge_id, amount=row.amount, currency=row.currency,
                attempts=row.attempts, claimed_before=row.claimed_at is not None,
                idempotency_key=row.idempotency_key,
                destination=row.stripe_account_id, email=row.email, first_name=row.first_name)
        for row in rows
    ]


def count_due(engine: Engine, *, now: datetime) -> tuple[int, int]:
    """Count due pending rows: (payable now, blocked because the expert cannot be paid)."""
    eligible = and_(
        is_(PaymentTransfer.status, PENDING), ready(now),
        or_(and_(PaymentTransfer.scheduled_transfer_at <= now,
                 PaymentTransfer.requires_approval == false()),
            PaymentTransfer.approved_at.is_not(None)),
    )
    can_pay = payable()
    query = (
        select(func.coalesce(func.sum(case((can_pay, 1), else_=0)), 0),
               func.coalesce(func.sum(case((can_pay, 0), else_=1)), 0))
        .select_from(PaymentTransfer)
        .join(Expert, Expert.id == PaymentTransfer.expert_id)
        .where(eligible)
    )
    with engine.connect() as connection:
        due_now, blocked = connection.execute(query).one()
    return int(due_now), int(blocked)
