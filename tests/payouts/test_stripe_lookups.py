from __future__ import annotations

import pytest

from devtools.stripe_local import PaymentStatus, StripeLocal
from service.payouts.provider import (
    PermanentProviderError,
    TransientProviderError,
)
from service.payouts.stripe_provider import StripePayoutProvider
from service.redaction import redact_secrets
from tests.payouts.helpers import MakeRequest

from .helpers import ACCOUNT


def test_find_transfer_matches_metadata_within_the_group(
    provider: StripePayoutProvider, make_request: MakeRequest
) -> None:
    first = provider.create_transfer(make_request("1"))
    second = provider.create_transfer(make_request("2"))
    provider.create_transfer(make_request("3", transfer_group="payment_other"))

    assert provider.find_transfer(transfer_id="1", transfer_group="payment_pi_123") == first
    assert provider.find_transfer(transfer_id="2", transfer_group="payment_pi_123") == second
    assert provider.find_transfer(transfer_id="3", transfer_group="payment_pi_123") is None
    assert provider.find_transfer(transfer_id="9", transfer_group="payment_pi_123") is None


def test_find_transfer_pages_through_large_groups(
    provider: StripePayoutProvider, stripe_local: StripeLocal
) -> None:
    created = [
        stripe_local.create_transfer(
            {
                "amount": "100",
                "currency": "eur",
                "destination": ACCOUNT,
                "transfer_group": "payment_big",
                "metadata": {"transfer_id": str(n)},
            },
            f"test:transfer:{n}",
        )
        for n in range(150)
    ]

    # Stripe lists newest first, so the oldest transfer is only on the second page.
    found = provider.find_transfer(transfer_id="0", transfer_group="payment_big")

    assert found is not None and found.provider_transfer_id == created[0]["id"]
    lists = [r.params for r in stripe_local.requests if r.method == "GET"]
    assert lists[0] == {"transfer_group": "payment_big", "limit": "100"}
    assert lists[1]["starting_after"] == created[50]["id"]
    assert len(lists) == 2


def test_find_transfer_errors_are_classified(
    provider: StripePayoutProvider, stripe_local: StripeLocal
) -> None:
    stripe_local.fail_next(503, method="GET")

    with pytest.raises(TransientProviderError) as raised:
        provider.find_transfer(transfer_id="1", transfer_group="payment_pi_123")

    assert raised.value.code == "provider_unavailable"


@pytest.mark.parametrize(
    ("status", "refunded", "disputed"),
    [
        ("paid", False, False),
        ("refunded", True, False),
        ("partially_refunded", True, False),
        ("disputed", False, True),
    ],
)
def test_payment_state_of_a_payment_intent(
    provider: StripePayoutProvider,
    stripe_local: StripeLocal,
    status: PaymentStatus,
    refunded: bool,
    disputed: bool,
) -> None:
    payment = stripe_local.add_payment(amount=5000, status=status)

    by_intent = provider.payment_state(payment.payment_intent_id)
    by_charge = provider.payment_state(payment.charge_id)

    assert (by_intent.payment_id, by_intent.refunded, by_intent.disputed) == (
        payment.payment_intent_id,
        refunded,
        disputed,
    )
    assert (by_charge.payment_id, by_charge.refunded, by_charge.disputed) == (
        payment.charge_id,
        refunded,
        disputed,
    )
    intent_get, charge_get = stripe_local.requests
    assert intent_get.path == f"/v1/payment_intents/{payment.payment_intent_id}"
    assert intent_get.params == {"expand[0]": "latest_charge"}
    assert charge_get.path == f"/v1/charges/{payment.charge_id}"


def test_payment_state_follows_a_later_refund(
    provider: StripePayoutProvider, stripe_local: StripeLocal
) -> None:
    payment = stripe_local.add_payment(amount=5000)
    assert provider.payment_state(payment.payment_intent_id).refunded is False

    stripe_local.refund(payment.payment_intent_id, amount=1)

    assert provider.payment_state(payment.payment_intent_id).refunded is True


def test_payment_state_of_an_unknown_payment_is_not_found(
    provider: StripePayoutProvider,
) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        provider.payment_state("pi_missing")

    assert raised.value.code == "not_found"


def test_payment_state_rejects_other_ids_without_calling_stripe(
    provider: StripePayoutProvider, stripe_local: StripeLocal
) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        provider.payment_state("cs_checkout_session")

    assert raised.value.code == "invalid_request"
    assert stripe_local.requests == []


def test_transfer_request_validates_its_invariants(make_request: MakeRequest) -> None:
    for changes in (
        {"amount": 0},
        {"amount": -5},
        {"amount": True},
        {"amount": 10.5},
        {"currency": "EUR"},
        {"currency": "euro"},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 256},
    ):
        with pytest.raises(ValueError):
            make_request(**changes)


def test_transfer_request_keeps_its_own_copy_of_metadata(make_request: MakeRequest) -> None:
    metadata = {"transfer_id": "1"}
    request = make_request("1", metadata=metadata)

    metadata["transfer_id"] = "2"

    assert request.metadata == {"transfer_id": "1"}
    with pytest.raises(TypeError):
        request.metadata["transfer_id"] = "3"  # type: ignore[index]


def test_redact_secrets() -> None:
    text = (
        "key sk_live_abcDEF123 and rk_test_XYZ, hook whsec_abc, "
        "header Authorization: Bearer tok.en-1 and Authorization: Basic c2tfdGVzdDo="
    )

    assert redact_secrets(text) == (
        "key [redacted] and [redacted], hook [redacted], "
        "header Authorization: Bearer [redacted] and Authorization: Basic [redacted]"
    )
    # Each kind alone, in any case, as the substring checks that guard the patterns must see it.
    assert redact_secrets("AUTHORIZATION: bearer abc") == "AUTHORIZATION: bearer [redacted]"
    assert redact_secrets("whsec_abc") == "[redacted]"
    assert redact_secrets("rk_live_1") == "[redacted]"
    assert redact_secrets("task_live_1 network_test_2") == "task_live_1 network_test_2"
