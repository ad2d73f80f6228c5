from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.db import utcnow
from service.extensions import get_engine, get_payout_provider, get_sessions
from service.notifications import render_notice
from service.notifications.render import Notice
from service.payouts import payrun
from service.payouts.models import PaymentTransfer
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy
from service.payouts.provider import TransferRequest, TransferResult
from service.payouts.simulated import SimulatedPayoutProvider
from tests.helpers import (
    AUTH,
    AppFactory,
    add_expert,
    add_transfer,
    age_claims,
    load_transfer,
    outbox_rows,
    refusing,
    service_log,
)
from tests.payouts.helpers import run, stripe_env, transfer_posts

from .helpers import ACCOUNT


@pytest.fixture
def stripe_app(make_app: AppFactory, env: dict[str, str],
               stripe_server: StripeLocalServer) -> Flask:
    app = make_app(stripe_env(env, stripe_server))
    add_expert(app, "exp_1", stripe_account_id=ACCOUNT)
    return app


def make_due(app: Flask, transfer_id: int) -> None:
    with get_sessions(app).begin() as session:
        session.execute(update(PaymentTransfer).where(PaymentTransfer.id == transfer_id)
                        .values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def test_pays_exactly_the_due_transfers_once(stripe_app: Flask, stripe_local: StripeLocal) -> None:
    app = stripe_app
    payment = stripe_local.add_payment(amount=10_000, currency="eur")
    add_expert(app, "exp_off", stripe_account_id=ACCOUNT, payouts_enabled=False)
    add_expert(app, "exp_noacct", stripe_account_id=None)
    due = add_transfer(app, payment_id=payment.payment_intent_id, charge_id=payment.charge_id)
    approved_early = add_transfer(app, due=timedelta(days=5), requires_approval=True,
                                  approved_by="ops", approved_at=utcnow())
    future = add_transfer(app, due=timedelta(minutes=5))
    awaiting = add_transfer(app, requires_approval=True)
    disabled = add_transfer(app, expert_id="exp_off")
    no_account = add_transfer(app, expert_id="exp_noacct")
    backing_off = add_transfer(app, attempts=1, next_attempt_at=utcnow() + timedelta(minutes=3))
    done = add_transfer(app, status="COMPLETED", provider_transfer_id="tr_old")

    result = run(app)

    assert {k: result[k] for k in ("considered", "paid", "failed", "retried", "skipped",
                                   "remaining", "continuation")} == {
        "considered": 2, "paid": 2, "failed": 0, "retried": 0, "skipped": 2, "remaining": 0,
        "continuation": "not_needed"}
    assert sorted(o["transfer_id"] for o in result["outcomes"]) == [due, approved_early]
    assert {o["outcome"] for o in result["outcomes"]} == {"paid"}
    assert result["notifications"] == {"delivered": 2, "retrying": 0, "failed": 0}
    # Only ids and outcomes: nothing about the expert.
    assert "@example.com" not in json.dumps(result) and "Ana" not in json.dumps(result)

    posts = {p["metadata[transfer_id]"]: p for p in transfer_posts(stripe_local)}
    assert set(posts) == {str(due), str(approved_early)}
    sent = posts[str(due)]
    assert sent["key"] == f"development:transfer:{due}"
    assert (sent["amount"], sent["currency"], sent["destination"]) == ("8500", "eur", ACCOUNT)
    assert sent["transfer_group"] == f"payment_{payment.payment_intent_id}"
    assert sent["source_transaction"] == payment.charge_id
    assert sent["metadata[payment_id]"] == payment.payment_intent_id
    assert sent["metadata[expert_id]"] == "exp_1"
    assert "source_transaction" not in posts[str(approved_early)]

    by_id = {t["metadata"]["transfer_id"]: t["id"] for t in stripe_local.transfers}
    for paid in (due, approved_early):
        row = load_transfer(app, paid)
        assert (row.status, row.attempts, row.provider_transfer_id) == (
            "COMPLETED", 1, by_id[str(paid)])
        assert row.transferred_at is not None and row.claimed_by is not None
    for untouched in (future, awaiting, disabled, no_account, backing_off):
        assert load_transfer(app, untouched).status == "PENDING"
    assert load_transfer(app, done).provider_transfer_id == "tr_old"
    notices = outbox_rows(app)
    assert sorted((n.kind, n.dedup_key, n.status) for n in notices) == sorted([
        ("payout_sent", f"payout_sent:{due}", "SENT"),
        ("payout_sent", f"payout_sent:{approved_early}", "SENT")])
    assert {n.recipient for n in notices} == {"exp_1@example.com"}

    again = run(app)
    assert (again["considered"], again["paid"]) == (0, 0)
    assert len(transfer_posts(stripe_local)) == 2
    assert len(outbox_rows(app)) == 2


def test_transient_errors_back_off_keep_approval_and_fail_at_the_limit(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    app = stripe_app
    row_id = add_transfer(app, requires_approval=True, approved_by="ops", approved_at=utcnow())
    # A transient error that says nothing was made (a 429 pauses the run instead: see
    # test_a_429_pauses_the_run_instead_of_backing_rows_off).
    stripe_local.fail_next(400, code="balance_insufficient", times=3, method="POST")

    first = run(app)
    row = load_transfer(app, row_id)
    assert (first["retried"], first["outcomes"]) == (
        1, [{"transfer_id": row_id, "outcome": "retry", "code": "balance_insufficient"}])
    assert (row.status, row.attempts, row.last_error_code) == (
        "PENDING", 1, "balance_insufficient")
    assert row.approved_by == "ops" and row.approved_at is not None
    wait = row.next_attempt_at - utcnow()
    assert timedelta(minutes=9) < wait <= timedelta(minutes=10)
    # Not due again before the backoff ends.
    assert run(app)["considered"] == 0

    make_due(app, row_id)
    second = run(app)
    row = load_transfer(app, row_id)
    assert second["retried"] == 1 and (row.status, row.attempts) == ("PENDING", 2)
    assert timedelta(minutes=19) < row.next_attempt_at - utcnow() <= timedelta(minutes=20)

    make_due(app, row_id)
    third = run(app)
    row = load_transfer(app, row_id)
    assert third["failed"] == 1 and (row.status, row.attempts) == ("FAILED", 3)
    assert [r.idempotency_key for r in stripe_local.requests if r.method == "POST"] == [
        f"development:transfer:{row_id}"] * 3
    assert stripe_local.transfers == []
    [notice] = outbox_rows(app)
    assert (notice.kind, notice.dedup_key) == ("payout_failed", f"payout_failed:{row_id}")
    assert set(notice.payload) == {"first_name", "amount", "currency", "reference"}


def test_a_permanent_error_fails_at_once_without_telling_the_expert_why(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    app = stripe_app
    add_expert(app, "exp_gone", stripe_account_id="acct_1Closed")
    row_id = add_transfer(app, expert_id="exp_gone")

    result = run(app)

    assert result["outcomes"] == [
        {"transfer_id": row_id, "outcome": "failed", "code": "account_invalid"}]
    row = load_transfer(app, row_id)
    assert (row.status, row.attempts, row.last_error_code) == ("FAILED", 1, "account_invalid")
    assert "No such destination" in (row.last_error_message or "")
    [notice] = outbox_rows(app)
    email = render_notice(Notice(recipient=notice.recipient, kind=notice.kind,
                                 payload=notice.payload, dedup_key=notice.dedup_key))
    for text in (email.subject, email.text, email.html):
        assert "destination" not in text and "acct_" not in text


def test_a_lost_answer_is_found_before_paying_again(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    app = stripe_app
    row_id = add_transfer(app)
    stripe_local.drop_next(after_processing=True, method="POST")

    first = run(app)
    assert first["outcomes"] == [
        {"transfer_id": row_id, "outcome": "retry", "code": "connection_error"}]
    [created] = stripe_local.transfers  # made, but its answer was lost

    make_due(app, row_id)
    second = run(app)
    assert second["paid"] == 1
    row = load_transfer(app, row_id)
    assert (row.status, row.provider_transfer_id) == ("COMPLETED", created["id"])
    assert len(stripe_local.transfers) == 1
    # The retry looked first (GET) and did not post again.
    assert [(r.method, r.path) for r in stripe_local.requests] == [
        ("POST", "/v1/transfers"), ("GET", "/v1/transfers")]


def test_a_transfer_that_may_exist_is_never_failed_while_the_provider_cannot_say(
    stripe_app: Flask, stripe_local: StripeLocal, captured: io.StringIO
) -> None:
    # The transfer is made but its answer is lost; then every lookup fails, past the limit of
    # three attempts. Failing the row would tell a paid expert that the payout failed, and an
    # operator paying by hand would pay twice.
    app = stripe_app
    service_log(captured)
    row_id = add_transfer(app)
    stripe_local.drop_next(after_processing=True, method="POST")
    stripe_local.fail_next(503, times=3, method="GET")

    codes = []
    for _ in range(4):
        [outcome] = run(app)["outcomes"]
        codes.append((outcome["outcome"], outcome["code"]))
        make_due(app, row_id)

    assert codes == [("retry", "connection_error")] + [("retry", "provider_unavailable")] * 3
    row = load_transfer(app, row_id)
    assert (row.status, row.attempts) == ("PENDING", 4)
    assert outbox_rows(app) == []  # no "payout failed" notice
    assert captured.getvalue().count("a transfer may already exist") == 2  # attempts 3 and 4
    # The provider answers again: the transfer is found and recorded, never made twice.
    assert run(app)["paid"] == 1
    [created] = stripe_local.transfers
    assert load_transfer(app, row_id).provider_transfer_id == created["id"]
    assert [n.kind for n in outbox_rows(app)] == ["payout_sent"]
    assert [r.method for r in stripe_local.requests] == ["POST"] + ["GET"] * 4


def test_a_server_error_on_create_is_never_final(
    stripe_app: Flask, stripe_local: StripeLocal
) -> None:
    # Stripe calls a 5xx indeterminate: the transfer may have been made. Rows wait out an
    # outage however long it lasts.
    app = stripe_app
    row_id = add_transfer(app)
    stripe_local.fail_next(500, times=5, method="POST")
    for _ in range(5):
        run(app)
        make_due(app, row_id)
    row = load_transfer(app, row_id)
    assert (row.status, row.attempts, row.last_error_code) == ("PENDING", 5, "provider_unavailable")
    assert run(app)["paid"] == 1
    assert len(stripe_local.transfers) == 1


def test_a_replayed_error_uses_no_attempt_and_waits_for_the_key_to_be_forgotten(
    stripe_app: Flask, stripe_local: StripeLocal, captured: io.StringIO
) -> None:
    # The platform balance is short at the first attempt. Stripe keeps that answer under the
    # key for 24 hours, so retries within them get it again whatever the balance is by then;
    # counted as attempts, they would fail a transfer that a later try would pay.
    app = stripe_app
    service_log(captured)
    row_id = add_transfer(app)
    stripe_local.fail_next(400, code="balance_insufficient", stored=True, method="POST")

    first = run(app)
    assert first["outcomes"] == [
        {"transfer_id": row_id, "outcome": "retry", "code": "balance_insufficient"}]
    for _ in range(3):  # more replays than PAYOUT_MAX_ATTEMPTS
        make_due(app, row_id)
        assert run(app)["retried"] == 1
        row = load_transfer(app, row_id)
        assert (row.status, row.attempts) == ("PENDING", 1)
        assert timedelta(hours=5, minutes=59) < row.next_attempt_at - utcnow() <= timedelta(hours=6)
    assert captured.getvalue().count("replayed an earlier attempt's answer") == 3

    stripe_local.expire_idempotency_keys()  # 24 hours on
    make_due(app, row_id)
    assert run(app)["paid"] == 1
    assert len(stripe_local.transfers) == 1
    assert [n.kind for n in outbox_rows(app)] == ["payout_sent"]


class Interfering(SimulatedPayoutProvider):
    """A provider during whose call someone else changes the row (recovery, say)."""

    def __init__(self, app: Flask, values: dict[str, Any]) -> None:
        super().__init__()
        self.app = app
        self.values = values

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        with get_sessions(self.app).begin() as session:
            session.execute(update(PaymentTransfer)
                            .where(PaymentTransfer.id == int(request.transfer_id))
                            .values(**self.values))
        return super().create_transfer(request)


def test_an_outcome_never_overwrites_someone_elses_write(app: Flask) -> None:
    add_expert(app)
    row_id = add_transfer(app)
    provider = Interfering(app, {"status": "PENDING", "claimed_by": None})
    policy = PayoutPolicy(env="test", concurrency=2)

    report = process_due_transfers(get_engine(app), provider, policy, run_id="run-a",
                                   deadline=time.monotonic() + 30)

    assert report.to_dict()["outcomes"] == [{"transfer_id": row_id, "outcome": "conflict"}]
    assert (report.paid, report.conflicts) == (0, 1)
    row = load_transfer(app, row_id)
    assert (row.status, row.provider_transfer_id) == ("PENDING", None)
    assert outbox_rows(app) == []
    # The next run looks before paying, finds the transfer and completes the row.
    provider.values = {}
    again = process_due_transfers(get_engine(app), provider, policy, run_id="run-b",
                                  deadline=time.monotonic() + 30)
    assert again.paid == 1
    assert len(provider.transfers) == 1
    assert provider.calls_by_idempotency_key == {f"test:transfer:{row_id}": 1}
    assert load_transfer(app, row_id).status == "COMPLETED"


def test_concurrent_runs_in_threads_pay_each_row_once(app: Flask) -> None:
    add_expert(app)
    ids = {add_transfer(app) for _ in range(60)}
    provider = SimulatedPayoutProvider(latency=0.002)
    policy = PayoutPolicy(env="test", concurrency=4)
    reports: list[payrun.TransferRunReport] = []
    barrier = threading.Barrier(3)

    def work(run_id: str) -> None:
        barrier.wait()
        reports.append(process_due_transfers(get_engine(app), provider, policy, run_id=run_id,
                                             deadline=time.monotonic() + 60))

    threads = [threading.Thread(target=work, args=(f"run-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.paid for r in reports) == 60
    assert sum(r.considered for r in reports) == 60
    assert set(provider.calls_by_idempotency_key.values()) == {1}
    assert {int(k.rsplit(":", 1)[1]) for k in provider.calls_by_idempotency_key} == ids
    assert {load_transfer(app, i).status for i in ids} == {"COMPLETED"}


def test_outcomes_are_bounded_and_problems_come_first(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payrun, "MAX_OUTCOMES", 3)
    add_expert(app)
    add_expert(app, "exp_bad", stripe_account_id="acct_bad")
    for _ in range(4):
        add_transfer(app)
    failing = add_transfer(app, expert_id="exp_bad", currency="EUR")

    result = run(app)

    assert (result["paid"], result["failed"]) == (4, 1)
    assert len(result["outcomes"]) == 3
    assert result["outcomes"][0] == {"transfer_id": failing, "outcome": "failed",
                                     "code": "invalid_transfer"}
    assert result["outcomes_omitted"] == 2


def test_a_run_that_crashes_leaves_its_claims_to_recovery(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    app = make_app({**env, "PAYOUT_CONCURRENCY": "2", "PAYOUT_SIMULATED_LATENCY_MS": "20"})
    add_expert(app)
    ids = [add_transfer(app) for _ in range(10)]

    # The database refuses to record any payment: the run crashes with its claims held.
    with refusing(app, "UPDATE", "payment_transfers", when="NEW.status = 'COMPLETED'"):
        response = app.test_client().post("/api/cron/process-expert-transfers", headers=AUTH)
    assert response.status_code == 500
    statuses = [load_transfer(app, i).status for i in ids]
    assert 0 < statuses.count("PROCESSING") <= 4  # one claim of 2 x concurrency
    age_claims(app)

    maintenance = run(app, "process-tasks")
    assert (maintenance["recovered_completed"] + maintenance["recovered_released"]
            == statuses.count("PROCESSING"))
    run(app)
    assert {load_transfer(app, i).status for i in ids} == {"COMPLETED"}
    provider = get_payout_provider(app)
    assert isinstance(provider, SimulatedPayoutProvider)
    assert len(provider.transfers) == 10
    assert set(provider.calls_by_idempotency_key.values()) == {1}
