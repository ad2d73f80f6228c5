"""A job's running run is its lease: one unique partial index replaces job_leases.

A delivery now claims its message and its job in one INSERT: the index admits at most one
running run per job. Runs left running without holding their job's lease (their worker died)
are ended as failed first, as the next delivery would have done.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db import UTCDateTime, utcnow

revision = "0003"
down_revision = "0002"

RUNNING = "status = 'running'"
EXPIRED = "expired: no outcome was recorded before the run's lease ended; a later run took over"


def _instants(statement: str) -> sa.TextClause:
    return sa.text(statement).bindparams(sa.bindparam("now", type_=UTCDateTime()))


def upgrade() -> None:
    op.get_bind().execute(
        _instants(
            "UPDATE job_runs SET status = 'failed', error = :error, finished_at = :now"
            " WHERE status = 'running' AND id NOT IN (SELECT holder FROM job_leases"
            " WHERE holder IS NOT NULL AND expires_at > :now)"
        ),
        {"error": EXPIRED, "now": utcnow()},
    )
    op.drop_index("ix_job_runs_status", table_name="job_runs")
    op.create_index("uq_job_runs_running_job", "job_runs", ["job"], unique=True,
                    sqlite_where=sa.text(RUNNING), postgresql_where=sa.text(RUNNING))
    op.drop_table("job_leases")


def downgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=True),
        sa.Column("acquired_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
    )
    op.get_bind().execute(sa.text(
        "INSERT INTO job_leases (job, holder, acquired_at, expires_at)"
        " SELECT job, id, started_at, expires_at FROM job_runs WHERE status = 'running'"
    ))
    op.drop_index("uq_job_runs_running_job", table_name="job_runs")
    op.create_index("ix_job_runs_status", "job_runs", ["status"])
