from __future__ import annotations

import dataclasses
import io
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from devtools.stripe_local import PaymentStatus, StripeLocal, StripeLocalServer
from service.db import utcnow
from service.extensions import KEY, get_payout_provider, get_sessions, services
from service.models import DeliveryToken, JobRun
from service.payouts.models import Notification, PaymentTransfer
from service.payouts.provider import PaymentState, TransferRequest
from service.payouts.simulated import SimulatedPayoutProvider
from service.runs import history
from tests.helpers import (
    AppFactory,
    add_expert,
    add_transfer,
    load_transfer,
    outbox_rows,
    service_log,
)
from tests.payouts.helpers import run, stripe_env

from .helpers import ACCOUNT

STALE = timedelta(minutes=25)  # older than PAYOUT_STALE_AFTER_SECONDS (20 minutes)


def use_provider(app: Flask, provider: Any) -> None:
    app.extensions[KEY] = dataclasses.replace(services(app), payout_provider=provider)


def test_recovery_completes_paid_rows_and_releases_the_others(app: Flask) -> None:
    add_expert(app)
    now = utcnow()
    paid = add_transfer(app, status="PROCESSING", claimed_by="deadrun", claimed_at=now - STALE)
    unpaid = add_transfer(app, status="PROCESSING", claimed_by="deadrun",
                          claimed_at=now - STALE)
    fresh = add_transfer(app, status="PROCESSING", claimed_by="liverun",
                         claimed_at=now - timedelta(minutes=5))
    provider = get_payout_provider(app)
    assert isinstance(provider, SimulatedPayoutProvider)
    row = load_transfer(app, paid)
    made = provider.create_transfer(TransferRequest(
        transfer_id=str(paid), amount=row.amount, currency="eur", destination_account=ACCOUNT,
        idempotency_key=f"development:transfer:{paid}", transfer_group=f"payment_{row.payment_id}",
        source_transaction=None, metadata={"transfer_id": str(paid)}))

    result = run(app, "process-tasks")

    assert (result["recovered_completed"], result["recovered_released"]) == (1, 1)
    completed = load_transfer(app, paid)
    assert (completed.status, completed.provider_transfer_id) == (
        "COMPLETED", made.provider_transfer_id)
    released = load_transfer(app, unpaid)
    assert (released.status, released.last_error_code) == ("PENDING", "recovered")
    assert released.next_attempt_at is None
    assert load_transfer(app, fresh).status == "PROCESSING"
    assert [(n.kind, n.transfer_id, n.status) for n in outbox_rows(app)] == [
        ("payout_sent", paid, "SENT")]

    # The released row is paid by the next run, once: the earlier claim makes it look first.
    assert run(app)["paid"] == 1
    assert provider.calls_by_idempotency_key[f"development:transfer:{unpaid}"] == 1


@pytest.fixture
def stripe_app(make_app: AppFactory, env: dict[str, str],
               stripe_server: StripeLocalServer) -> Flask:
    app = make_app(stripe_env(env, stripe_server))
    add_expert(app, stripe_account_id=ACCOUNT)
    return app


def with_payment(app: Flask, stripe: StripeLocal, payment: PaymentStatus, **fields: Any) -> int:
    made = stripe.add_payment(status=payment)
    return add_transfer(app, payment_id=made.payment_intent_id, **fields)


