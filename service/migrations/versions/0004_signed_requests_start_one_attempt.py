"""A signed request starts at most one attempt: record each delivery's token id (`jti`).

QStash signs the URL and the body, not the Upstash-Message-Id header that de-duplicates
deliveries. Recording the token that started each attempt lets the run record refuse a captured
request replayed under another message id.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("job_runs", sa.Column("token_id", sa.String(128), nullable=True))
    op.create_index("uq_job_runs_token_id", "job_runs", ["token_id"], unique=True)
    op.create_table(
        "delivery_tokens",
        sa.Column("token_id", sa.String(128), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("delivery_tokens")
    op.drop_index("uq_job_runs_token_id", table_name="job_runs")
    op.drop_column("job_runs", "token_id")  # SQLite 3.35+ drops a column in place
