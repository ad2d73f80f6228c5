from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, Literal

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)

from service import metrics
from service.db import rowcount, utcnow
from service.settings import Settings

from . import outbox
from .models import Expert, PaymentTransfer
from .pool import WorkerPool
from .provider import (
    PayoutProvider,
    PermanentProviderError,
    ProviderError,
    TransferRequest,
    TransientProviderError,
)
from .rules import (
    CANCELLED,
    COMPLETED,
    FAILED,
    MAX_RETRY_BACKOFF,
    PENDING,
    PROCESSING,
    idempotency_key,
    retry_backoff,
    transfer_group,
)
from .sql import AnyRow, AnySelect, is_, is_postgresql

log = logging.getLogger("eleva.payouts")

T = PaymentTransfer
E = Expert
# Per-row outcomes kept in a run's result; the ledger has every row's status anyway.
MAX_OUTCOMES: Final = 1000
MAX_ERROR_LENGTH: Final = 500
# Seconds before the deadline at which a run stops claiming (at most a tenth of its budget):
# calls in flight still finish after it, within the headroom the runner leaves after the budget.
CLAIM_RESERVE: Final = 2.0
Outcome = Literal["paid", "retry", "failed", "conflict"]


@dataclass(frozen=True, kw_only=True)
class PayoutPolicy:
    """The settings the payout functions need, so they can run without an app."""

    env: str
    concurrency: int = 8
    max_attempts: int = 3
    retry_backoff: timedelta = timedelta(minutes=10)
    stale_after: timedelta = timedelta(minutes=20)
    payment_check_horizon: timedelta = timedelta(days=3)

    @classmethod
    def from_settings(cls, settings: Settings) -> PayoutPolicy:
        return cls(
            env=settings.app_env,
            concurrency=settings.payout_concurrency,
            max_attempts=settings.payout_max_attempts,
            retry_backoff=timedelta(seconds=settings.payout_retry_backoff_seconds),
            stale_after=timedelta(seconds=settings.payout_stale_after_seconds),
            payment_check_horizon=timedelta(days=settings.payout_payment_check_days),
        )


@dataclass(frozen=True, kw_only=True)
class Claimed:
    """A row this run holds in PROCESSING, with what the call and the notice need."""

    id: int
    expert_id: str
    payment_id: str
    charge_id: str | None
    amount: int
    currency: str
    attempts: int
    claimed_before: bool
    destination: str
    email: str
    first_name: str


@dataclass(frozen=True, kw_only=True)
class CallResult:
    """What the provider said about one row: a transfer id, or an error."""

    provider_transfer_id: str | None = None
    error: ProviderError | None = None
    # The call failed, yet a transfer may exist for the row (made by this call or an earlier
    # claim's): the row must not end as FAILED until the provider says that none does.
    may_exist: bool = False

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.retryable


@dataclass(kw_only=True)
class TransferRunReport:
    """Counts of one process-expert-transfers pass and its per-row outcomes (ids only)."""

    considered: int = 0
    paid: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    conflicts: int = 0
    remaining: int = 0
    stopped_early: bool = False
    _problems: list[dict[str, Any]] = field(default_factory=list)
    _paid: list[dict[str, Any]] = field(default_factory=list)

    def add(self, transfer_id: int, outcome: Outcome, code: str | None = None) -> None:
        entry: dict[str, Any] = {"transfer_id": transfer_id, "outcome": outcome}
        if code is not None:
            entry["code"] = code
        target = self._paid if outcome == "paid" else self._problems
        if len(target) < MAX_OUTCOMES:
            target.append(entry)
        if outcome == "paid":
            self.paid += 1
        elif outcome == "retry":
            self.retried += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.conflicts += 1

    def outcomes(self) -> list[dict[str, Any]]:
        # Problems first: they are what an operator reads the result for.
        return (self._problems + self._paid)[:MAX_OUTCOMES]

    def to_dict(self) -> dict[str, Any]:
        outcomes = self.outcomes()
        recorded = self.paid + self.failed + self.retried + self.conflicts
        return {
            "considered": self.considered,
            "paid": self.paid,
            "failed": self.failed,
            "retried": self.retried,
            "skipped": self.skipped,
            "conflicts": self.conflicts,
            "remaining": self.remaining,
            "stopped_early": self.stopped_early,
            "outcomes": outcomes,
            "outcomes_omitted": recorded - len(outcomes),
        }


