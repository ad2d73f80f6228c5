from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, bindparam

from service import metrics
from service.db import rowcount, utcnow

from . import outbox
from .claims import ClaimCursor, Claimed, claim_batch, count_due, update_held
from .policy import PayoutPolicy
from .pool import WorkerPool, closer
from .provider import (
    PayoutProvider,
    PermanentProviderError,
    ProviderError,
    TransferRequest,
    TransientProviderError,
)
from .ratelimit import rate_limited
from .rules import (
    COMPLETED,
    FAILED,
    MAX_RETRY_BACKOFF,
    PENDING,
    legacy_idempotency_key,
    retry_backoff,
    transfer_group,
)

log = logging.getLogger("eleva.payouts")

# Per-row outcomes kept in a run's result; the payout records hold every row's status anyway.
MAX_OUTCOMES: Final = 1000
MAX_ERROR_LENGTH: Final = 500
# Seconds before the deadline at which a run stops claiming (at most a tenth of its budget):
# calls in flight still finish after it, within the headroom the runner leaves after the budget.
CLAIM_RESERVE: Final = 2.0
Outcome = Literal["paid", "retry", "failed", "conflict"]


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
    # 429s from the provider, each of which paused the run's calls (see ratelimit.py).
    rate_limit_pauses: int = 0
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
            "rate_limit_pauses": self.rate_limit_pauses,
            "outcomes": outcomes,
            "outcomes_omitted": recorded - len(outcomes),
        }


_COMPLETE = (
    update_held()
    .values(status=COMPLETED, provider_transfer_id=bindparam("provider_id"),
            transferred_at=bindparam("now"), attempts=bindparam("new_attempts"),
            next_attempt_at=None, last_error_code=None, last_error_message=None,
            updated_at=bindparam("now"))
)
_RELEASE = (
    update_held()
    .values(status=PENDING, attempts=bindparam("new_attempts"),
            next_attempt_at=bindparam("next_at"), last_error_code=bindparam("code"),
            last_error_message=bindparam("message"), updated_at=bindparam("now"))
)
_FAIL = (
    update_held()
    .values(status=FAILED, attempts=bindparam("new_attempts"), next_attempt_at=None,
            last_error_code=bindparam("code"), last_error_message=bindparam("message"),
            updated_at=bindparam("now"))
)


def transfer_request(row: Claimed, env: str) -> TransferRequest:
    """Build the provider request of a claimed row: idempotency key, group and metadata."""
    source = row.charge_id or (row.payment_id if row.payment_id.startswith(("ch_", "py_"))
                               else None)
    return TransferRequest(
        transfer_id=str(row.id),
        amount=row.amount,
        currency=row.currency,
        destination_account=row.destination,
        idempotency_key=row.idempotency_key or legacy_idempotency_key(env, row.id),
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

    Every call of the run shares one rate limit (`policy.max_requests_per_second`), and a 429
    pauses them all. No transaction is open while the provider is called. New rows are claimed
    while fewer than `concurrency` calls are queued, so the workers never wait for a claim;
    claiming stops `claim_reserve` seconds before `deadline` (time.monotonic()) and in-flight
    calls finish.
    """
    provider = metrics.instrument_provider(provider)
    if claim_reserve is None:
        claim_reserve = min(CLAIM_RESERVE, 0.1 * max(deadline - time.monotonic(), 0.0))
    report = TransferRunReport()
    cursor = ClaimCursor()
    in_flight: dict[Future[CallResult], Claimed] = {}
    batch = 2 * policy.concurrency
    limited = rate_limited(provider, policy.max_requests_per_second)
    with WorkerPool(policy.concurrency, name="payout", cleanup=closer(limited)) as pool:
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
                            in_flight[pool.submit(partial(pay, limited, row, policy.env))] = row
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
    report.rate_limit_pauses = limited.pauses
    report.remaining, report.skipped = count_due(engine, now=clock())
    return report
