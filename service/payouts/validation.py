from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, Final

from service.parsing import whole_number

from .errors import InvalidInput
from .rules import EARLIEST_INSTANT, END_OF_INSTANTS

# Every pattern is used with fullmatch: `$` would also accept a trailing newline.
ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PAYMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{3,255}")
CHARGE_ID_RE: Final = re.compile(r"(ch|py)_[A-Za-z0-9]{1,250}")
ACCOUNT_RE: Final = re.compile(r"acct_[A-Za-z0-9]{1,250}")
COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
CURRENCY_RE: Final = re.compile(r"[A-Za-z]{3}")
EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_PRICE: Final = 10**11
# payment_transfers.id is an INTEGER column: 32-bit on PostgreSQL.
MAX_TRANSFER_ID: Final = 2**31 - 1
MAX_APPROVER_LENGTH: Final = 128
TRUE_WORDS: Final = frozenset({"true", "1", "yes"})
FALSE_WORDS: Final = frozenset({"false", "0", "no"})


# Unicode categories no text field may hold: control characters (NUL, newline, escape), surrogates
# (UTF-8 cannot encode them), line and paragraph separators, private-use and unassigned code points.
REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})
# Bidirectional embeddings, overrides and isolates reorder how the text around them is shown (a way
# to disguise a name in a notice or a log line); no name needs them. The marks (U+200E, U+200F,
# U+061C) are allowed: they cannot reorder letters.
BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_single_line(text: str) -> bool:
    """Tell whether `text` is one line of displayable text.

    Spaces of any kind (a no-break space) and joiners (ZWNJ and ZWJ, which Persian, Indic and
    emoji spelling need) are allowed; control characters, surrogates and bidi overrides are not.
    """
    return text.isprintable() or not any(
        c in BIDI_CONTROLS or unicodedata.category(c) in REFUSED_CATEGORIES for c in text)


@dataclass(frozen=True, kw_only=True)
class ExpertInput:
    """A validated expert, as given to PUT /api/experts/<id> or the importer."""

    email: str
    first_name: str
    country: str | None
    stripe_account_id: str | None
    payouts_enabled: bool


@dataclass(frozen=True, kw_only=True)
class TransferInput:
    """A validated paid session to register; the service computes everything else."""

    expert_id: str
    payment_id: str
    charge_id: str | None
    price: int
    currency: str
    session_start_at: datetime
    session_end_at: datetime
    paid_at: datetime
    requires_approval: bool