def _payable() -> Any:
    return and_(E.payouts_enabled == true(), E.stripe_account_id.is_not(None))


def _ready(now: datetime) -> Any:
    return or_(T.next_attempt_at.is_(None), T.next_attempt_at <= now)


def _claim_query(phase: str, now: datetime, after: tuple[datetime, int] | None,
                 size: int) -> AnySelect:
    query = (
        select(T.id, T.scheduled_transfer_at, T.expert_id, T.payment_id, T.charge_id, T.amount,
               T.currency, T.attempts, T.claimed_at, E.stripe_account_id, E.email, E.first_name)
        .join(E, E.id == T.expert_id)
        .where(is_(T.status, PENDING), _ready(now), _payable())
        .order_by(T.scheduled_transfer_at, T.id)
        .limit(size)
    )
    if phase == "approved":
        # Approval makes a row eligible whatever its date (ix_payment_transfers_pending_approved).
        query = query.where(T.approved_at.is_not(None))
    else:
        # Due by date and not waiting for approval (ix_payment_transfers_pending_due).
        query = query.where(T.scheduled_transfer_at <= now, T.requires_approval == false())
    if after is not None:
        query = query.where(tuple_(T.scheduled_transfer_at, T.id) > tuple_(*after))
    return query


_CLAIM = (
    update(T)
    .where(T.id.in_(bindparam("ids", expanding=True)), is_(T.status, PENDING))
    .values(status=PROCESSING, claimed_by=bindparam("run"), claimed_at=bindparam("now"),
            updated_at=bindparam("now"))
)
_COMPLETE = (
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PROCESSING),
           T.claimed_by == bindparam("run"))
    .values(status=COMPLETED, provider_transfer_id=bindparam("provider_id"),
            transferred_at=bindparam("now"), attempts=bindparam("new_attempts"),
            next_attempt_at=None, last_error_code=None, last_error_message=None,
            updated_at=bindparam("now"))
)
_RELEASE = (
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PROCESSING),
           T.claimed_by == bindparam("run"))
    .values(status=PENDING, attempts=bindparam("new_attempts"),
            next_attempt_at=bindparam("next_at"), last_error_code=bindparam("code"),
            last_error_message=bindparam("message"), updated_at=bindparam("now"))
)
_FAIL = (
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PROCESSING),
           T.claimed_by == bindparam("run"))
    .values(status=FAILED, attempts=bindparam("new_attempts"), next_attempt_at=None,
            last_error_code=bindparam("code"), last_error_message=bindparam("message"),
            updated_at=bindparam("now"))
)


@dataclass(kw_only=True)
class _Cursor:
    """Where the claim scan is: approved rows first, then rows due by date, in key order."""

    phase: Literal["approved", "due", "done"] = "approved"
    after: tuple[datetime, int] | None = None

    def advance(self, last: tuple[datetime, int] | None, full: bool) -> None:
        if full and last is not None:
            self.after = last
            return
        self.phase = "due" if self.phase == "approved" else "done"
        self.after = None


def claim_batch(
    engine: Engine, *, run_id: str, size: int, now: datetime, cursor: _Cursor | None = None
) -> list[Claimed]:
    """Atomically move up to `size` due rows from PENDING to PROCESSING for `run_id`.

    PostgreSQL locks the selected rows with FOR UPDATE SKIP LOCKED, so concurrent claims pass
    over each other's rows; SQLite's BEGIN IMMEDIATE makes the select and the update one
    serialised step. The update still names the expected status, whatever the database.
    """
    cursor = cursor or _Cursor()
    while cursor.phase != "done":
        with engine.begin() as connection:
            query = _claim_query(cursor.phase, now, cursor.after, size)
            if is_postgresql(connection):
                query = query.with_for_update(skip_locked=True, of=T)
            rows = connection.execute(query).all()
            claimed = _mark_claimed(connection, rows, run_id=run_id, now=now)
        last = (rows[-1].scheduled_transfer_at, rows[-1].id) if rows else None
        cursor.advance(last, full=len(rows) == size)
        if claimed:
            return claimed
    return []


