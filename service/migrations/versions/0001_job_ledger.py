"""Job runs (the run record) and job leases."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.String(128), nullable=True),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("message_id", name="uq_job_runs_message_id"),
    )
    op.create_index("ix_job_runs_job_started", "job_runs", ["job", "started_at"])
    op.create_index("ix_job_runs_status", "job_runs", ["status"])
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=True),
        sa.Column("acquired_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_index("ix_job_runs_status", table_name="job_runs")
    op.drop_index("ix_job_runs_job_started", table_name="job_runs")
    op.drop_table("job_runs")
