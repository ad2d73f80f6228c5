from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from service.redaction import redact_secrets

CURRENCY_RE = re.compile(r"[a-z]{3}")
# Stripe caps idempotency keys at 255 characters; refuse longer ones before any call is made.
MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True, kw_only=True)
class TransferRequest:
    """One transfer of an expert's share to their connected account."""

    transfer_id: str
    amount: int
    currency: str
    destination_account: str
    idempotency_key: str
    transfer_group: str
    source_transaction: str | None
    metadata: Mapping[str, str]

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount <= 0:
            raise ValueError(f"amount must be a positive count of minor units: {self.amount!r}")
        if not CURRENCY_RE.fullmatch(self.currency):
            raise ValueError(f"currency must be a lowercase ISO 4217 code, not {self.currency!r}")
        if not self.idempotency_key or len(self.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ValueError("idempotency_key must be 1 to 255 characters")
        # A read-only copy, so a caller mutating its dict cannot change a request already sent.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True, kw_only=True)
class TransferResult:
    """A transfer the provider has created."""

    provider_transfer_id: str
    amount: int
    currency: str


@dataclass(frozen=True, kw_only=True)
class PaymentState:
    """Whether a customer's payment was refunded (fully or partially) or disputed."""

    payment_id: str
    refunded: bool
    disputed: bool


class ProviderError(Exception):
    """A payout provider call failed; `code` is stable, the message is for operators only.

    `outcome_unknown` is true when the provider may have acted on the call all the same (the
    connection broke, or the provider failed or was busy with the same key): a transfer may
    exist, and only asking the provider can tell. `replayed` is true when the provider answered
    with what it had stored for the idempotency key: the first attempt's outcome, not news.
    `retry_after` is the provider's own advice, in seconds, on when to call again.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str,
        provider_code: str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        outcome_unknown: bool = False,
        replayed: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.message = redact_secrets(message)
        self.code = code
        self.provider_code = provider_code
        self.request_id = request_id
        self.http_status = http_status
        self.outcome_unknown = outcome_unknown
        self.replayed = replayed
        self.retry_after = retry_after
        super().__init__(self.message)

    def __str__(self) -> str:
        details = [f"{name}={value}" for name, value in self._details() if value is not None]
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{self.code}: {self.message}{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def _details(self) -> tuple[tuple[str, object], ...]:
        return (
            ("provider_code", self.provider_code),
            ("http_status", self.http_status),
            ("request_id", self.request_id),
        )


class TransientProviderError(ProviderError):
    """A failure worth retrying later with the same idempotency key."""

    retryable = True


class PermanentProviderError(ProviderError):
    """A failure that retrying cannot fix."""

    retryable = False


class PayoutProvider(Protocol):
    """Moves an expert's share to their account and reports on customer payments."""

    name: str

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        """Create the transfer, or return the one already created with the same idempotency key."""
        ...

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        """Return the transfer made for transfer row `transfer_id` in `transfer_group`, if any."""
        ...

    def payment_state(self, payment_id: str) -> PaymentState:
        """Report whether the payment was refunded or disputed."""
        ...
