from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine, bindparam, select, update

from service import metrics
from service.db import rowcount, utcnow

from . import outbox
from .claims import update_held
from .models import Expert, PaymentTransfer
from .policy import PayoutPolicy
from .pool import WorkerPool, closer
from .provider import PayoutProvider, ProviderError
from .ratelimit import rate_limited
from .rules import CANCELLED, COMPLETED, PENDING, PROCESSING, transfer_group
from .sql import AnyRow, after_key, is_

log = logging.getLogger("eleva.payouts")
T = TypeVar("T")


@dataclass(kw_only=True)
class RecoveryReport:
    completed: int = 0
    released: int = 0
    errors: int = 0


_RECOVER_COMPLETE = (
    update_held()
    .values(status=COMPLETED, provider_transfer_id=bindparam("provider_id"),
            transferred_at=bindparam("now"), next_attempt_at=None, last_error_code=None,
            last_error_message=None, updated_at=bindparam("now"))
)
_RECOVER_RELEASE = (
    update_held()
    .values(status=PENDING, next_attempt_at=None, last_error_code="recovered",
            last_error_message="released after its run stopped without an outcome",
            updated_at=bindparam("now"))
)


def recover_stale(
    engine: Engine,
    provider: PayoutProvider,
    policy: PayoutPolicy,
    *,
    deadline: float,
    clock: Callable[[], datetime] = utcnow,
) -> RecoveryReport:
    """Settle rows left in PROCESSING by a run that died: completed if paid, else PENDING.

    The provider is asked whether the transfer exists (by the row's metadata in its transfer
    group). Each write names the dead run's claim, so a row that moved on is left alone.
    """
    provider = metrics.instrument_provider(provider)
    report = RecoveryReport()
    provider = rate_limited(provider, policy.max_requests_per_second)
    stale_before = clock() - policy.stale_after
    for row, found in _ask_page_by_page(
        provider, policy, name="recover", deadline=deadline,
        page=partial(_stale_rows, engine, stale_before=stale_before, size=2 * policy.concurrency),
        key=lambda row: (row.claimed_at, row.id),
        ask=lambda row: provider.find_transfer(transfer_id=str(row.id),
                                               transfer_group=transfer_group(row.payment_id)),
    ):
        if isinstance(found, ProviderError):
            report.errors += 1
            log.warning("transfer %d: recovery lookup failed (%s)", row.id, found)
            continue
        now = clock()
        params = {"tid": row.id, "run": row.claimed_by, "now": now}
        with engine.begin() as connection:
            if found is None:
                report.released += rowcount(connection.execute(_RECOVER_RELEASE, params))
                continue
            if rowcount(connection.execute(
                _RECOVER_COMPLETE, {**params, "provider_id": found.provider_transfer_id}
            )) == 1:
                report.completed += 1
                outbox.queue_notice(
                    connection, kind=outbox.PAYOUT_SENT, transfer_id=row.id,
                    recipient=row.email, now=now, payload={
                        "first_name": row.first_name, "amount": row.amount,
                        "currency": row.currency, "sent_date": now.date().isoformat(),
                        "reference": str(row.id)})
    return report


def _stale_rows(engine: Engine, *, stale_before: datetime, after: tuple[datetime, int] | None,
                size: int) -> list[AnyRow]:
    query = (
        select(PaymentTransfer.id, PaymentTransfer.payment_id, PaymentTransfer.amount,
               PaymentTransfer.currency, PaymentTransfer.claimed_by, PaymentTransfer.claimed_at,
               Expert.email, Expert.first_name)
        .join(Expert, Expert.id == PaymentTransfer.expert_id)
        .where(is_(PaymentTransfer.status, PROCESSING),
               PaymentTransfer.claimed_at < stale_before)
        .order_by(PaymentTransfer.claimed_at, PaymentTransfer.id)
        .limit(size)
    )
    query = after_key(query, after, PaymentTransfer.claimed_at, PaymentTransfer.id)
    with engine.connect() as connection:
        return list(connection.execute(query).all())


@dataclass(kw_only=True)
class PaymentCheckReport:
    checked: int = 0
    cancelled_refunded: int = 0
    cancelled_disputed: int = 0
    # Refunded or disputed, but an earlier claim had already made the transfer: not cancelled.
    refunded_after_transfer: int = 0
    errors: int = 0


_CANCEL = (
    update(PaymentTransfer)
    .where(PaymentTransfer.id == bindparam("tid"), is_(PaymentTransfer.status, PENDING))
    .values(status=CANCELLED, next_attempt_at=None, last_error_code=bindparam("code"),
            last_error_message=bindparam("message"), updated_at=bindparam("now"))
)


