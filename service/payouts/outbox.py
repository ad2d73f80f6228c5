from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update

from service import metrics
from service.db import rowcount, utcnow
from service.notifications import Channel, DeliveryError, Notice

from .models import Notification
from .pool import WorkerPool
from .sql import claim_by_ids, insert_ignoring_conflicts, is_, is_postgresql

log = logging.getLogger("eleva.payouts.outbox")

PENDING: Final = "PENDING"
SENDING: Final = "SENDING"
SENT: Final = "SENT"
FAILED: Final = "FAILED"

UPCOMING_PAYOUT: Final = "upcoming_payout"
PAYOUT_SENT: Final = "payout_sent"
PAYOUT_FAILED: Final = "payout_failed"

# Several connections to one SMTP server at a time is the most a mail server takes kindly.
SEND_CONCURRENCY: Final = 4
RETRY_BACKOFF: Final = timedelta(minutes=1)
MAX_ERROR_LENGTH: Final = 500


def dedup_key(kind: str, transfer_id: int) -> str:
    return f"{kind}:{transfer_id}"


def queue_notice(
    connection: Connection,
    *,
    kind: str,
    transfer_id: int,
    recipient: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Add a notice to the outbox inside the caller's transaction; False if already queued."""
    return insert_ignoring_conflicts(connection, Notification.__table__, {
        "dedup_key": dedup_key(kind, transfer_id),
        "kind": kind,
        "recipient": recipient,
        "payload": dict(payload),
        "transfer_id": transfer_id,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    })


@dataclass(kw_only=True)
class DeliveryReport:
    """What one pass of the sender did."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lost: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed + self.lost

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}


@dataclass(frozen=True, kw_only=True)
class _Claimed:
    id: int
    attempts: int
    notice: Notice


_CLAIM = claim_by_ids(Notification, waiting=PENDING, claimed=SENDING)
_SENT = (
    update(Notification)
    .where(Notification.id == bindparam("nid"), is_(Notification.status, SENDING),
           Notification.claimed_by == bindparam("run"))
    .values(status=SENT, sent_at=bindparam("now"), attempts=Notification.attempts + 1,
            last_error_code=None, last_error_message=None, updated_at=bindparam("now"))
)
_UNSENT = (
    update(Notification)
    .where(Notification.id == bindparam("nid"), is_(Notification.status, SENDING),
           Notification.claimed_by == bindparam("run"))
    .values(status=bindparam("new_status"), attempts=Notification.attempts + 1,
            next_attempt_at=bindparam("next_at"), last_error_code=bindparam("code"),
            last_error_message=bindparam("message"), updated_at=bindparam("now"))
)


def deliver_pending(
    engine: Engine,
    channel: Channel,
    *,
    sender_id: str,
    limit: int,
    deadline: float,
    max_attempts: int,
    concurrency: int = SEND_CONCURRENCY,
    backoff: timedelta = RETRY_BACKOFF,
    clock: Callable[[], datetime] = utcnow,
) -> DeliveryReport:
    """Send due outbox items through `channel`, recording each outcome; stop at limit or deadline.

    Items are claimed (PENDING -> SENDING) in a short transaction, sent with no transaction
    open, and each outcome is written by a guarded update. A failed item goes back to PENDING
    with a backoff, or to FAILED for operators once it used `max_attempts` or cannot succeed.
    Each item is tried at most once per call: only items due when it started are claimed, so a
    long run against a failing server cannot use up an item's attempts within minutes.
    """
    channel = metrics.instrument_channel(channel)
    report = DeliveryReport()
    started = clock()
    with WorkerPool(concurrency, name="notify") as pool:
        while report.attempted < limit and time.monotonic() < deadline:
            batch = _claim(engine, sender_id, min(2 * concurrency, limit - report.attempted),
                           clock(), due_by=started)
            if not batch:
                break
            futures = [(item, pool.submit(partial(channel.send, item.notice)))
                       for item in batch]
            for item, future in futures:
                error: DeliveryError | None = None
                try:
                    future.result()
                except DeliveryError as exc:
                    error = exc
                except Exception as exc:
                    log.exception("notice %s: unexpected error from the %s channel",
                                  item.notice.dedup_key, channel.name)
                    error = DeliveryError(f"unexpected {type(exc).__name__}", code="unexpected",
                                          retryable=True)
                _record(engine, report, item, error, sender_id=sender_id, clock=clock,
                        max_attempts=max_attempts, backoff=backoff)
    return report


def _claim(engine: Engine, sender_id: str, size: int, now: datetime, *,
           due_by: datetime) -> list[_Claimed]:
    query = (
        select(Notification.id, Notification.attempts, Notification.recipient,
               Notification.kind, Notification.payload, Notification.dedup_key)
        .where(is_(Notification.status, PENDING), Notification.next_attempt_at <= due_by)
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(size)
    )
    with engine.begin() as connection:
        if is_postgresql(connection):
            query = query.with_for_update(skip_locked=True)
        rows = connection.execute(query).all()
        if not rows:
            return []
        connection.execute(_CLAIM, {"ids": [row.id for row in rows], "run": sender_id,
                                    "now": now})
    return [
        _Claimed(id=row.id, attempts=row.attempts,
                 notice=Notice(recipient=row.recipient, kind=row.kind, payload=row.payload,
                               dedup_key=row.dedup_key))
        for row in rows
    ]


def _record(
    engine: Engine,
    report: DeliveryReport,
    item: _Claimed,
    error: DeliveryError | None,
    *,
    sender_id: str,
    clock: Callable[[], datetime],
    max_attempts: int,
    backoff: timedelta,
) -> None:
    now = clock()
    if error is None:
        params: dict[str, Any] = {"nid": item.id, "run": sender_id, "now": now}
        statement = _SENT
    else:
        attempts = item.attempts + 1
        retry = error.retryable and attempts < max_attempts
        params = {
            "nid": item.id, "run": sender_id, "now": now,
            "new_status": PENDING if retry else FAILED,
            "next_at": now + backoff * 2 ** (attempts - 1) if retry else now,
            "code": error.code,
            "message": str(error)[:MAX_ERROR_LENGTH],
        }
        statement = _UNSENT
        report.errors[error.code] = report.errors.get(error.code, 0) + 1
    with engine.begin() as connection:
        written = rowcount(connection.execute(statement, params))
    if written != 1:
        # Released by maintenance as stale while this send was running; its outcome stands.
        report.lost += 1
        log.warning("notice %s: outcome not recorded, the claim was lost", item.notice.dedup_key)
    elif error is None:
        report.delivered += 1
    elif params["new_status"] == PENDING:
        report.retrying += 1
        log.warning("notice %s not delivered (%s); will retry", item.notice.dedup_key,
                    error.code)
    else:
        report.failed += 1
        log.error("notice %s not delivered (%s); giving up after %d attempt(s)",
                  item.notice.dedup_key, error.code, item.attempts + 1)


def release_stale(engine: Engine, *, claimed_before: datetime, now: datetime) -> int:
    """Put items whose sender died mid-send back to PENDING; return how many."""
    with engine.begin() as connection:
        return rowcount(connection.execute(
            update(Notification)
            .where(is_(Notification.status, SENDING), Notification.claimed_at < claimed_before)
            .values(status=PENDING, next_attempt_at=now, updated_at=now,
                    last_error_code="sender_interrupted")
        ))


def prune_sent(engine: Engine, *, sent_before: datetime) -> int:
    """Delete delivered items older than the retention period; return how many."""
    with engine.begin() as connection:
        return rowcount(connection.execute(
            delete(Notification)
            .where(is_(Notification.status, SENT), Notification.sent_at < sent_before)
        ))


def pending_count(engine: Engine) -> int:
    """Count items still waiting to be sent."""
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count()).select_from(Notification)
            .where(is_(Notification.status, PENDING))
        ).scalar_one())
