from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, utcnow

# Partial-index predicates. Queries repeat them as literal SQL (see sql.is_): SQLite
# and PostgreSQL generic plans only use a partial index when the query states the same constant.
PENDING_ONLY: Final = "status = 'PENDING'"
PENDING_APPROVED: Final = "status = 'PENDING' AND approved_at IS NOT NULL"
PROCESSING_ONLY: Final = "status = 'PROCESSING'"
SENDING_ONLY: Final = "status = 'SENDING'"
SENT_ONLY: Final = "status = 'SENT'"

NOTICE_STATUSES: Final = ("PENDING", "SENDING", "SENT", "FAILED")


def _partial(name: str, *columns: str, where: str) -> Index:
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


class Expert(Base):
    """An expert who is paid through a Stripe Connect account."""

    __tablename__ = "experts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    first_name: Mapped[str] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(2))
    stripe_account_id: Mapped[str | None] = mapped_column(String(255))
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return self.json_fields("id", "email", "first_name", "country", "stripe_account_id",
                                "payouts_enabled", "created_at", "updated_at")


class PaymentTransfer(Base):
    """One paid session's expert share, from registration until it is paid or abandoned."""

    __tablename__ = "payment_transfers"
    __table_args__ = (
        UniqueConstraint("payment_id", name="uq_payment_transfers_payment_id"),
        CheckConstraint("amount > 0 AND platform_fee >= 0", name="ck_payment_transfers_money"),
        CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')",
            name="ck_payment_transfers_status",
        ),
        # Due selection, upcoming notices and payment checks walk pending rows by due date.
        _partial("ix_payment_transfers_pending_due", "scheduled_transfer_at", "id",
                 where=PENDING_ONLY),
        # Approved rows are eligible whatever their date: a small index of their own.
        _partial("ix_payment_transfers_pending_approved", "scheduled_transfer_at", "id",
                 where=PENDING_APPROVED),
        # Recovery of rows left in PROCESSING by a run that died.
        _partial("ix_payment_transfers_processing", "claimed_at", where=PROCESSING_ONLY),
        Index("ix_payment_transfers_expert_id", "expert_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    expert_id: Mapped[str] = mapped_column(String(64), ForeignKey("experts.id"))
    payment_id: Mapped[str] = mapped_column(String(255))
    charge_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger)
    platform_fee: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    session_start_at: Mapped[datetime]
    session_end_at: Mapped[datetime]
    paid_at: Mapped[datetime]
    scheduled_transfer_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    provider_transfer_id: Mapped[str | None] = mapped_column(String(255))
    # Set at registration (rules.payment_idempotency_key); None on rows registered before
    # migration 0006, which keep rules.legacy_idempotency_key.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    transferred_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime | None]
    notified_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def price(self) -> int:
        return self.amount + self.platform_fee

    def to_dict(self) -> dict[str, Any]:
        return self.json_fields("id", "expert_id", "payment_id", "charge_id", "price", "amount",
                                "platform_fee", "currency", "session_start_at", "session_end_at",
                                "paid_at", "scheduled_transfer_at", "status", "requires_approval",
                                "approved_by", "approved_at", "attempts", "next_attempt_at",
                                "last_error_code", "last_error_message", "provider_transfer_id",
                                "transferred_at", "claimed_by", "claimed_at", "notified_at",
                                "created_at", "updated_at")


class Notification(Base):
    """The notification outbox: written with the state change that causes it, sent afterwards."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("dedup_key", name="uq_notifications_dedup_key"),
        CheckConstraint("status IN ('PENDING', 'SENDING', 'SENT', 'FAILED')",
                        name="ck_notifications_status"),
        _partial("ix_notifications_pending", "next_attempt_at", "id", where="status = 'PENDING'"),
        _partial("ix_notifications_sending", "claimed_at", where=SENDING_ONLY),
        _partial("ix_notifications_sent", "sent_at", where=SENT_ONLY),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(254))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    transfer_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Describe the item for operators, without the recipient or the payload."""
        return self.json_fields("id", "dedup_key", "kind", "transfer_id", "status", "attempts",
                                "next_attempt_at", "last_error_code", "sent_at", "created_at")
