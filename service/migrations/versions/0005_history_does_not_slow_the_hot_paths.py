"""History does not slow the hot paths: indexes for the health report, run history and pruning.

The health report's last success per job, the run history API's filters and the pruning of runs
and delivery tokens by age each read rows through an index in the order they need, so their cost
does not grow with the number of runs and tokens the tables hold.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

ENDED = "status <> 'running'"
INDEXES = (
    ("ix_job_runs_job_status_started", "job_runs", ["job", "status", "started_at"], None),
    ("ix_job_runs_status_started", "job_runs", ["status", "started_at"], None),
    ("ix_job_runs_ended_started", "job_runs", ["started_at"], ENDED),
    ("ix_delivery_tokens_used_at", "delivery_tokens", ["used_at"], None),
)


def upgrade() -> None:
    for name, table, columns, where in INDEXES:
        predicate = None if where is None else sa.text(where)
        op.create_index(name, table, columns, sqlite_where=predicate,
                        postgresql_where=predicate)


def downgrade() -> None:
    for name, table, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