class _Fields:
    """Read fields from a JSON object (or a CSV row, with `from_text`), collecting every error."""

    def __init__(self, data: Mapping[str, Any], allowed: Iterable[str], *,
                 from_text: bool = False) -> None:
        self.data = data
        self.from_text = from_text
        self.errors: dict[str, str] = {}
        for name in data:
            if name not in allowed:
                self.errors[str(name)] = "unknown field"

    def raw(self, name: str) -> Any:
        value = self.data.get(name)
        if self.from_text and isinstance(value, str) and not value.strip():
            return None
        return value

    def text(self, name: str, *, required: bool, pattern: re.Pattern[str] | None = None,
             max_length: int = 255, hint: str = "") -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                self.errors[name] = "required"
            return None
        if not isinstance(value, str):
            self.errors[name] = "must be a string"
            return None
        value = value.strip()
        if not value or len(value) > max_length:
            self.errors[name] = f"must be 1 to {max_length} characters"
            return None
        if not is_single_line(value):
            self.errors[name] = ("must be one line of text: no control characters, line breaks"
                                 " or bidi overrides")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.errors[name] = hint or "has an invalid format"
            return None
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if self.from_text and isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS | FALSE_WORDS:
                return word in TRUE_WORDS
        if isinstance(value, bool):
            return value
        self.errors[name] = "must be true or false"
        return default

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = self.raw(name)
        if value is None:
            self.errors[name] = "required"
            return None
        if self.from_text and isinstance(value, str):
            value = whole_number(value.strip(), maximum=maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors[name] = ("must be a whole number of minor units (cents), not a decimal, "
                                 f"from {minimum} to {maximum}")
            return None
        if not minimum <= value <= maximum:
            self.errors[name] = f"must be from {minimum} to {maximum}"
            return None
        return value

    def instant(self, name: str) -> datetime | None:
        value = self.raw(name)
        if value is None:
            self.errors[name] = "required"
            return None
        if not isinstance(value, str):
            self.errors[name] = "must be an ISO 8601 date-time string"
            return None
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            self.errors[name] = "must be an ISO 8601 date-time, e.g. 2025-03-14T10:00:00Z"
            return None
        if parsed.tzinfo is None:
            self.errors[name] = "must include a time zone offset, e.g. Z or +01:00"
            return None
        # Compared before converting: near the ends of the calendar astimezone overflows.
        if not EARLIEST_INSTANT <= parsed < END_OF_INSTANTS:
            self.errors[name] = (f"must be from {EARLIEST_INSTANT.date()} to before "
                                 f"{END_OF_INSTANTS.date()} (UTC)")
            return None
        return parsed.astimezone(UTC)


EXPERT_FIELDS: Final = ("email", "first_name", "country", "stripe_account_id", "payouts_enabled")
TRANSFER_FIELDS: Final = tuple(f.name for f in fields(TransferInput))


def parse_expert(data: Mapping[str, Any], *, from_text: bool = False,
                 extra: Iterable[str] = ()) -> ExpertInput:
    """Validate an expert; raise InvalidInput naming every invalid field."""
    if not isinstance(data, Mapping):
        raise InvalidInput({"body": "send a JSON object"})
    read = _Fields(data, (*EXPERT_FIELDS, *extra), from_text=from_text)
    email = read.text("email", required=True, pattern=EMAIL_RE, max_length=254,
                      hint="must be an email address")
    if email is not None and parseaddr(email)[1] != email:
        read.errors["email"] = "must be a bare email address"
    first_name = read.text("first_name", required=True, max_length=100)
    country = read.text("country", required=False, pattern=COUNTRY_RE, max_length=2,
                        hint="must be a two-letter ISO 3166 country code, e.g. PT")
    account = read.text("stripe_account_id", required=False, pattern=ACCOUNT_RE,
                        hint="must be a Stripe Connect account id (acct_...)")
    enabled = read.boolean("payouts_enabled", default=False)
    if read.errors:
        raise InvalidInput(read.errors)
    assert email is not None and first_name is not None
    return ExpertInput(email=email, first_name=first_name,
                       country=country.upper() if country else None,
                       stripe_account_id=account, payouts_enabled=enabled)


def parse_transfer(data: Mapping[str, Any], *, from_text: bool = False) -> TransferInput:
    """Validate a paid session to register; raise InvalidInput naming every invalid field."""
    if not isinstance(data, Mapping):
        raise InvalidInput({"body": "send a JSON object"})
    read = _Fields(data, TRANSFER_FIELDS, from_text=from_text)
    expert_id = read.text("expert_id", required=True, pattern=ID_RE, max_length=64,
                          hint="letters, digits and . _ : - only")
    payment_id = read.text("payment_id", required=True, pattern=PAYMENT_ID_RE,
                           hint="must be the payment's id, e.g. pi_...")
    charge_id = read.text("charge_id", required=False, pattern=CHARGE_ID_RE,
                          hint="must be a charge id (ch_... or py_...)")
    price = read.integer("price", minimum=1, maximum=MAX_PRICE)
    currency = read.text("currency", required=True, pattern=CURRENCY_RE, max_length=3,
                         hint="must be a three-letter ISO 4217 code, e.g. eur")
    start = read.instant("session_start_at")
    end = read.instant("session_end_at")
    paid_at = read.instant("paid_at")
    requires_approval = read.boolean("requires_approval", default=False)
    if start is not None and end is not None and end < start:
        read.errors["session_end_at"] = "must not be before session_start_at"
    if read.errors:
        raise InvalidInput(read.errors)
    assert expert_id and payment_id and price and currency and start and end and paid_at
    return TransferInput(expert_id=expert_id, payment_id=payment_id, charge_id=charge_id,
                         price=price, currency=currency.lower(), session_start_at=start,
                         session_end_at=end, paid_at=paid_at,
                         requires_approval=requires_approval)


def check_expert_id(expert_id: str) -> None:
    """Raise InvalidInput unless `expert_id` can name an expert."""
    if not ID_RE.fullmatch(expert_id):
        raise InvalidInput({"id": "letters, digits and . _ : - only, at most 64"})


def parse_approver(value: Any) -> str:
    """Return who approves, stripped; raise InvalidInput unless it is one line of text."""
    if isinstance(value, str):
        approver = value.strip()
        if 1 <= len(approver) <= MAX_APPROVER_LENGTH and is_single_line(approver):
            return approver
    raise InvalidInput({"approved_by": "required: who approves, 1 to "
                                           f"{MAX_APPROVER_LENGTH} characters on one line"})
