from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal

from service.parsing import whole_number

from .provider import MAX_IDEMPOTENCY_KEY_LENGTH

TransferStatus = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
PENDING: Final = "PENDING"
PROCESSING: Final = "PROCESSING"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
TRANSFER_STATUSES: Final[tuple[TransferStatus, ...]] = (
    PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED
)

# Every status change a writer may make; each write names the status it expects to replace.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    PENDING: frozenset({PROCESSING, CANCELLED}),
    PROCESSING: frozenset({COMPLETED, PENDING, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
})

PLATFORM_FEE_PERCENT: Final = 15
# A payout never leaves before this long after the session ended (refund and dispute window).
SESSION_SETTLE_TIME: Final = timedelta(hours=24)
# The longest wait between two attempts at a transfer.
MAX_RETRY_BACKOFF: Final = timedelta(hours=6)
DEFAULT_DELAY_KEY: Final = "default"
DEFAULT_DELAY_DAYS: Final = "US=2,default=7"
MAX_DELAY_DAYS: Final = 365
# The instants a transfer may carry: every real payment fits, and adding a delay to any of
# them stays far from the end of the calendar (datetime overflows after 9999-12-31).
EARLIEST_INSTANT: Final = datetime(1970, 1, 1, tzinfo=UTC)
END_OF_INSTANTS: Final = datetime(3000, 1, 1, tzinfo=UTC)
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")


class InvalidTransition(ValueError):
    """A status change the state machine does not allow."""


def check_transition(current: str, new: str) -> None:
    """Raise InvalidTransition unless the state machine allows `current` -> `new`."""
    if new not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"a transfer cannot go from {current} to {new}")


@dataclass(frozen=True)
class Split:
    """A listing price divided between the platform and the expert, in minor units."""

    price: int
    platform_fee: int
    amount: int


def split_price(price: int) -> Split:
    """Take the platform fee (15 %, rounded down) from a price; the expert gets the rest."""
    if isinstance(price, bool) or not isinstance(price, int) or price <= 0:
        raise ValueError(f"price must be a positive whole number of minor units, not {price!r}")
    fee = price * PLATFORM_FEE_PERCENT // 100
    return Split(price=price, platform_fee=fee, amount=price - fee)


@dataclass(frozen=True)
class DelayTable:
    """Payout delay in days by country (ISO alpha-2), with a default for every other country."""

    days: Mapping[str, int]
    default: int

    def delay(self, country: str | None) -> timedelta:
        key = (country or "").strip().upper()
        return timedelta(days=self.days.get(key, self.default))

    def describe(self) -> str:
        pairs = [f"{country}={days}" for country, days in sorted(self.days.items())]
        return ",".join([*pairs, f"{DEFAULT_DELAY_KEY}={self.default}"])


def parse_delay_table(text: str) -> DelayTable:
    """Parse "US=2,default=7": country codes or `default`, each with whole days."""
    days: dict[str, int] = {}
    default: int | None = None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        count = whole_number(value, maximum=MAX_DELAY_DAYS) if sep else None
        if count is None:
            raise ValueError(f"{item!r} is not COUNTRY=DAYS (whole days, at most "
                             f"{MAX_DELAY_DAYS}, e.g. US=2)")
        if key.lower() == DEFAULT_DELAY_KEY:
            if default is not None:
                raise ValueError("default is given twice")
            default = count
            continue
        country = key.upper()
        if not _COUNTRY_RE.fullmatch(country):
            raise ValueError(f"{key!r} is not a two-letter ISO country code")
        if country in days:
            raise ValueError(f"{country} is given twice")
        days[country] = count
    if default is None:
        raise ValueError("add default=<days> for every other country, e.g. US=2,default=7")
    return DelayTable(days=MappingProxyType(days), default=default)


def scheduled_transfer_at(
    *, paid_at: datetime, session_end_at: datetime, country: str | None, delays: DelayTable
) -> datetime:
    """Return when a transfer is due: the country delay after payment, 24 h after the session."""
    # Cannot overflow for instants before END_OF_INSTANTS, which parse_transfer enforces.
    return max(paid_at + delays.delay(country), session_end_at + SESSION_SETTLE_TIME)


def retry_backoff(attempts: int, base: timedelta) -> timedelta:
    """Return the wait before the next attempt after `attempts` failed ones.

    Doubling from `base`, up to MAX_RETRY_BACKOFF (or `base`, if longer): a row whose transfer
    may exist is retried past the attempt limit, and is still looked at a few times a day.
    """
    doubled = base * (1 << min(max(attempts - 1, 0), 16))
    return min(doubled, max(base, MAX_RETRY_BACKOFF))


def is_due(
    *,
    status: str,
    scheduled_transfer_at: datetime,
    requires_approval: bool,
    approved_at: datetime | None,
    next_attempt_at: datetime | None,
    now: datetime,
) -> bool:
    """Tell whether a transfer may be paid now (the expert's account aside)."""
    if status != PENDING:
        return False
    if next_attempt_at is not None and next_attempt_at > now:
        return False
    if approved_at is not None:
        return True
    return not requires_approval and scheduled_transfer_at <= now


def payment_idempotency_key(env: str, payment_id: str) -> str:
    """Return the provider idempotency key of a payment's transfer: `<env>:payment:<payment id>`.

    Stored on the row at registration. The payment id is what makes a transfer unique, in
    every database: two databases that reuse row ids against one Stripe account (a reset, a
    rebuild, a restore) never send one key for two payments. A payment id too long for the
    provider's limit is replaced by its SHA-256, under a prefix of its own.
    """
    key = f"{env}:payment:{payment_id}"
    if len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return key
    return f"{env}:payment-sha256:{hashlib.sha256(payment_id.encode()).hexdigest()}"


def legacy_idempotency_key(env: str, transfer_id: int) -> str:
    """Return the key of a row registered before migration 0006: `<env>:transfer:<row id>`.

    Such a row has no stored key and may already have a transfer under this one, so it keeps it.
    """
    return f"{env}:transfer:{transfer_id}"


def transfer_group(payment_id: str) -> str:
    """Return the provider transfer group tying a transfer to the customer's payment."""
    return f"payment_{payment_id}"
