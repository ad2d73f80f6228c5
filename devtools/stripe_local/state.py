from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .models import (
    PAYMENT_STATUSES,
    Fault,
    LocalPayment,
    PaymentStatus,
    RecordedRequest,
    State,
    StoredResponse,
    new_payment,
    new_transfer,
)
from .wire import (
    CURRENCIES,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    TRANSFER_CREATE_PARAMS,
    TRANSFER_LIST_PARAMS,
    StripeLocalError,
    check_api_key,
    error_defaults,
    expand_param,
    metadata_param,
    new_id,
    optional_str,
    positive_int,
    reject_unknown,
    required_str,
)

DEFAULT_API_KEY = "sk_test_local"


class StripeLocal:
    """An in-memory Stripe for the payout calls, thread-safe, with test controls.

    Served over HTTP by `create_app`/`serve`, it speaks Stripe's wire format: form-encoded bodies
    with bracketed keys, bearer or basic auth, Stripe's error JSON, `Request-Id` and idempotency
    headers. Other processes can drive it through JSON endpoints: `GET /_test/stats` (counts per
    idempotency key and per payout row) and `POST /_test/accounts`, `/_test/payments`,
    `/_test/faults` and `/_test/reset`. `python -m devtools.stripe_local` runs it on its own.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        accounts: Iterable[str] = (),
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        # Seconds every /v1 request waits before it is handled (outside the lock).
        self.latency = latency
        self._lock = threading.RLock()
        self._state = State(accounts=set(accounts))

    # Test controls.

    def add_account(self, account_id: str | None = None) -> str:
        """Register a connected account that transfers may be sent to, and return its id."""
        account_id = account_id or new_id("acct_", 16)
        with self._lock:
            self._state.accounts.add(account_id)
        return account_id

    def add_payment(
        self, *, amount: int = 10_000, currency: str = "eur", status: PaymentStatus = "paid"
    ) -> LocalPayment:
        """Create a succeeded PaymentIntent and its charge, then refund or dispute it as asked."""
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {PAYMENT_STATUSES}, not {status!r}")
        intent, charge = new_payment(amount=amount, currency=currency)
        intent_id, charge_id = intent["id"], charge["id"]
        with self._lock:
            self._state.charges[charge_id] = charge
            self._state.payment_intents[intent_id] = intent
        if status == "refunded":
            self.refund(intent_id)
        elif status == "partially_refunded":
            self.refund(intent_id, amount=max(amount // 2, 1))
        elif status == "disputed":
            self.dispute(intent_id)
        return LocalPayment(payment_intent_id=intent_id, charge_id=charge_id)

    def refund(self, payment_id: str, *, amount: int | None = None) -> None:
        """Refund a payment (by PaymentIntent or charge id), in full unless `amount` is given."""
        with self._lock:
            charge = self._charge_for(payment_id)
            remaining = charge["amount"] - charge["amount_refunded"]
            refund = remaining if amount is None else min(amount, remaining)
            charge["amount_refunded"] += refund
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]

    def dispute(self, payment_id: str) -> None:
        """Mark a payment (by PaymentIntent or charge id) as disputed."""
        with self._lock:
            self._charge_for(payment_id)["disputed"] = True

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        path_prefix: str = "/v1/transfers",
        method: str | None = None,
        stored: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with an error, before handling them.

        With `stored`, the error is instead the outcome of carrying the request out (a 5xx, or
        `balance_insufficient`, say): as Stripe does, a POST with an idempotency key keeps it,
        and a retry with that key and the same parameters gets it again, marked
        `Idempotent-Replayed: true`, until the key is forgotten (`expire_idempotency_keys`).
        """
        error_type, code, message = error_defaults(status, error_type=error_type, code=code,
                                                   message=message)
        self._add_fault(
            Fault(
                status=status,
                times=times,
                error_type=error_type,
                code=code,
                message=message,
                path_prefix=path_prefix,
                method=method.upper() if method else None,
                after_processing=False,
                stored=stored,
            )
        )

    def drop_next(
        self,
        *,
        times: int = 1,
        path_prefix: str = "/v1/transfers",
        method: str | None = None,
        after_processing: bool = True,
    ) -> None:
        """Close the connection without answering the next `times` matching requests.

        With `after_processing` the request takes effect first (a transfer is created and only
        its response is lost); without it the request is dropped before it is handled.
        """
        self._add_fault(
            Fault(
                status=None,
                times=times,
                error_type="",
                code=None,
                message="",
                path_prefix=path_prefix,
                method=method.upper() if method else None,
                after_processing=after_processing,
            )
        )

    def expire_idempotency_keys(self) -> None:
        """Forget every stored idempotent response, as Stripe does with keys after 24 hours."""
        with self._lock:
            self._state.idempotent.clear()

    def reset(self) -> None:
        """Forget transfers, payments, faults, counts and recorded requests; keep the accounts."""
        with self._lock:
            self._state = State(accounts=self._state.accounts)

    # Observations.

    @property
    def transfers(self) -> list[dict[str, Any]]:
        """List the transfers created, oldest first."""
        with self._lock:
            return [copy.deepcopy(t) for t in self._state.transfers.values()]

    @property
    def calls_by_idempotency_key(self) -> dict[str, int]:
        """Count the /v1 requests received per Idempotency-Key, failed ones included."""
        with self._lock:
            return dict(self._state.calls)

    @property
    def requests(self) -> list[RecordedRequest]:
        """List the /v1 requests received, oldest first."""
        with self._lock:
            return list(self._state.requests)

    def stats(self) -> dict[str, Any]:
        """Summarise calls and transfers as JSON-ready data."""
        with self._lock:
            by_row: dict[str, int] = {}
            for transfer in self._state.transfers.values():
                row = transfer["metadata"].get("transfer_id")
                if row is not None:
                    by_row[row] = by_row.get(row, 0) + 1
            return {
                "transfers": len(self._state.transfers),
                "requests": len(self._state.requests),
                "calls_by_idempotency_key": dict(self._state.calls),
                "transfer_by_idempotency_key": dict(self._state.transfer_keys),
                "transfers_by_metadata_transfer_id": by_row,
            }

    # Request handling, called by the Flask app.

    def record(
        self,
        *,
        method: str,
        path: str,
        pairs: Sequence[tuple[str, str]],
        idempotency_key: str | None,
        stripe_version: str | None,
    ) -> None:
        with self._lock:
            self._state.requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    idempotency_key=idempotency_key,
                    params=dict(pairs),
                    stripe_version=stripe_version,
                )
            )
            if idempotency_key is not None:
                self._state.calls[idempotency_key] = self._state.calls.get(idempotency_key, 0) + 1

    def authenticate(self, authorization: str | None) -> None:
        check_api_key(authorization, self.api_key)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._state.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._state.faults.remove(fault)
                    return fault
        return None

    def idempotent_post(
        self,
        *,
        key: str | None,
        path: str,
        pairs: Sequence[tuple[str, str]],
        request_id: str,
        handle: Callable[[], dict[str, Any]],
    ) -> tuple[int, str, dict[str, str]]:
        """Run `handle()` once per idempotency key and replay its stored answer afterwards."""
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise StripeLocalError(
                400,
                f"Invalid idempotency key: longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
                param="Idempotency-Key",
            )
        fingerprint = tuple(sorted(pairs))
        # Holding the lock across the handler serialises requests sharing a key, so a second
        # concurrent request sees the first one's result instead of creating a twin.
        with self._lock:
            stored = self._state.idempotent.get(key) if key is not None else None
            if stored is not None:
                if (stored.method, stored.path) != ("POST", path):
                    raise StripeLocalError(
                        400,
                        "Keys for idempotent requests can only be used for the same endpoint "
                        f"they were first used for ('POST {path}' vs '{stored.method} "
                        f"{stored.path}'). Try using a key other than '{key}' if you meant to "
                        "execute a different request.",
                        error_type="idempotency_error",
                    )
                if stored.params != fingerprint:
                    raise StripeLocalError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        f"they were first used with. Try using a key other than '{key}' if you "
                        "meant to execute a different request.",
                        error_type="idempotency_error",
                    )
                headers = {"Idempotent-Replayed": "true", "Original-Request": stored.request_id}
                return stored.status, stored.body, headers
            # Like Stripe, only requests that got past validation store a result: a success, or
            # an error that carrying the request out produced.
            try:
                status, body = 200, json.dumps(handle())
            except StripeLocalError as error:
                if not error.stored:
                    raise
                status, body = error.status, json.dumps(error.body())
            if key is not None:
                self._state.idempotent[key] = StoredResponse(
                    method="POST",
                    path=path,
                    params=fingerprint,
                    status=status,
                    body=body,
                    request_id=request_id,
                )
            return status, body, {}

    def create_transfer(
        self, params: Mapping[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        reject_unknown(params, TRANSFER_CREATE_PARAMS)
        amount = positive_int(params, "amount")
        currency = required_str(params, "currency")
        if currency not in CURRENCIES:
            raise StripeLocalError(
                400,
                f"Invalid currency: {currency}. Stripe currently supports these currencies: "
                + ", ".join(sorted(CURRENCIES)),
                param="currency",
            )
        destination = required_str(params, "destination")
        metadata = metadata_param(params.get("metadata"))
        source = optional_str(params, "source_transaction")
        group = optional_str(params, "transfer_group")
        description = optional_str(params, "description")
        with self._lock:
            if destination not in self._state.accounts:
                raise StripeLocalError(
                    400,
                    f"No such destination: '{destination}'",
                    code="resource_missing",
                    param="destination",
                )
            if source is not None:
                charge = self._state.charges.get(source)
                if charge is None:
                    raise StripeLocalError(
                        400,
                        f"No such charge: '{source}'",
                        code="resource_missing",
                        param="source_transaction",
                    )
                if charge["currency"] != currency:
                    raise StripeLocalError(
                        400,
                        "The currency of source_transaction's balance transaction "
                        f"({charge['currency']}) must be the same as the transfer currency "
                        f"({currency}).",
                        param="currency",
                    )
            transfer = new_transfer(amount=amount, currency=currency, destination=destination,
                                    description=description, metadata=metadata, source=source,
                                    group=group)
            transfer_id = transfer["id"]
            self._state.transfers[transfer_id] = transfer
            if idempotency_key is not None:
                self._state.transfer_keys[idempotency_key] = transfer_id
            return copy.deepcopy(transfer)

    def list_transfers(self, params: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(params, TRANSFER_LIST_PARAMS)
        limit = positive_int(params, "limit", default=10, maximum=100)
        destination = optional_str(params, "destination")
        group = optional_str(params, "transfer_group")
        starting_after = optional_str(params, "starting_after")
        ending_before = optional_str(params, "ending_before")
        with self._lock:
            # Newest first, like Stripe.
            matching = [
                t
                for t in reversed(self._state.transfers.values())
                if (destination is None or t["destination"] == destination)
                and (group is None or t["transfer_group"] == group)
            ]
            ids = [t["id"] for t in matching]
            cursors = (("starting_after", starting_after), ("ending_before", ending_before))
            for name, cursor in cursors:
                if cursor is not None and cursor not in self._state.transfers:
                    raise StripeLocalError(
                        400, f"No such transfer: '{cursor}'", code="resource_missing", param=name
                    )
            if starting_after is not None:
                start = ids.index(starting_after) + 1 if starting_after in ids else len(ids)
                page, has_more = matching[start : start + limit], start + limit < len(matching)
            elif ending_before is not None:
                end = ids.index(ending_before) if ending_before in ids else 0
                page, has_more = matching[max(end - limit, 0) : end], end - limit > 0
            else:
                page, has_more = matching[:limit], limit < len(matching)
            data = copy.deepcopy(page)
        return {"object": "list", "data": data, "has_more": has_more, "url": "/v1/transfers"}

    def get_transfer(self, transfer_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(params, frozenset({"expand"}))
        with self._lock:
            return copy.deepcopy(
                _existing(self._state.transfers, transfer_id, kind="transfer", param="id"))

    def get_payment_intent(self, intent_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(params, frozenset({"expand"}))
        expand = expand_param(params, allowed=frozenset({"latest_charge"}))
        with self._lock:
            intent = _existing(self._state.payment_intents, intent_id, kind="payment_intent",
                               param="intent")
            body = copy.deepcopy(intent)
            if "latest_charge" in expand and intent["latest_charge"] is not None:
                body["latest_charge"] = copy.deepcopy(self._state.charges[intent["latest_charge"]])
            return body

    def get_charge(self, charge_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(params, frozenset({"expand"}))
        expand_param(params, allowed=frozenset())
        with self._lock:
            return copy.deepcopy(
                _existing(self._state.charges, charge_id, kind="charge", param="charge"))

    def _add_fault(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._state.faults.append(fault)

    def _charge_for(self, payment_id: str) -> dict[str, Any]:
        intent = self._state.payment_intents.get(payment_id)
        charge_id = intent["latest_charge"] if intent is not None else payment_id
        charge = self._state.charges.get(charge_id)
        if charge is None:
            raise KeyError(f"unknown payment {payment_id!r}")
        return charge


def _existing(objects: Mapping[str, dict[str, Any]], object_id: str, *, kind: str,
              param: str) -> dict[str, Any]:
    """Return the stored object, or raise Stripe's 404 `resource_missing` for it."""
    found = objects.get(object_id)
    if found is None:
        raise StripeLocalError(404, f"No such {kind}: '{object_id}'", code="resource_missing",
                               param=param)
    return found