def cancel_reversed_payments(
    engine: Engine,
    provider: PayoutProvider,
    policy: PayoutPolicy,
    *,
    deadline: float,
    clock: Callable[[], datetime] = utcnow,
) -> PaymentCheckReport:
    """Cancel pending transfers due within the horizon whose payment was refunded or disputed.

    Only PENDING -> CANCELLED is written: a transfer already claimed or paid is never touched.
    A row an earlier claim tried to pay is cancelled only once the provider says that no
    transfer was made for it; one that was made is left for the next transfer run to record.
    """
    provider = metrics.instrument_provider(provider)
    report = PaymentCheckReport()
    provider = rate_limited(provider, policy.max_requests_per_second)
    horizon = clock() + policy.payment_check_horizon
    for row, state in _ask_page_by_page(
        provider, policy, name="payments", deadline=deadline,
        page=partial(_pending_within, engine, horizon=horizon, size=4 * policy.concurrency),
        key=lambda row: (row.scheduled_transfer_at, row.id),
        ask=lambda row: provider.payment_state(row.payment_id),
    ):
        if isinstance(state, ProviderError):
            report.errors += 1
            log.warning("transfer %d: payment check failed (%s)", row.id, state)
            continue
        report.checked += 1
        if not (state.refunded or state.disputed):
            continue
        code = "payment_disputed" if state.disputed else "payment_refunded"
        if row.claimed_at is not None:
            try:
                made = provider.find_transfer(transfer_id=str(row.id),
                                              transfer_group=transfer_group(row.payment_id))
            except ProviderError as exc:
                report.errors += 1
                log.warning("transfer %d: the customer's payment was %s, but whether "
                            "an earlier attempt made the transfer is unknown (%s); not "
                            "cancelled", row.id, code.removeprefix("payment_"), exc)
                continue
            if made is not None:
                report.refunded_after_transfer += 1
                log.error("transfer %d: the customer's payment was %s after transfer %s "
                          "was made; reverse that transfer by hand if the expert must "
                          "not keep it", row.id, code.removeprefix("payment_"),
                          made.provider_transfer_id)
                continue
        # Unless the row is as this check found it: a run that claimed it meanwhile
        # (and released it, a transfer perhaps made) leaves it for the next check.
        unclaimed = row.claimed_at is None
        cancel = _CANCEL.where(PaymentTransfer.claimed_at.is_(None) if unclaimed
                               else PaymentTransfer.claimed_at == row.claimed_at)
        with engine.begin() as connection:
            written = rowcount(connection.execute(cancel, {
                "tid": row.id, "now": clock(), "code": code,
                "message": "the customer's payment was "
                           + ("disputed" if state.disputed else "refunded")}))
        if written == 1:
            log.info("transfer %d cancelled: %s", row.id, code)
            if state.disputed:
                report.cancelled_disputed += 1
            else:
                report.cancelled_refunded += 1
    return report


def _pending_within(engine: Engine, *, horizon: datetime, after: tuple[datetime, int] | None,
                    size: int) -> list[AnyRow]:
    query = (
        select(PaymentTransfer.id, PaymentTransfer.payment_id,
               PaymentTransfer.scheduled_transfer_at, PaymentTransfer.claimed_at)
        .where(is_(PaymentTransfer.status, PENDING),
               PaymentTransfer.scheduled_transfer_at <= horizon)
        .order_by(PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)
        .limit(size)
    )
    query = after_key(query, after, PaymentTransfer.scheduled_transfer_at, PaymentTransfer.id)
    with engine.connect() as connection:
        return list(connection.execute(query).all())


def _ask_page_by_page(
    provider: PayoutProvider,
    policy: PayoutPolicy,
    *,
    name: str,
    deadline: float,
    page: Callable[..., list[AnyRow]],
    key: Callable[[AnyRow], tuple[datetime, int]],
    ask: Callable[[AnyRow], T],
) -> Iterator[tuple[AnyRow, T | ProviderError]]:
    """Yield each row with the provider's answer about it, or its error, a page at a time.

    Rows are read in key order (`page(after=...)`) until none is left or the deadline has
    passed; the questions about a page's rows are asked in parallel. Iterated in a `for`
    statement, the generator is closed, and the pool with it, when an error ends the loop.
    """
    after: tuple[datetime, int] | None = None
    with WorkerPool(policy.concurrency, name=name, cleanup=closer(provider)) as pool:
        while time.monotonic() < deadline:
            rows = page(after=after)
            if not rows:
                return
            after = key(rows[-1])
            futures = [(row, pool.submit(partial(ask, row))) for row in rows]
            for row, future in futures:
                answer: T | ProviderError
                try:
                    answer = future.result()
                except ProviderError as exc:
                    answer = exc
                yield row, answer
