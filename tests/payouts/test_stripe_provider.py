from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from devtools.stripe_local import StripeLocal
from service.payouts.provider import (
    PayoutProvider,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from service.payouts.stripe_provider import StripePayoutProvider
from tests.payouts.helpers import MakeRequest

from .helpers import ACCOUNT, API_KEY

MakeProvider = Callable[..., StripePayoutProvider]


def transfer_posts(stripe_local: StripeLocal) -> list[str | None]:
    return [
        r.idempotency_key
        for r in stripe_local.requests
        if (r.method, r.path) == ("POST", "/v1/transfers")
    ]


def test_provider_satisfies_the_protocol(provider: StripePayoutProvider) -> None:
    as_protocol: PayoutProvider = provider
    assert as_protocol.name == "stripe"


def test_create_transfer_sends_the_form_parameters_and_idempotency_key(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    payment = stripe_local.add_payment(amount=10_000, currency="eur")
    request = make_request(
        "42", source_transaction=payment.charge_id, idempotency_key="staging:transfer:42"
    )

    result = provider.create_transfer(request)

    [sent] = stripe_local.requests
    assert (sent.method, sent.path) == ("POST", "/v1/transfers")
    assert sent.idempotency_key == "staging:transfer:42"
    assert sent.params == {
        "amount": "8500",
        "currency": "eur",
        "destination": ACCOUNT,
        "transfer_group": "payment_pi_123",
        "source_transaction": payment.charge_id,
        "metadata[transfer_id]": "42",
        "metadata[expert_id]": "expert_7",
        "metadata[payment_id]": "pi_123",
    }
    [transfer] = stripe_local.transfers
    assert result.provider_transfer_id == transfer["id"]
    assert result.provider_transfer_id.startswith("tr_")
    assert (result.amount, result.currency) == (8500, "eur")
    assert transfer["destination"] == ACCOUNT
    assert transfer["source_transaction"] == payment.charge_id
    assert transfer["metadata"] == {
        "transfer_id": "42",
        "expert_id": "expert_7",
        "payment_id": "pi_123",
    }


def test_create_transfer_omits_a_missing_source_transaction(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    provider.create_transfer(make_request(source_transaction=None))

    [sent] = stripe_local.requests
    assert "source_transaction" not in sent.params
    assert stripe_local.transfers[0]["source_transaction"] is None


def test_the_same_key_twice_creates_one_transfer(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    first = provider.create_transfer(make_request("7"))
    second = provider.create_transfer(make_request("7"))

    assert first == second
    assert len(stripe_local.transfers) == 1
    assert stripe_local.calls_by_idempotency_key == {"test:transfer:7": 2}


def test_different_keys_create_different_transfers(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    first = provider.create_transfer(make_request("1"))
    second = provider.create_transfer(make_request("2"))

    assert first.provider_transfer_id != second.provider_transfer_id
    assert stripe_local.stats()["transfers_by_metadata_transfer_id"] == {"1": 1, "2": 1}


@pytest.mark.parametrize("fault", [
    pytest.param(lambda local: local.fail_next(500), id="server error"),
    # The transfer was made; the retry replays it.
    pytest.param(lambda local: local.drop_next(after_processing=True), id="lost response"),
])
def test_sdk_retries_with_the_same_key_and_one_transfer_is_made(
    make_provider: MakeProvider, stripe_local: StripeLocal, make_request: MakeRequest,
    fault: Callable[[StripeLocal], None],
) -> None:
    provider = make_provider(max_network_retries=2)
    fault(stripe_local)

    result = provider.create_transfer(make_request("9"))

    assert transfer_posts(stripe_local) == ["test:transfer:9", "test:transfer:9"]
    [transfer] = stripe_local.transfers
    assert result.provider_transfer_id == transfer["id"]


def test_an_error_stripe_stored_under_the_key_is_answered_again_as_a_replay(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    # Stripe keeps what carrying a request out produced, errors included, under its key.
    stripe_local.fail_next(400, code="balance_insufficient", stored=True)

    errors = []
    for _ in range(2):
        with pytest.raises(TransientProviderError) as raised:
            provider.create_transfer(make_request("5"))
        errors.append(raised.value)
    stripe_local.expire_idempotency_keys()
    result = provider.create_transfer(make_request("5"))  # Stripe forgot the key: a fresh try

    assert [(e.code, e.replayed, e.outcome_unknown) for e in errors] == [
        ("balance_insufficient", False, False), ("balance_insufficient", True, False)]
    [transfer] = stripe_local.transfers
    assert result.provider_transfer_id == transfer["id"]


def test_a_lost_response_is_transient_and_the_next_call_finds_the_transfer(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    stripe_local.drop_next(after_processing=True)

    with pytest.raises(TransientProviderError) as raised:
        provider.create_transfer(make_request("5"))

    assert raised.value.code == "connection_error"
    [transfer] = stripe_local.transfers
    found = provider.find_transfer(transfer_id="5", transfer_group="payment_pi_123")
    assert found is not None and found.provider_transfer_id == transfer["id"]
    again = provider.create_transfer(make_request("5"))
    assert again.provider_transfer_id == transfer["id"]
    assert len(stripe_local.transfers) == 1


def test_a_request_dropped_before_processing_creates_nothing(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    stripe_local.drop_next(after_processing=False)

    with pytest.raises(TransientProviderError) as raised:
        provider.create_transfer(make_request("5"))

    assert raised.value.code == "connection_error"
    assert stripe_local.transfers == []
    assert provider.find_transfer(transfer_id="5", transfer_group="payment_pi_123") is None


@pytest.mark.parametrize(
    ("status", "options", "kind", "code"),
    [
        (429, {}, TransientProviderError, "rate_limited"),
        (500, {}, TransientProviderError, "provider_unavailable"),
        (503, {}, TransientProviderError, "provider_unavailable"),
        (409, {"error_type": "api_error"}, TransientProviderError, "conflict"),
        (400, {"code": "balance_insufficient"}, TransientProviderError, "balance_insufficient"),
        (400, {"code": "account_invalid"}, PermanentProviderError, "account_invalid"),
        (400, {"code": "parameter_invalid_integer"}, PermanentProviderError, "invalid_request"),
        (400, {"error_type": "idempotency_error"}, PermanentProviderError, "idempotency_conflict"),
        (401, {}, PermanentProviderError, "authentication_failed"),
        (402, {"error_type": "card_error"}, PermanentProviderError, "card_error"),
        (403, {}, PermanentProviderError, "permission_denied"),
        (404, {"code": "resource_missing"}, PermanentProviderError, "not_found"),
    ],
)
def test_stripe_errors_are_classified(
    provider: StripePayoutProvider,
    stripe_local: StripeLocal,
    make_request: MakeRequest,
    status: int,
    options: dict[str, Any],
    kind: type[ProviderError],
    code: str,
) -> None:
    stripe_local.fail_next(status, **options)

    with pytest.raises(ProviderError) as raised:
        provider.create_transfer(make_request())

    error = raised.value
    assert type(error) is kind
    assert error.code == code
    assert error.retryable is (kind is TransientProviderError)
    assert error.http_status == status
    assert error.request_id is not None and error.request_id.startswith("req_")
    # Only a 5xx (or a 409: the same key in flight) leaves open whether Stripe made the transfer.
    assert error.outcome_unknown is (status >= 500 or status == 409)
    assert stripe_local.transfers == []


def test_rate_limit_keeps_stripe_code_and_request_id_for_logs(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    stripe_local.fail_next(429)

    with pytest.raises(TransientProviderError) as raised:
        provider.create_transfer(make_request())

    error = raised.value
    assert error.provider_code == "rate_limit"
    assert error.request_id is not None
    assert error.request_id in str(error)
    assert str(error).startswith("rate_limited: ")


def test_connection_refused_is_transient(
    make_provider: MakeProvider, make_request: MakeRequest
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    provider = make_provider(api_base=f"http://127.0.0.1:{closed_port}")

    with pytest.raises(TransientProviderError) as raised:
        provider.create_transfer(make_request())

    assert raised.value.code == "connection_error"
    assert raised.value.retryable is True


def test_a_timeout_is_transient(
    make_provider: MakeProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    provider = make_provider(timeout=0.1)
    stripe_local.latency = 0.4

    with pytest.raises(TransientProviderError) as raised:
        provider.payment_state("pi_slow")

    assert raised.value.code == "connection_error"
    assert raised.value.outcome_unknown  # the request may have reached Stripe
    assert "timed out" in str(raised.value).lower()


def test_unknown_destination_is_permanent(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request(destination_account="acct_unknown"))

    error = raised.value
    assert error.code == "account_invalid"
    assert error.provider_code == "resource_missing"
    assert error.http_status == 400
    assert "acct_unknown" in str(error)
    assert stripe_local.transfers == []


def test_unknown_source_charge_is_permanent(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request(source_transaction="ch_missing"))

    assert raised.value.code == "not_found"
    assert stripe_local.transfers == []


def test_a_key_reused_with_other_parameters_is_an_idempotency_conflict(
    provider: StripePayoutProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    provider.create_transfer(make_request("3", amount=1000))

    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request("3", amount=2000))

    assert raised.value.code == "idempotency_conflict"
    assert raised.value.http_status == 400
    assert [t["amount"] for t in stripe_local.transfers] == [1000]


def test_a_wrong_api_key_is_permanent_and_never_shown(
    make_provider: MakeProvider, stripe_local: StripeLocal, make_request: MakeRequest
) -> None:
    wrong_key = "sk_test_wrongKeyThatMustStaySecret99"
    provider = make_provider(api_key=wrong_key)

    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request())

    error = raised.value
    assert error.code == "authentication_failed"
    assert error.http_status == 401
    for text in (str(error), repr(error), *map(str, error.args)):
        assert wrong_key not in text
        assert API_KEY not in text
    assert wrong_key not in repr(provider)
    assert stripe_local.transfers == []


@pytest.mark.parametrize("key", [API_KEY, "opaque-secret-without-stripe-prefix"])
def test_an_api_key_echoed_by_the_server_is_redacted(
    make_provider: MakeProvider, stripe_local: StripeLocal, make_request: MakeRequest, key: str
) -> None:
    stripe_local.api_key = key
    provider = make_provider(api_key=key)
    stripe_local.fail_next(401, message=f"Invalid API Key provided: {key}")

    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request())

    assert "Invalid API Key provided: [redacted]" in str(raised.value)
    assert key not in str(raised.value)
    assert key not in repr(raised.value)
