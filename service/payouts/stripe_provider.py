from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import stripe

from .provider import (
    PaymentState,
    PermanentProviderError,
    ProviderError,
    TransferRequest,
    TransferResult,
    TransientProviderError,
)

if TYPE_CHECKING:
    from stripe.params import TransferCreateParams

# Invalid-request codes that mean the destination account cannot receive the transfer: the expert
# has to fix their account, retrying will not.
ACCOUNT_ERROR_CODES = frozenset(
    {"account_invalid", "insufficient_capabilities_for_transfer", "transfers_not_allowed"}
)
# Invalid-request codes that clear up by themselves: the platform balance is refilled by incoming
# payments, and a lock is released when the competing request ends.
TRANSIENT_REQUEST_CODES = frozenset({"balance_insufficient", "lock_timeout"})
_WHITESPACE_RE = re.compile(r"\s+")


class StripePayoutProvider:
    """Pay experts with Stripe Connect transfers from the platform balance."""

    name = "stripe"

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout: float = 20.0,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        self._api_key = api_key
        self._http_client = stripe.RequestsClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=self._http_client,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def close(self) -> None:
        """Close the calling thread's pooled HTTP connections."""
        # The SDK leaves this method unannotated.
        self._http_client.close()  # type: ignore[no-untyped-call]

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        """Create the transfer; a repeat with the same idempotency key returns the first one."""
        params: TransferCreateParams = {
            "amount": request.amount,
            "currency": request.currency,
            "destination": request.destination_account,
            "transfer_group": request.transfer_group,
            "metadata": dict(request.metadata),
        }
        if request.source_transaction:
            params["source_transaction"] = request.source_transaction
        try:
            # The SDK resends this same key on its own network retries, so they cannot pay twice.
            transfer = self._client.v1.transfers.create(
                params, options={"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            raise self._translate(exc) from exc
        return _transfer_result(transfer)

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        """Return the transfer whose metadata names transfer row `transfer_id`, if one was made."""
        try:
            page = self._client.v1.transfers.list({"transfer_group": transfer_group, "limit": 100})
            for transfer in page.auto_paging_iter():
                metadata = transfer.metadata
                if "transfer_id" in metadata and metadata["transfer_id"] == transfer_id:
                    return _transfer_result(transfer)
        except stripe.StripeError as exc:
            raise self._translate(exc) from exc
        return None

    def payment_state(self, payment_id: str) -> PaymentState:
        """Report whether a PaymentIntent (`pi_`) or charge (`ch_`) was refunded or disputed."""
        try:
            if payment_id.startswith("pi_"):
                intent = self._client.v1.payment_intents.retrieve(
                    payment_id, {"expand": ["latest_charge"]}
                )
                latest = intent.latest_charge
                if latest is None:
                    # Never charged: nothing can have been refunded or disputed.
                    return PaymentState(payment_id=payment_id, refunded=False, disputed=False)
                charge = (
                    self._client.v1.charges.retrieve(latest) if isinstance(latest, str) else latest
                )
            elif payment_id.startswith(("ch_", "py_")):
                charge = self._client.v1.charges.retrieve(payment_id)
            else:
                raise PermanentProviderError(
                    f"{payment_id!r} is neither a PaymentIntent nor a charge id",
                    code="invalid_request",
                )
        except stripe.StripeError as exc:
            raise self._translate(exc) from exc
        return PaymentState(
            payment_id=payment_id,
            refunded=bool(charge.refunded or charge.amount_refunded > 0),
            disputed=bool(charge.disputed),
        )

    def _translate(self, exc: stripe.StripeError) -> ProviderError:
        error = exc.error
        provider_code = exc.code or (error.code if error is not None else None)
        param = error.param if error is not None else None
        message = _WHITESPACE_RE.sub(" ", exc.user_message or type(exc).__name__).strip()
        # Stripe masks keys in its own messages; this also covers keys of any other shape.
        message = message.replace(self._api_key, "[redacted]")
        kind: type[ProviderError] = PermanentProviderError
        # Stripe may have carried out a request whose answer was lost, that failed on its side
        # (5xx: Stripe calls the outcome indeterminate) or that another request with the same
        # key is still carrying out (409). Every other error means nothing was done.
        unknown = False
        retry_after = None
        if isinstance(exc, stripe.RateLimitError):
            kind, code = TransientProviderError, "rate_limited"
            retry_after = _retry_after(exc.headers)
        elif isinstance(exc, stripe.APIConnectionError):
            kind, code, unknown = TransientProviderError, "connection_error", True
        elif isinstance(exc, stripe.APIError):
            # 409: a concurrent request with the same idempotency key is still running.
            code = "conflict" if exc.http_status == 409 else "provider_unavailable"
            kind, unknown = TransientProviderError, True
        elif isinstance(exc, stripe.IdempotencyError):
            code = "idempotency_conflict"
        elif isinstance(exc, stripe.InvalidRequestError):
            code = _invalid_request_code(provider_code, param, exc.http_status)
            if provider_code in TRANSIENT_REQUEST_CODES:
                kind = TransientProviderError
        elif isinstance(exc, stripe.AuthenticationError):
            code = "authentication_failed"
        elif isinstance(exc, stripe.PermissionError):
            code = "permission_denied"
        elif isinstance(exc, stripe.CardError):
            code = "card_error"
        else:
            code = "provider_error"
        return kind(
            message,
            code=code,
            provider_code=provider_code,
            request_id=exc.request_id,
            http_status=exc.http_status,
            outcome_unknown=unknown,
            # Stripe keeps the outcome of a request it began to carry out, errors included, for
            # 24 hours under its idempotency key, and answers a retry with it.
            replayed=any(name.lower() == "idempotent-replayed" and str(value).lower() == "true"
                         for name, value in (exc.headers or {}).items()),
            retry_after=retry_after,
        )


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Read a Retry-After header given in seconds; None when absent or in another form."""
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            try:
                seconds = float(str(value).strip())
            except ValueError:
                return None  # an HTTP date: the caller's own backoff serves as well
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _invalid_request_code(provider_code: str | None, param: str | None, status: int | None) -> str:
    if provider_code in ACCOUNT_ERROR_CODES or param == "destination":
        return "account_invalid"
    if provider_code in TRANSIENT_REQUEST_CODES:
        return provider_code
    if provider_code == "resource_missing" or status == 404:
        return "not_found"
    return "invalid_request"


def _transfer_result(transfer: stripe.Transfer) -> TransferResult:
    return TransferResult(
        provider_transfer_id=transfer.id, amount=transfer.amount, currency=transfer.currency
    )
