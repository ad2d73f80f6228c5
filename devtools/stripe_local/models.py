from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .wire import new_id

PaymentStatus = Literal["paid", "refunded", "partially_refunded", "disputed"]
PAYMENT_STATUSES: tuple[PaymentStatus, ...] = ("paid", "refunded", "partially_refunded", "disputed")


@dataclass(frozen=True, kw_only=True)
class RecordedRequest:
    """One request received on /v1, as the double parsed it."""

    method: str
    path: str
    idempotency_key: str | None
    params: Mapping[str, str]
    stripe_version: str | None


@dataclass(frozen=True, kw_only=True)
class LocalPayment:
    """Ids of a payment created with :meth:`StripeLocal.add_payment`."""

    payment_intent_id: str
    charge_id: str


@dataclass(kw_only=True)
class Fault:
    """An error or a dropped connection waiting for the next matching requests."""

    status: int | None  # None drops the connection instead of answering
    times: int
    error_type: str
    code: str | None
    message: str
    path_prefix: str
    method: str | None
    after_processing: bool
    stored: bool = False

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.method in (None, method)


@dataclass(frozen=True, kw_only=True)
class StoredResponse:
    """The answer kept under an idempotency key, replayed to a retry with that key."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    status: int
    body: str
    request_id: str


@dataclass(kw_only=True)
class State:
    """Everything the double holds; replaced whole by `StripeLocal.reset`."""

    accounts: set[str] = field(default_factory=set)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_keys: dict[str, str] = field(default_factory=dict)
    idempotent: dict[str, StoredResponse] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)


def new_payment(*, amount: int, currency: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a succeeded PaymentIntent and its captured charge, as Stripe shows them."""
    created = int(time.time())
    intent_id, charge_id = new_id("pi_"), new_id("ch_")
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "captured": True,
        "created": created,
        "currency": currency,
        "disputed": False,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": intent_id,
        "refunded": False,
        "status": "succeeded",
        "transfer_group": None,
    }
    intent = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "created": created,
        "currency": currency,
        "latest_charge": charge_id,
        "livemode": False,
        "metadata": {},
        "status": "succeeded",
        "transfer_group": None,
    }
    return intent, charge


def new_transfer(
    *,
    amount: int,
    currency: str,
    destination: str,
    description: str | None,
    metadata: Mapping[str, str],
    source: str | None,
    group: str | None,
) -> dict[str, Any]:
    """Return a new transfer object, as Stripe shows it."""
    transfer_id = new_id("tr_")
    return {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": 0,
        "balance_transaction": new_id("txn_"),
        "created": int(time.time()),
        "currency": currency,
        "description": description,
        "destination": destination,
        "destination_payment": new_id("py_"),
        "livemode": False,
        "metadata": dict(metadata),
        "reversals": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/transfers/{transfer_id}/reversals",
        },
        "reversed": False,
        "source_transaction": source,
        "source_type": "card",
        "transfer_group": group,
    }