def _mark_claimed(
    connection: Connection, rows: Sequence[AnyRow], *, run_id: str, now: datetime
) -> list[Claimed]:
    if not rows:
        return []
    ids = [row.id for row in rows]
    taken = rowcount(connection.execute(_CLAIM, {"ids": ids, "run": run_id, "now": now}))
    if taken != len(ids):
        # Cannot happen under the locks above; if it ever does, only the rows this run
        # actually holds may be paid.
        held = set(connection.execute(
            select(T.id).where(T.id.in_(ids), is_(T.status, PROCESSING), T.claimed_by == run_id)
        ).scalars())
        log.warning("claimed %d of %d selected transfers", len(held), len(ids))
        rows = [row for row in rows if row.id in held]
    return [
        Claimed(id=row.id, expert_id=row.expert_id, payment_id=row.payment_id,
                charge_id=row.charge_id, amount=row.amount, currency=row.currency,
                attempts=row.attempts, claimed_before=row.claimed_at is not None,
                destination=row.stripe_account_id, email=row.email, first_name=row.first_name)
        for row in rows
    ]


def transfer_request(row: Claimed, env: str) -> TransferRequest:
    """Build the provider request of a claimed row: idempotency key, group and metadata."""
    source = row.charge_id or (row.payment_id if row.payment_id.startswith(("ch_", "py_"))
                               else None)
    return TransferRequest(
        transfer_id=str(row.id),
        amount=row.amount,
        currency=row.currency,
        destination_account=row.destination,
        idempotency_key=idempotency_key(env, row.id),
        transfer_group=transfer_group(row.payment_id),
        source_transaction=source,
        metadata={"transfer_id": str(row.id), "expert_id": row.expert_id,
                  "payment_id": row.payment_id},
    )


def pay(provider: PayoutProvider, row: Claimed, env: str) -> CallResult:
    """Call the provider for one claimed row; never raises. Runs with no transaction open."""
    try:
        request = transfer_request(row, env)
    except ValueError as exc:
        return CallResult(error=PermanentProviderError(f"invalid transfer: {exc}",
                                                       code="invalid_transfer"))
    looked = False
    try:
        if row.claimed_before:
            # An earlier claim may have created the transfer and lost the answer, possibly
            # longer ago than the provider remembers idempotency keys: look before paying.
            found = provider.find_transfer(transfer_id=request.transfer_id,
                                           transfer_group=request.transfer_group)
            if found is not None:
                return CallResult(provider_transfer_id=found.provider_transfer_id)
            looked = True
        result = provider.create_transfer(request)
    except ProviderError as exc:
        # Unless the provider said that no transfer exists, an earlier claim's may.
        return CallResult(error=exc, may_exist=exc.outcome_unknown
                          or (row.claimed_before and not looked))
    except Exception as exc:
        # The outcome is unknown: retrying with the same key is the safe side.
        log.exception("transfer %d: unexpected error from the %s provider", row.id,
                      provider.name)
        return CallResult(error=TransientProviderError(f"unexpected {type(exc).__name__}",
                                                       code="unexpected_error"),
                          may_exist=True)
    return CallResult(provider_transfer_id=result.provider_transfer_id)


