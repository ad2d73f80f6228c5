from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select

from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.extensions import get_sessions
from service.payouts.claims import Claimed
from service.payouts.importer import import_transfers
from service.payouts.models import PaymentTransfer
from service.payouts.payrun import transfer_request
from service.payouts.provider import MAX_IDEMPOTENCY_KEY_LENGTH
from service.payouts.rules import (
    legacy_idempotency_key,
    parse_delay_table,
    payment_idempotency_key,
)
from tests.helpers import (
    AUTH,
    AppFactory,
    add_expert,
    add_transfer,
    load_transfer,
    outbox_rows,
)
from tests.payouts.helpers import run, stripe_env, transfer_posts

from .helpers import ACCOUNT


def transfer_body(payment_id: str, price: int) -> dict[str, Any]:
    return {"expert_id": "exp_1", "payment_id": payment_id, "price": price, "currency": "eur",
            "session_start_at": "2025-02-21T09:00:00Z",
            "session_end_at": "2025-02-21T10:00:00Z", "paid_at": "2025-02-20T18:30:00Z"}


def register(app: Flask, payment_id: str, price: int) -> int:
    response = app.test_client().post("/api/transfers", json=transfer_body(payment_id, price),
                                      headers=AUTH)
    assert response.status_code == 201, response.get_json()
    transfer_id: int = response.get_json()["id"]
    return transfer_id


def test_the_key_names_the_environment_and_the_payment() -> None:
    assert payment_idempotency_key("production", "pi_3Pabc") == "production:payment:pi_3Pabc"
    # Not the form of a row's key, even for a payment id made of digits.
    assert payment_idempotency_key("production", "123") != legacy_idempotency_key(
        "production", 123)
    longest = "p" * 255
    key = payment_idempotency_key("development", longest)
    assert len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
    assert key.startswith("development:payment-sha256:")
    assert key != payment_idempotency_key("development", longest[:-1] + "q")
    fits = "p" * (MAX_IDEMPOTENCY_KEY_LENGTH - len("development:payment:"))
    assert payment_idempotency_key("development", fits) == f"development:payment:{fits}"


def test_a_registered_transfer_keeps_its_payment_key(app: Flask) -> None:
    add_expert(app)
    transfer_id = register(app, "pi_keyed1", 10_000)
    assert load_transfer(app, transfer_id).idempotency_key == "development:payment:pi_keyed1"
    report = import_transfers(get_sessions(app), [(2, transfer_body("pi_keyed2", 10_000))],
                              parse_delay_table("default=7"), env="staging", from_text=False)
    assert report.created == 1
    with get_sessions(app)() as session:
        row = session.scalars(select(PaymentTransfer)
                              .where(PaymentTransfer.payment_id == "pi_keyed2")).one()
    assert row.idempotency_key == "staging:payment:pi_keyed2"


def test_a_row_registered_before_the_payment_keys_keeps_its_row_key(app: Flask) -> None:
    # Rows from before migration 0006 have no stored key; a transfer may exist under this one.
    add_expert(app)
    legacy = add_transfer(app, payment_id="pi_legacy1")
    row = load_transfer(app, legacy)
    assert row.idempotency_key is None
    claimed = Claimed(id=row.id, expert_id=row.expert_id, payment_id=row.payment_id,
                      charge_id=None, amount=row.amount, currency=row.currency, attempts=0,
                      claimed_before=False, idempotency_key=None, destination=ACCOUNT,
                      email="ana@example.com", first_name="Ana")
    assert transfer_request(claimed, "development").idempotency_key == (
        f"development:transfer:{legacy}")


def test_two_databases_against_one_stripe_account_pay_each_payment_once(
    make_app: AppFactory, env: dict[str, str], tmp_path: Path, stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    """A reset database numbers its rows from 1 again, within Stripe's 24 hours of keys."""
    before = make_app(stripe_env(env, stripe_server))
    reset = make_app(stripe_env(
        {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'reset.sqlite3'}"}, stripe_server))
    for app in (before, reset):
        add_expert(app, stripe_account_id=ACCOUNT)
    old_payment = register(before, "pi_beforeReset", 10_000)
    new_payment = register(reset, "pi_afterReset", 12_000)
    assert old_payment == new_payment  # the same row id, for two different payments

    assert run(before)["paid"] == 1
    result = run(reset)

    assert (result["paid"], result["failed"]) == (1, 0)
    paid = [load_transfer(before, old_payment), load_transfer(reset, new_payment)]
    assert [row.status for row in paid] == ["COMPLETED", "COMPLETED"]
    made = {t["metadata"]["payment_id"]: (t["id"], t["amount"]) for t in stripe_local.transfers}
    assert made == {"pi_beforeReset": (paid[0].provider_transfer_id, 8500),
                    "pi_afterReset": (paid[1].provider_transfer_id, 10_200)}
    assert [p["key"] for p in transfer_posts(stripe_local)] == [
        "development:payment:pi_beforeReset", "development:payment:pi_afterReset"]
    assert [n.kind for n in outbox_rows(reset)] == ["payout_sent"]

    # A restored copy of the first database reuses its key for the same payment: Stripe
    # answers with the transfer already made, and nothing is paid twice.
    restored = make_app(stripe_env(
        {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'restored.sqlite3'}"}, stripe_server))
    add_expert(restored, stripe_account_id=ACCOUNT)
    assert register(restored, "pi_beforeReset", 10_000) == old_payment
    assert run(restored)["paid"] == 1
    assert load_transfer(restored, old_payment).provider_transfer_id == (
        paid[0].provider_transfer_id)
    assert len(stripe_local.transfers) == 2
