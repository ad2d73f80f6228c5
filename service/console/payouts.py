from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ..notifications.render import format_money
from ..payouts.models import Notification, PaymentTransfer
from ..payouts.rules import FAILED, PENDING, TRANSFER_STATUSES
from ..payouts.sql import is_

# Rows listed per kind of trouble; the counts say how many there are in all.
SHOWN_PER_KIND = 50


@dataclass(frozen=True, kw_only=True)
class Total:
    status: str
    currency: str
    count: int
    amount: str  # formatted


@dataclass(frozen=True, kw_only=True)
class Attention:
    """A transfer a person has to look at: why, and what to do about it."""

    kind: str  # approval | failed | unknown_outcome
    transfer: dict[str, Any]
    reason: str
    next_step: str


def totals(sessions: sessionmaker[Session]) -> list[Total]:
    """Count transfers and add up their amounts by status and currency."""
    query = (select(PaymentTransfer.status, PaymentTransfer.currency, func.count(),
                    func.sum(PaymentTransfer.amount))
             .group_by(PaymentTransfer.status, PaymentTransfer.currency))
    with sessions() as session:
        rows = session.execute(query).all()
    order: dict[str, int] = {status: i for i, status in enumerate(TRANSFER_STATUSES)}
    return [Total(status=status, currency=currency.upper(), count=count,
                  amount=format_money(int(amount or 0), currency))
            for status, currency, count, amount in sorted(
                rows, key=lambda r: (order.get(r[0], 99), r[1]))]


def needing_attention(sessions: sessionmaker[Session], *, max_attempts: int
                      ) -> tuple[list[Attention], dict[str, int]]:
    """Return the transfers that need a person, and how many there are of each kind."""
    kinds = {
        "approval": (is_(PaymentTransfer.status, PENDING)
                     & PaymentTransfer.requires_approval.is_(True)
                     & PaymentTransfer.approved_at.is_(None)),
        "failed": is_(PaymentTransfer.status, FAILED),
        # Attempts used up but still PENDING: the provider could not say whether the transfer
        # exists, so the row is neither failed nor paid (payrun.record).
        "unknown_outcome": (is_(PaymentTransfer.status, PENDING)
                            & (PaymentTransfer.attempts >= max_attempts)),
    }
    found: list[Attention] = []
    counts: dict[str, int] = {}
    with sessions() as session:
        for kind, condition in kinds.items():
            counts[kind] = int(session.scalar(select(func.count()).where(condition)) or 0)
            newest_first = (select(PaymentTransfer).where(condition)
                            .order_by(PaymentTransfer.id.desc()).limit(SHOWN_PER_KIND))
            for row in session.scalars(newest_first):
                found.append(_explain(kind, row.to_dict(), max_attempts=max_attempts))
    return found, counts


def _explain(kind: str, transfer: dict[str, Any], *, max_attempts: int) -> Attention:
    error = transfer["last_error_code"] or "no error recorded"
    if kind == "approval":
        return Attention(kind=kind, transfer=transfer,
                         reason="flagged to require approval; never paid automatically",
                         next_step="approve it (naming who approves); the next transfer run "
                                   "pays it whatever its date")
    if kind == "failed":
        return Attention(kind=kind, transfer=transfer,
                         reason=f"failed for good after {transfer['attempts']} attempt(s): "
                                f"{error}",
                         next_step="check the expert's Stripe account, then pay by hand or "
                                   "register the payment again; the expert was told it failed")
    return Attention(kind=kind, transfer=transfer,
                     reason=f"{transfer['attempts']} of {max_attempts} attempts used, but the "
                            f"provider could not say whether the transfer was made ({error})",
                     next_step="look the transfer up in the Stripe dashboard (its transfer "
                               "group and metadata name this row); it stays pending until "
                               "the provider answers")


def history(sessions: sessionmaker[Session], transfer: dict[str, Any]
            ) -> list[tuple[str, str]]:
    """Return what happened to a transfer, oldest first: (ISO time, what) pairs."""
    events: list[tuple[str, str]] = []

    def add(moment: str | None, what: str) -> None:
        if moment:
            events.append((moment, what))

    add(transfer["paid_at"], "the customer's payment succeeded")
    add(transfer["created_at"], "registered")
    add(transfer["notified_at"], "the expert was told of the upcoming payout")
    add(transfer["approved_at"], f"approved by {transfer['approved_by']}")
    add(transfer["claimed_at"], "claimed by a transfer run (latest claim)")
    add(transfer["transferred_at"],
        f"paid: provider transfer {transfer['provider_transfer_id']}")
    if transfer["status"] in ("FAILED", "CANCELLED") or transfer["last_error_code"]:
        add(transfer["updated_at"], f"{transfer['status']}: last error "
                                    f"{transfer['last_error_code'] or '-'}")
    with sessions() as session:
        for notice in session.scalars(select(Notification)
                                      .where(Notification.transfer_id == transfer["id"])
                                      .order_by(Notification.id)):
            item = notice.to_dict()
            add(item["created_at"], f"notice {item['kind']} queued")
            add(item["sent_at"], f"notice {item['kind']} sent")
            if item["status"] == "FAILED":
                add(item["next_attempt_at"], f"notice {item['kind']} failed for good "
                                             f"({item['last_error_code'] or '-'})")
    return sorted(events, key=lambda e: _sort_key(e[0]))


def _sort_key(moment: str) -> datetime:
    return datetime.fromisoformat(moment)
