from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base, utcnow

RUN_STATUSES = ("running", "succeeded", "failed", "skipped")
TRIGGERS = ("qstash", "admin", "cli")


class JobRun(Base):
    """One attempt to run a job: the run record that makes deliveries exactly-once."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("message_id", name="uq_job_runs_message_id"),
        Index("ix_job_runs_job_started", "job", "started_at"),
        # The health report's last success and the run history's filters walk these newest
        # first, whatever the history's size.
        Index("ix_job_runs_job_status_started", "job", "status", "started_at"),
        Index("ix_job_runs_status_started", "status", "started_at"),
        # Runs that ended, by start: the unfiltered run history (newest first) and pruning
        # (oldest first). Partial, so that no plan can walk it in place of the indexes above
        # to find one job's or one status's runs among all of them.
        Index("ix_job_runs_ended_started", "started_at",
              sqlite_where=text("status <> 'running'"),
              postgresql_where=text("status <> 'running'")),
        # The overlap guard: at most one running run per job, across processes and hosts. A run
        # holds its job until it records an outcome or, if its worker dies, until expires_at.
        Index("uq_job_runs_running_job", "job", unique=True,
              sqlite_where=text("status = 'running'"),
              postgresql_where=text("status = 'running'")),
        # A signed request is acted on once: replaying it under another message id (the
        # message id header is not signed) is refused. Other tokens used: DeliveryToken.
        Index("uq_job_runs_token_id", "token_id", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # NULL for runs not caused by a QStash message; NULLs never collide in a unique index.
    message_id: Mapped[str | None] = mapped_column(String(128))
    job: Mapped[str] = mapped_column(String(64))
    schedule_id: Mapped[str | None] = mapped_column(String(128))
    retried: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]  # while running: when the run's lease on its job ends
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The `jti` of the signed request that started the run's first attempt.
    token_id: Mapped[str | None] = mapped_column(String(128))

    def to_dict(self) -> dict[str, Any]:
        return self.json_fields("id", "job", "message_id", "schedule_id", "retried", "attempts",
                                "trigger", "status", "started_at", "finished_at", "duration_ms",
                                "result", "error")


class DeliveryToken(Base):
    """The `jti` of a signed request acted on for a run it did not start.

    A later attempt (a QStash retry), or a delivery answered with the stored outcome or as
    still running: either way the token may not start another run.
    """

    __tablename__ = "delivery_tokens"
    # Pruning deletes tokens by age.
    __table_args__ = (Index("ix_delivery_tokens_used_at", "used_at"),)

    token_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


# The payouts tables live with their domain; importing them here registers them on Base.metadata
# for Alembic and for anything that imports the models.
from .payouts.models import Expert, Notification, PaymentTransfer  # noqa: E402

__all__ = [
    "RUN_STATUSES", "TRIGGERS", "DeliveryToken", "Expert", "JobRun", "Notification",
    "PaymentTransfer",
]