def record(
    connection: Connection,
    row: Claimed,
    result: CallResult,
    *,
    run_id: str,
    policy: PayoutPolicy,
    now: datetime,
) -> tuple[Outcome, str | None]:
    """Write one call's outcome in its own transaction, guarded by status and claim."""
    attempts = row.attempts + 1
    base = {"tid": row.id, "run": run_id, "now": now, "new_attempts": attempts}
    error = result.error
    with connection.begin():
        if error is None:
            if rowcount(connection.execute(
                _COMPLETE, {**base, "provider_id": result.provider_transfer_id}
            )) != 1:
                log.error("transfer %d was paid (%s) but its claim was lost; the next run "
                          "or recovery reconciles it", row.id, result.provider_transfer_id)
                return "conflict", None
            outbox.queue_notice(connection, kind=outbox.PAYOUT_SENT, transfer_id=row.id,
                                recipient=row.email, now=now, payload={
                                    "first_name": row.first_name, "amount": row.amount,
                                    "currency": row.currency,
                                    "sent_date": now.date().isoformat(),
                                    "reference": str(row.id)})
            metrics.record_paid(row.currency, row.amount)
            return "paid", None
        message = str(error)[:MAX_ERROR_LENGTH]
        if error.retryable and error.replayed:
            # The provider answered with an earlier attempt's stored outcome: this attempt
            # learned nothing, so it does not count. The key outlives a few runs (Stripe keeps
            # it 24 hours): wait the longest backoff before asking again.
            written = rowcount(connection.execute(_RELEASE, {
                **base, "new_attempts": row.attempts, "code": error.code, "message": message,
                "next_at": now + MAX_RETRY_BACKOFF}))
            if written != 1:
                return "conflict", error.code
            log.warning("transfer %d: the provider replayed an earlier attempt's answer (%s); "
                        "not counted as an attempt, retried once the provider has forgotten its "
                        "idempotency key", row.id, error.code)
            return "retry", error.code
        final = not error.retryable or attempts >= policy.max_attempts
        if final and result.may_exist:
            # Failing it now could leave a paid expert marked unpaid (and paid again by hand).
            log.error("transfer %d: %s, but a transfer may already exist; it stays pending "
                      "until the provider can say whether one does", row.id,
                      "attempts used up" if error.retryable else "permanent error")
        if not final or result.may_exist:
            written = rowcount(connection.execute(_RELEASE, {
                **base, "code": error.code, "message": message,
                "next_at": now + retry_backoff(attempts, policy.retry_backoff)}))
            outcome: Outcome = "retry"
        else:
            written = rowcount(connection.execute(
                _FAIL, {**base, "code": error.code, "message": message}))
            outcome = "failed"
            if written == 1:
                # The expert hears that it failed, never the provider's words.
                outbox.queue_notice(connection, kind=outbox.PAYOUT_FAILED, transfer_id=row.id,
                                    recipient=row.email, now=now, payload={
                                        "first_name": row.first_name, "amount": row.amount,
                                        "currency": row.currency, "reference": str(row.id)})
        if written != 1:
            return "conflict", error.code
    log.warning("transfer %d: %s (%s)", row.id,
                "will retry" if outcome == "retry" else "failed for good", error)
    return outcome, error.code


def closer(provider: object) -> Callable[[], None] | None:
    """Return the provider's per-thread close(), if it has one."""
    close = getattr(provider, "close", None)
    return close if callable(close) else None


