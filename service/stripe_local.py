from __future__ import annotations

import argparse
import base64
import binascii
import copy
import json
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .serving import RunningServer, start_thread

DEFAULT_API_KEY = "sk_test_local"
PaymentStatus = Literal["paid", "refunded", "partially_refunded", "disputed"]
PAYMENT_STATUSES: tuple[PaymentStatus, ...] = ("paid", "refunded", "partially_refunded", "disputed")
# A subset of Stripe's currencies, enough to reject typos and uppercase codes the way Stripe does.
CURRENCIES = frozenset("aud brl cad chf czk dkk eur gbp jpy mxn nok nzd pln sek usd".split())
TRANSFER_CREATE_PARAMS = frozenset(
    "amount currency destination description metadata source_transaction source_type"
    " transfer_group expand".split()
)
TRANSFER_LIST_PARAMS = frozenset(
    "destination transfer_group limit starting_after ending_before expand".split()
)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_ID_ALPHABET = string.ascii_letters + string.digits
_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Invalid API Key provided.",
    402: "Your card was declined.",
    403: "The provided key does not have the required permissions for this endpoint.",
    404: "Unrecognized request URL.",
    409: "There is currently another in-progress request using this Idempotent Key.",
    429: "Request rate limit exceeded. Learn more about rate limits here "
    "https://stripe.com/docs/rate-limits.",
}


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _mask_key(key: str) -> str:
    # Stripe shows only the key's prefix and last four characters in its 401 message.
    prefix, _, rest = key.rpartition("_")
    shown = rest[-4:] if len(rest) > 4 else ""
    return f"{prefix}_{'*' * max(len(rest) - len(shown), 4)}{shown}" if prefix else "*" * 8


