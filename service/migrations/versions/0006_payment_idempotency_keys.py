"""Store each transfer's provider idempotency key, keyed on its payment for new rows.

The key was `<APP_ENV>:transfer:<row id>`: two databases that reuse row ids against one Stripe
account (a development reset, a staging rebuild, a restore) sent one key for two payments, and
Stripe refused the second for good. New rows store `<APP_ENV>:payment:<payment id>` at
registration. Existing rows keep NULL, which means the row key they may already have a
transfer under: a transfer's key never changes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("payment_transfers",
                  sa.Column("idempotency_key", sa.String(255), nullable=True))


def downgrade() -> None:
    # Rows sent under their payment's key would go back to the row key; the code before 0006
    # still looks a claimed row's transfer up (by metadata) before paying it again.
    op.drop_column("payment_transfers", "idempotency_key")  # SQLite 3.35+ drops in place