def test_refunded_and_disputed_payments_cancel_pending_transfers(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    app = stripe_app
    refunded = with_payment(app, stripe_local, "refunded", due=timedelta(days=2))
    partial = with_payment(app, stripe_local, "partially_refunded", due=timedelta(days=1))
    disputed = with_payment(app, stripe_local, "disputed")
    fine = with_payment(app, stripe_local, "paid")
    far = with_payment(app, stripe_local, "refunded", due=timedelta(days=5))
    claimed = with_payment(app, stripe_local, "refunded", status="PROCESSING",
                           claimed_by="liverun", claimed_at=utcnow())
    paid = with_payment(app, stripe_local, "disputed", status="COMPLETED",
                        provider_transfer_id="tr_done")
    charge = stripe_local.add_payment(status="refunded")
    by_charge = add_transfer(app, payment_id=charge.charge_id)

    result = run(app, "process-tasks")

    assert (result["payments_checked"], result["cancelled_refunded"],
            result["cancelled_disputed"], result["payment_check_errors"]) == (5, 3, 1, 0)
    codes = {i: (load_transfer(app, i).status, load_transfer(app, i).last_error_code)
             for i in (refunded, partial, disputed, fine, far, claimed, paid, by_charge)}
    assert codes == {
        refunded: ("CANCELLED", "payment_refunded"),
        partial: ("CANCELLED", "payment_refunded"),
        disputed: ("CANCELLED", "payment_disputed"),
        fine: ("PENDING", None),
        far: ("PENDING", None),  # beyond PAYOUT_PAYMENT_CHECK_DAYS; checked on a later day
        claimed: ("PROCESSING", None),  # never taken from a run that holds it
        paid: ("COMPLETED", None),
        by_charge: ("CANCELLED", "payment_refunded"),
    }
    # A cancelled transfer is never paid afterwards.
    after = run(app)
    assert after["paid"] == 1 and after["outcomes"] == [{"transfer_id": fine, "outcome": "paid"}]


def test_a_refund_cancels_a_claimed_row_only_once_the_provider_says_no_transfer_was_made(
    stripe_app: Flask, stripe_local: StripeLocal, captured: io.StringIO
) -> None:
    app = stripe_app
    service_log(captured)
    # Three rows an earlier run tried to pay: one whose transfer was made but the answer lost,
    # one whose lookup will fail, and one that Stripe refused outright (nothing was made).
    for _ in range(3):
        with_payment(app, stripe_local, "paid")
    stripe_local.drop_next(after_processing=True, method="POST")
    stripe_local.fail_next(400, code="balance_insufficient", times=2, method="POST")
    codes = {o["transfer_id"]: o["code"] for o in run(app)["outcomes"]}  # calls run in parallel
    [made] = [i for i, code in codes.items() if code == "connection_error"]
    unknown, refused = sorted(i for i, code in codes.items() if code == "balance_insufficient")
    [created] = stripe_local.transfers
    for row_id in codes:
        stripe_local.refund(load_transfer(app, row_id).payment_id)
    # Payments are checked in order of due time: the failing lookup is the first, `unknown`'s.
    with get_sessions(app).begin() as session:
        session.execute(update(PaymentTransfer).where(PaymentTransfer.id == made)
                        .values(scheduled_transfer_at=utcnow() + timedelta(days=1)))

    stripe_local.fail_next(503, times=1, method="GET", path_prefix="/v1/transfers")
    result = run(app, "process-tasks")

    assert (result["payments_checked"], result["cancelled_refunded"],
            result["refunded_after_transfer"], result["payment_check_errors"]) == (3, 1, 1, 1)
    assert {i: load_transfer(app, i).status for i in (made, unknown, refused)} == {
        made: "PENDING", unknown: "PENDING", refused: "CANCELLED"}
    logged = captured.getvalue()
    assert f"transfer {made}: the customer's payment was refunded after transfer " \
           f"{created['id']} was made; reverse that transfer by hand" in logged
    # The next transfer run records the transfer that exists instead of making another. (The
    # row whose lookup failed is checked again the next day, before it is due.)
    with get_sessions(app).begin() as session:
        session.execute(update(PaymentTransfer).where(PaymentTransfer.id == made)
                        .values(scheduled_transfer_at=utcnow(), next_attempt_at=None))
    assert run(app)["outcomes"] == [{"transfer_id": made, "outcome": "paid"}]
    assert load_transfer(app, made).provider_transfer_id == created["id"]
    assert stripe_local.transfers == [created]


class ClaimedMeanwhile(SimulatedPayoutProvider):
    """Reports a refund, while a transfer run changes the row between the check and the write."""

    def __init__(self, app: Flask, **changes: Any) -> None:
        super().__init__()
        self.app = app
        self.changes = changes

    def payment_state(self, payment_id: str) -> PaymentState:
        with get_sessions(self.app).begin() as session:
            session.execute(update(PaymentTransfer)
                            .where(PaymentTransfer.payment_id == payment_id)
                            .values(**self.changes))
        return PaymentState(payment_id=payment_id, refunded=True, disputed=False)


@pytest.mark.parametrize("changes", [
    {"status": "PROCESSING", "claimed_by": "other", "claimed_at": utcnow()},
    # Claimed, the call answered 5xx (a transfer may exist), released: PENDING again.
    {"status": "PENDING", "claimed_by": None, "claimed_at": utcnow(), "attempts": 1,
     "last_error_code": "provider_unavailable"},
], ids=["still-claimed", "claimed-and-released"])
def test_a_cancellation_never_overwrites_a_claim(app: Flask, changes: dict[str, Any]) -> None:
    add_expert(app)
    row_id = add_transfer(app)
    use_provider(app, ClaimedMeanwhile(app, **changes))
    result = run(app, "process-tasks")
    assert (result["payments_checked"], result["cancelled_refunded"]) == (1, 0)
    assert load_transfer(app, row_id).status == changes["status"]


def test_provider_errors_are_counted_and_the_run_goes_on(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    app = stripe_app
    row_id = add_transfer(app, payment_id="pi_unknown")
    stuck = add_transfer(app, status="PROCESSING", claimed_by="deadrun",
                         claimed_at=utcnow() - STALE)
    stripe_local.fail_next(500, times=1, path_prefix="/v1/transfers", method="GET")
    old = utcnow() - timedelta(days=40)
    with get_sessions(app).begin() as session:
        session.add(JobRun(id="oldrun", job="process-tasks", trigger="cli", status="succeeded",
                           retried=0, attempts=1, started_at=old, expires_at=old))
    result = run(app, "process-tasks")
    assert (result["recovery_errors"], result["payment_check_errors"]) == (1, 1)
    assert result["pruned_job_runs"] == 1
    assert load_transfer(app, row_id).status == "PENDING"
    assert load_transfer(app, stuck).status == "PROCESSING"


def test_pruning_follows_the_retention_settings(make_app: AppFactory, env: dict[str, str]
                                                ) -> None:
    app = make_app({**env, "RETENTION_JOB_RUNS_DAYS": "7", "RETENTION_NOTIFICATIONS_DAYS": "14"})
    now = utcnow()
    with get_sessions(app).begin() as session:
        for run_id, age, status in (("r_old", 8, "succeeded"), ("r_new", 6, "failed"),
                                    ("r_running", 9, "running")):
            started = now - timedelta(days=age)
            # The running run is another job's, so that this run does not end it as expired.
            job = "check-upcoming-payouts" if status == "running" else "process-tasks"
            session.add(JobRun(id=run_id, job=job, trigger="cli", status=status,
                               retried=0, attempts=1, started_at=started, expires_at=started))
        for key, age, status in (("sent_old", 15, "SENT"), ("sent_new", 13, "SENT"),
                                 ("failed_old", 30, "FAILED")):
            at = now - timedelta(days=age)
            session.add(Notification(dedup_key=key, kind="payout_sent", recipient="a@b.c",
                                     payload={}, status=status, attempts=1, next_attempt_at=at,
                                     sent_at=at if status == "SENT" else None, created_at=at,
                                     updated_at=at))
        for token, age in (("jwt_old", 8), ("jwt_new", 6)):
            session.add(DeliveryToken(token_id=token, run_id="r_new",
                                      used_at=now - timedelta(days=age)))
    result = run(app, "process-tasks")
    assert (result["pruned_job_runs"], result["pruned_notifications"]) == (1, 1)
    with get_sessions(app)() as session:
        kept = set(session.scalars(select(JobRun.id)))
        tokens = set(session.scalars(select(DeliveryToken.token_id)))
    assert kept >= {"r_new", "r_running"} and "r_old" not in kept
    assert tokens == {"jwt_new"}
    assert {n.dedup_key for n in outbox_rows(app)} == {"sent_new", "failed_old"}


def test_pruning_deletes_in_batches_until_nothing_old_is_left(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "PRUNE_BATCH", 2)
    old = utcnow() - timedelta(days=40)
    with get_sessions(app).begin() as session:
        for number in range(5):
            started = old - timedelta(minutes=number)
            session.add(JobRun(id=f"old{number}", job="process-tasks", trigger="cli",
                               status="succeeded", retried=0, attempts=1, started_at=started,
                               expires_at=started))
            session.add(DeliveryToken(token_id=f"jwt_old{number}", run_id=f"old{number}",
                                      used_at=started))
    result = run(app, "process-tasks")
    assert result["pruned_job_runs"] == 5
    with get_sessions(app)() as session:
        assert not set(session.scalars(select(JobRun.id))) & {f"old{n}" for n in range(5)}
        assert session.scalars(select(DeliveryToken.token_id)).all() == []