def process_due_transfers(
    engine: Engine,
    provider: PayoutProvider,
    policy: PayoutPolicy,
    *,
    run_id: str,
    deadline: float,
    claim_reserve: float | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> TransferRunReport:
    """Pay every due transfer once: claim in batches, call with bounded concurrency, record.

    No transaction is open while the provider is called. New rows are claimed while fewer
    than `concurrency` calls are queued, so the workers never wait for a claim; claiming stops
    `claim_reserve` seconds before `deadline` (time.monotonic()) and in-flight calls finish.
    """
    provider = metrics.instrument_provider(provider)
    if claim_reserve is None:
        claim_reserve = min(CLAIM_RESERVE, 0.1 * max(deadline - time.monotonic(), 0.0))
    report = TransferRunReport()
    cursor = _Cursor()
    in_flight: dict[Future[CallResult], Claimed] = {}
    batch = 2 * policy.concurrency
    with WorkerPool(policy.concurrency, name="payout", cleanup=closer(provider)) as pool:
        try:
            while True:
                if cursor.phase != "done" and len(in_flight) <= policy.concurrency:
                    if time.monotonic() >= deadline - claim_reserve:
                        report.stopped_early = True
                        cursor.phase = "done"
                    else:
                        for row in claim_batch(engine, run_id=run_id,
                                               size=batch - len(in_flight), now=clock(),
                                               cursor=cursor):
                            report.considered += 1
                            in_flight[pool.submit(partial(pay, provider, row, policy.env))] = row
                if not in_flight:
                    if cursor.phase == "done":
                        break
                    continue
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                # One connection for the outcomes at hand (one check-out, one pool ping), one
                # transaction per outcome.
                with engine.connect() as connection:
                    for future in done:
                        row = in_flight.pop(future)
                        outcome, code = record(connection, row, future.result(), run_id=run_id,
                                               policy=policy, now=clock())
                        report.add(row.id, outcome, code)
        except BaseException:
            # Calls not started yet are dropped; their rows stay claimed until recovery
            # releases them. Calls already running finish before the pool closes.
            for future in in_flight:
                future.cancel()
            raise
    report.remaining, report.skipped = count_due(engine, now=clock())
    return report


def count_due(engine: Engine, *, now: datetime) -> tuple[int, int]:
    """Count due pending rows: (payable now, blocked because the expert cannot be paid)."""
    eligible = and_(
        is_(T.status, PENDING), _ready(now),
        or_(and_(T.scheduled_transfer_at <= now, T.requires_approval == false()),
            T.approved_at.is_not(None)),
    )
    payable = _payable()
    query = (
        select(func.coalesce(func.sum(case((payable, 1), else_=0)), 0),
               func.coalesce(func.sum(case((payable, 0), else_=1)), 0))
        .select_from(T).join(E, E.id == T.expert_id).where(eligible)
    )
    with engine.connect() as connection:
        ready, blocked = connection.execute(query).one()
    return int(ready), int(blocked)


# Maintenance: recovery of abandoned claims and payment checks (process-tasks).


@dataclass(kw_only=True)
class RecoveryReport:
    completed: int = 0
    released: int = 0
    errors: int = 0


_RECOVER_COMPLETE = (
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PROCESSING),
           T.claimed_by == bindparam("run"))
    .values(status=COMPLETED, provider_transfer_id=bindparam("provider_id"),
            transferred_at=bindparam("now"), next_attempt_at=None, last_error_code=None,
            last_error_message=None, updated_at=bindparam("now"))
)
_RECOVER_RELEASE = (
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PROCESSING),
           T.claimed_by == bindparam("run"))
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
    stale_before = clock() - policy.stale_after
    after: tuple[datetime, int] | None = None
    with WorkerPool(policy.concurrency, name="recover", cleanup=closer(provider)) as pool:
        while time.monotonic() < deadline:
            rows = _stale_rows(engine, stale_before=stale_before, after=after,
                               size=2 * policy.concurrency)
            if not rows:
                break
            after = (rows[-1].claimed_at, rows[-1].id)
            futures = [(row, pool.submit(partial(
                provider.find_transfer, transfer_id=str(row.id),
                transfer_group=transfer_group(row.payment_id)))) for row in rows]
            for row, future in futures:
                try:
                    found = future.result()
                except ProviderError as exc:
                    report.errors += 1
                    log.warning("transfer %d: recovery lookup failed (%s)", row.id, exc)
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
        select(T.id, T.payment_id, T.amount, T.currency, T.claimed_by, T.claimed_at,
               E.email, E.first_name)
        .join(E, E.id == T.expert_id)
        .where(is_(T.status, PROCESSING), T.claimed_at < stale_before)
        .order_by(T.claimed_at, T.id)
        .limit(size)
    )
    if after is not None:
        query = query.where(tuple_(T.claimed_at, T.id) > tuple_(*after))
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
    update(T)
    .where(T.id == bindparam("tid"), is_(T.status, PENDING))
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
    horizon = clock() + policy.payment_check_horizon
    after: tuple[datetime, int] | None = None
    with WorkerPool(policy.concurrency, name="payments", cleanup=closer(provider)) as pool:
        while time.monotonic() < deadline:
            rows = _pending_within(engine, horizon=horizon, after=after,
                                   size=4 * policy.concurrency)
            if not rows:
                break
            after = (rows[-1].scheduled_transfer_at, rows[-1].id)
            futures = [(row, pool.submit(partial(provider.payment_state, row.payment_id)))
                       for row in rows]
            for row, future in futures:
                try:
                    state = future.result()
                except ProviderError as exc:
                    report.errors += 1
                    log.warning("transfer %d: payment check failed (%s)", row.id, exc)
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
                cancel = _CANCEL.where(T.claimed_at.is_(None) if unclaimed
                                       else T.claimed_at == row.claimed_at)
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
        select(T.id, T.payment_id, T.scheduled_transfer_at, T.claimed_at)
        .where(is_(T.status, PENDING), T.scheduled_transfer_at <= horizon)
        .order_by(T.scheduled_transfer_at, T.id)
        .limit(size)
    )
    if after is not None:
        query = query.where(tuple_(T.scheduled_transfer_at, T.id) > tuple_(*after))
    with engine.connect() as connection:
        return list(connection.execute(query).all())
