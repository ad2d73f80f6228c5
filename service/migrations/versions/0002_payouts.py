"""Experts, payment transfers (the payout records) and the notification outbox."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0002"
down_revision = "0001"


def _partial_index(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, sqlite_where=sa.text(where),
                    postgresql_where=sa.text(where))


def upgrade() -> None:
    op.create_table(
        "experts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("stripe_account_id", sa.String(255), nullable=True),
        sa.Column("payouts_enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "payment_transfers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("expert_id", sa.String(64), sa.ForeignKey("experts.id"), nullable=False),
        sa.Column("payment_id", sa.String(255), nullable=False),
        sa.Column("charge_id", sa.String(255), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("platform_fee", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("session_start_at", UTCDateTime(), nullable=False),
        sa.Column("session_end_at", UTCDateTime(), nullable=False),
        sa.Column("paid_at", UTCDateTime(), nullable=False),
        sa.Column("scheduled_transfer_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error_code", sa.String(64), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("provider_transfer_id", sa.String(255), nullable=True),
        sa.Column("transferred_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("notified_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("payment_id", name="uq_payment_transfers_payment_id"),
        sa.CheckConstraint("amount > 0 AND platform_fee >= 0",
                           name="ck_payment_transfers_money"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')",
            name="ck_payment_transfers_status",
        ),
    )
    _partial_index("ix_payment_transfers_pending_due", "payment_transfers",
                   ["scheduled_transfer_at", "id"], "status = 'PENDING'")
    _partial_index("ix_payment_transfers_pending_approved", "payment_transfers",
                   ["scheduled_transfer_at", "id"],
                   "status = 'PENDING' AND approved_at IS NOT NULL")
    _partial_index("ix_payment_transfers_processing", "payment_transfers", ["claimed_at"],
                   "status = 'PROCESSING'")
    op.create_index("ix_payment_transfers_expert_id", "payment_transfers", ["expert_id", "id"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("transfer_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error_code", sa.String(64), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("dedup_key", name="uq_notifications_dedup_key"),
        sa.CheckConstraint("status IN ('PENDING', 'SENDING', 'SENT', 'FAILED')",
                           name="ck_notifications_status"),
    )
    _partial_index("ix_notifications_pending", "notifications", ["next_attempt_at", "id"],
                   "status = 'PENDING'")
    _partial_index("ix_notifications_sending", "notifications", ["claimed_at"],
                   "status = 'SENDING'")
    _partial_index("ix_notifications_sent", "notifications", ["sent_at"], "status = 'SENT'")


def downgrade() -> None:
    for index in ("ix_notifications_sent", "ix_notifications_sending", "ix_notifications_pending"):
        op.drop_index(index, table_name="notifications")
    op.drop_table("notifications")
    for index in ("ix_payment_transfers_expert_id",
                  "ix_payment_transfers_processing", "ix_payment_transfers_pending_approved",
                  "ix_payment_transfers_pending_due"):
        op.drop_index(index, table_name="payment_transfers")
    op.drop_table("payment_transfers")
    op.drop_table("experts")
