from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from devtools.stripe_local import StripeLocal, StripeLocalServer, serve
from service.payouts.provider import TransferRequest
from service.payouts.stripe_provider import StripePayoutProvider
from tests.helpers import AUTH
from tests.payouts.helpers import ACCOUNT, API_KEY, EXPERT


@pytest.fixture
def stripe_local() -> StripeLocal:
    return StripeLocal(api_key=API_KEY, accounts=[ACCOUNT])


@pytest.fixture
def stripe_server(stripe_local: StripeLocal) -> Iterator[StripeLocalServer]:
    with serve(stripe_local) as server:
        yield server


@pytest.fixture
def make_provider(
    stripe_server: StripeLocalServer,
) -> Iterator[Callable[..., StripePayoutProvider]]:
    providers: list[StripePayoutProvider] = []

    def make(**options: Any) -> StripePayoutProvider:
        options.setdefault("api_key", API_KEY)
        options.setdefault("api_base", stripe_server.url)
        # No SDK retries unless a test asks: they would blur the per-key call counts.
        options.setdefault("max_network_retries", 0)
        options.setdefault("timeout", 5.0)
        provider = StripePayoutProvider(**options)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        provider.close()


@pytest.fixture
def provider(make_provider: Callable[..., StripePayoutProvider]) -> StripePayoutProvider:
    return make_provider()


@pytest.fixture
def make_request() -> Callable[..., TransferRequest]:
    def make(row: str = "42", **changes: Any) -> TransferRequest:
        fields: dict[str, Any] = {
            "transfer_id": row,
            "amount": 8500,
            "currency": "eur",
            "destination_account": ACCOUNT,
            "idempotency_key": f"test:transfer:{row}",
            "transfer_group": "payment_pi_123",
            "source_transaction": None,
            "metadata": {"transfer_id": row, "expert_id": "expert_7", "payment_id": "pi_123"},
        }
        fields.update(changes)
        return TransferRequest(**fields)

    return make


@pytest.fixture
def expert(client: FlaskClient) -> dict[str, Any]:
    response = client.put("/api/experts/exp_1", json=EXPERT, headers=AUTH)
    assert response.status_code == 201
    return dict(response.get_json())