class StripeLocalError(Exception):
    """An error answered in Stripe's shape: {"error": {"type", "code", "message", "param"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        stored: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        # The outcome of a request Stripe began to carry out: kept under its idempotency key.
        self.stored = stored

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


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
class _Fault:
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
class _StoredResponse:
    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    status: int
    body: str
    request_id: str


@dataclass(kw_only=True)
class _State:
    accounts: set[str] = field(default_factory=set)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_keys: dict[str, str] = field(default_factory=dict)
    idempotent: dict[str, _StoredResponse] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)


class StripeLocal:
    """An in-memory Stripe for the payout calls, thread-safe, with test controls.

    Served over HTTP by `create_app`/`serve`, it speaks Stripe's wire format: form-encoded bodies
    with bracketed keys, bearer or basic auth, Stripe's error JSON, `Request-Id` and idempotency
    headers. Other processes can drive it through JSON endpoints: `GET /_test/stats` (counts per
    idempotency key and per ledger row) and `POST /_test/accounts`, `/_test/payments`,
    `/_test/faults` and `/_test/reset`. `python -m service.stripe_local` runs it on its own.
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
        self._state = _State(accounts=set(accounts))

    # Test controls.

    def add_account(self, account_id: str | None = None) -> str:
        """Register a connected account that transfers may be sent to, and return its id."""
        account_id = account_id or _new_id("acct_", 16)
        with self._lock:
            self._state.accounts.add(account_id)
        return account_id

    def add_payment(
        self, *, amount: int = 10_000, currency: str = "eur", status: PaymentStatus = "paid"
    ) -> LocalPayment:
        """Create a succeeded PaymentIntent and its charge, then refund or dispute it as asked."""
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {PAYMENT_STATUSES}, not {status!r}")
        created = int(time.time())
        intent_id, charge_id = _new_id("pi_"), _new_id("ch_")
        with self._lock:
            self._state.charges[charge_id] = {
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
            self._state.payment_intents[intent_id] = {
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
        if error_type is None:
            error_type = "api_error" if status >= 500 else "invalid_request_error"
        if code is None and status == 429:
            code = "rate_limit"
        if message is None:
            message = _DEFAULT_MESSAGES.get(
                status, "An unknown error occurred" if status >= 500 else "Invalid request."
            )
        self._add_fault(
            _Fault(
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
            _Fault(
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
            self._state = _State(accounts=self._state.accounts)

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
        key = _key_from_authorization(authorization)
        if key is None:
            raise StripeLocalError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise StripeLocalError(401, f"Invalid API Key provided: {_mask_key(key)}")

    def take_fault(self, method: str, path: str) -> _Fault | None:
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
                self._state.idempotent[key] = _StoredResponse(
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
        _reject_unknown(params, TRANSFER_CREATE_PARAMS)
        amount = _positive_int(params, "amount")
        currency = _required(params, "currency")
        if currency not in CURRENCIES:
            raise StripeLocalError(
                400,
                f"Invalid currency: {currency}. Stripe currently supports these currencies: "
                + ", ".join(sorted(CURRENCIES)),
                param="currency",
            )
        destination = _required(params, "destination")
        metadata = _metadata(params.get("metadata"))
        source = _optional_str(params, "source_transaction")
        group = _optional_str(params, "transfer_group")
        description = _optional_str(params, "description")
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
            transfer_id = _new_id("tr_")
            transfer = {
                "id": transfer_id,
                "object": "transfer",
                "amount": amount,
                "amount_reversed": 0,
                "balance_transaction": _new_id("txn_"),
                "created": int(time.time()),
                "currency": currency,
                "description": description,
                "destination": destination,
                "destination_payment": _new_id("py_"),
                "livemode": False,
                "metadata": metadata,
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
            self._state.transfers[transfer_id] = transfer
            if idempotency_key is not None:
                self._state.transfer_keys[idempotency_key] = transfer_id
            return copy.deepcopy(transfer)

    def list_transfers(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _reject_unknown(params, TRANSFER_LIST_PARAMS)
        limit = _positive_int(params, "limit", default=10, maximum=100)
        destination = _optional_str(params, "destination")
        group = _optional_str(params, "transfer_group")
        starting_after = _optional_str(params, "starting_after")
        ending_before = _optional_str(params, "ending_before")
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
        _reject_unknown(params, frozenset({"expand"}))
        with self._lock:
            transfer = self._state.transfers.get(transfer_id)
            if transfer is None:
                raise StripeLocalError(
                    404, f"No such transfer: '{transfer_id}'", code="resource_missing", param="id"
                )
            return copy.deepcopy(transfer)

    def get_payment_intent(self, intent_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        _reject_unknown(params, frozenset({"expand"}))
        expand = _expand(params, allowed=frozenset({"latest_charge"}))
        with self._lock:
            intent = self._state.payment_intents.get(intent_id)
            if intent is None:
                raise StripeLocalError(
                    404,
                    f"No such payment_intent: '{intent_id}'",
                    code="resource_missing",
                    param="intent",
                )
            body = copy.deepcopy(intent)
            if "latest_charge" in expand and intent["latest_charge"] is not None:
                body["latest_charge"] = copy.deepcopy(self._state.charges[intent["latest_charge"]])
            return body

    def get_charge(self, charge_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        _reject_unknown(params, frozenset({"expand"}))
        _expand(params, allowed=frozenset())
        with self._lock:
            charge = self._state.charges.get(charge_id)
            if charge is None:
                raise StripeLocalError(
                    404, f"No such charge: '{charge_id}'", code="resource_missing", param="charge"
                )
            return copy.deepcopy(charge)

    def _add_fault(self, fault: _Fault) -> None:
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


def _key_from_authorization(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Basic auth carries the key as the user name and an empty password.
        return decoded.partition(":")[0] or None
    return None


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode Stripe's form encoding (`metadata[k]=v`, `expand[]=x`, `expand[0]=x`) into dicts."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _KEY_RE.fullmatch(raw_key)
        if match is None:
            raise StripeLocalError(400, f"Invalid parameter name: {raw_key}", param=raw_key)
        name, brackets = match.groups()
        parts = re.findall(r"\[([^\[\]]*)\]", brackets)
        target, key = root, name
        for part in parts:
            container = target.setdefault(key, {})
            if not isinstance(container, dict):
                raise StripeLocalError(400, f"Invalid hash: {raw_key}", param=raw_key)
            target, key = container, part or str(len(container))
        if isinstance(target.get(key), dict):
            raise StripeLocalError(400, f"Invalid hash: {raw_key}", param=raw_key)
        target[key] = value
    return root


def _reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeLocalError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _required(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise StripeLocalError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    if not isinstance(value, str):
        raise StripeLocalError(
            400, f"Invalid string: {name}", code="parameter_invalid_string", param=name
        )
    return value


def _optional_str(params: Mapping[str, Any], name: str) -> str | None:
    return _required(params, name) if params.get(name) not in (None, "") else None


def _positive_int(
    params: Mapping[str, Any], name: str, *, default: int | None = None, maximum: int | None = None
) -> int:
    if default is not None and params.get(name) in (None, ""):
        return default
    raw = _required(params, name)
    if not re.fullmatch(r"-?\d+", raw):
        raise StripeLocalError(
            400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name
        )
    value = int(raw)
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and less than or equal to {maximum}" if maximum is not None else ""
        raise StripeLocalError(
            400,
            f"This value must be greater than or equal to 1{bound}.",
            code="parameter_invalid_integer",
            param=name,
        )
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise StripeLocalError(400, "Invalid metadata: must be a hash of strings", param="metadata")
    return dict(value)


def _expand(params: Mapping[str, Any], *, allowed: frozenset[str]) -> list[str]:
    value = params.get("expand")
    if value is None:
        return []
    if isinstance(value, dict):
        items = [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else -1)]
    else:
        items = [value]
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise StripeLocalError(
                400, f"This property cannot be expanded ({item}).", param="expand"
            )
    return items


def create_app(stripe: StripeLocal) -> Flask:
    """Build the WSGI app serving `stripe` over Stripe's HTTP API."""
    app = Flask(__name__)
    app.extensions["stripe_local"] = stripe

    def error_response(error: StripeLocalError) -> Response:
        return Response(json.dumps(error.body()), error.status, mimetype="application/json")

    def json_response(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status, mimetype="application/json")

    def drop_connection() -> Response:
        sock = request.environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            # Both directions: the client sees the connection close with no response at all.
            sock.shutdown(socket.SHUT_RDWR)
        return Response(b"", 500)

    def pairs() -> list[tuple[str, str]]:
        source = request.form if request.method == "POST" else request.args
        return list(source.items(multi=True))

    @app.before_request
    def receive() -> Response | None:
        g.request_id = _new_id("req_", 14)
        if not request.path.startswith("/v1/"):
            return None
        stripe.record(
            method=request.method,
            path=request.path,
            pairs=pairs(),
            idempotency_key=request.headers.get("Idempotency-Key"),
            stripe_version=request.headers.get("Stripe-Version"),
        )
        if stripe.latency:
            time.sleep(stripe.latency)
        stripe.authenticate(request.headers.get("Authorization"))
        fault = stripe.take_fault(request.method, request.path)
        if fault is None:
            return None
        if fault.stored and fault.status is not None and request.method == "POST":
            g.outcome = StripeLocalError(fault.status, fault.message, error_type=fault.error_type,
                                         code=fault.code, stored=True)
            return None
        if fault.status is None:
            if fault.after_processing:
                g.drop = True
                return None
            return drop_connection()
        return error_response(
            StripeLocalError(
                fault.status, fault.message, error_type=fault.error_type, code=fault.code
            )
        )

    @app.after_request
    def send(response: Response) -> Response:
        response.headers["Request-Id"] = g.get("request_id", "")
        if request.method == "POST" and "Idempotency-Key" in request.headers:
            response.headers["Idempotency-Key"] = request.headers["Idempotency-Key"]
        if g.get("drop"):
            return drop_connection()
        return response

    @app.errorhandler(StripeLocalError)
    def stripe_error(error: StripeLocalError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return error_response(
            StripeLocalError(
                error.code or 500,
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )
        )

    @app.post("/v1/transfers")
    def create_transfer() -> Response:
        key = request.headers.get("Idempotency-Key")
        received = pairs()
        params = decode_params(received)

        def handle() -> dict[str, Any]:
            outcome = g.pop("outcome", None)
            if outcome is not None:  # a stored fault: the request's outcome is this error
                raise outcome
            return stripe.create_transfer(params, key)

        status, body, headers = stripe.idempotent_post(
            key=key,
            path=request.path,
            pairs=received,
            request_id=g.request_id,
            handle=handle,
        )
        return Response(body, status, headers=headers, mimetype="application/json")

    @app.get("/v1/transfers")
    def list_transfers() -> Response:
        return json_response(stripe.list_transfers(decode_params(pairs())))

    @app.get("/v1/transfers/<transfer_id>")
    def get_transfer(transfer_id: str) -> Response:
        return json_response(stripe.get_transfer(transfer_id, decode_params(pairs())))

    @app.get("/v1/payment_intents/<intent_id>")
    def get_payment_intent(intent_id: str) -> Response:
        return json_response(stripe.get_payment_intent(intent_id, decode_params(pairs())))

    @app.get("/v1/charges/<charge_id>")
    def get_charge(charge_id: str) -> Response:
        return json_response(stripe.get_charge(charge_id, decode_params(pairs())))

    @app.get("/_test/stats")
    def stats() -> Response:
        return json_response(stripe.stats())

    @app.post("/_test/accounts")
    def add_account() -> Response:
        body = request.get_json(silent=True) or {}
        return json_response({"id": stripe.add_account(body.get("id"))})

    @app.post("/_test/payments")
    def add_payment() -> Response:
        body = request.get_json(silent=True) or {}
        try:
            payment = stripe.add_payment(
                amount=int(body.get("amount", 10_000)),
                currency=str(body.get("currency", "eur")),
                status=body.get("status", "paid"),
            )
        except ValueError as exc:
            raise StripeLocalError(400, str(exc)) from exc
        return json_response(
            {"payment_intent": payment.payment_intent_id, "charge": payment.charge_id}
        )

    @app.post("/_test/faults")
    def add_fault() -> Response:
        body = request.get_json(silent=True) or {}
        times = int(body.get("times", 1))
        path_prefix = str(body.get("path_prefix", "/v1/transfers"))
        method = body.get("method")
        if body.get("drop"):
            stripe.drop_next(
                times=times,
                path_prefix=path_prefix,
                method=method,
                after_processing=bool(body.get("after_processing", True)),
            )
        else:
            stripe.fail_next(
                int(body.get("status", 500)),
                times=times,
                error_type=body.get("error_type"),
                code=body.get("code"),
                message=body.get("message"),
                path_prefix=path_prefix,
                method=method,
                stored=bool(body.get("stored", False)),
            )
        return json_response({"ok": True})

    @app.post("/_test/reset")
    def reset() -> Response:
        stripe.reset()
        return json_response({"ok": True})

    return app


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request drowns test output; errors are still logged.
        pass


class StripeLocalServer(RunningServer):
    """A running stripe_local on a background thread; stop it with `shutdown()` or `with`."""

    def __init__(self, state: StripeLocal, server: BaseWSGIServer) -> None:
        super().__init__(server, start_thread(server))
        self.state = state


def serve(
    state: StripeLocal | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> StripeLocalServer:
    """Serve `state` (a fresh StripeLocal by default) on a background thread; port 0 picks one."""
    if state is None:
        state = StripeLocal()
    server = make_server(
        host, port, create_app(state), threaded=True, request_handler=_QuietRequestHandler
    )
    return StripeLocalServer(state, server)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve stripe_local in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m service.stripe_local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--account", action="append", default=[], help="connected account id")
    args = parser.parse_args(argv)
    state = StripeLocal(api_key=args.api_key, accounts=args.account)
    server = make_server(args.host, args.port, create_app(state), threaded=True)
    print(f"stripe_local listening on http://{args.host}:{server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
