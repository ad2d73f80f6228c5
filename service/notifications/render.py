from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, TypeVar

import jinja2

_T = TypeVar("_T")

KINDS: Final = ("upcoming_payout", "payout_sent", "payout_failed")

# Only these fields ever reach a template, so nothing else a caller puts in a payload (a provider
# error, say) can leak into an email.
_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "upcoming_payout": ("first_name", "amount", "currency", "scheduled_date"),
    "payout_sent": ("first_name", "amount", "currency", "sent_date", "reference"),
    "payout_failed": ("first_name", "amount", "currency", "reference"),
}

# Amounts come from Stripe, so minor units follow Stripe's tables rather than raw ISO 4217: Stripe
# treats ISK, HUF and TWD as two-decimal in its API, which the default of 2 already covers.
_ZERO_DECIMAL: Final = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip
_THREE_DECIMAL: Final = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

# Symbols only where they are unambiguous for our experts; "$" alone would hide CAD and AUD.
_SYMBOLS: Final[Mapping[str, str]] = {
    "eur": "€",
    "usd": "$",
    "gbp": "£",
    "cad": "CA$",
    "aud": "A$",
}

# Spelled out here so the date does not depend on the process locale.
_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


class UnknownNoticeKind(ValueError):
    """A notice kind that has no templates."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"unknown notice kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind = kind


@dataclass(frozen=True, kw_only=True)
class Notice:
    """One email to one expert, as queued in the notification outbox."""

    recipient: str
    kind: str
    payload: Mapping[str, Any]
    dedup_key: str


@dataclass(frozen=True, kw_only=True)
class RenderedEmail:
    """The subject and both bodies of a rendered notice."""

    subject: str
    text: str
    html: str


def minor_unit_exponent(currency: str) -> int:
    """Return how many decimal places the currency's minor unit has."""
    code = _currency_code(currency)
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def format_money(amount: int, currency: str) -> str:
    """Format an amount in minor units for people, e.g. "€1,234.50" or "1,234.500 KWD"."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int in minor units, not {type(amount).__name__}")
    code = _currency_code(currency)
    exponent = minor_unit_exponent(code)
    major, minor = divmod(abs(amount), 10**exponent)
    number = f"{major:,}.{minor:0{exponent}d}" if exponent else f"{major:,}"
    sign = "-" if amount < 0 else ""
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {code.upper()}"


def format_date(value: date) -> str:
    """Format a date for people, e.g. "14 March 2025"."""
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def render_notice(notice: Notice) -> RenderedEmail:
    """Render a notice's subject, plain-text body and HTML body."""
    context = _context(notice)
    subject = " ".join(_template(f"{notice.kind}.subject.txt", html=False).render(context).split())
    context["subject"] = subject
    text = _template(f"{notice.kind}.txt", html=False).render(context).strip() + "\n"
    html = _template(f"{notice.kind}.html", html=True).render(context)
    return RenderedEmail(subject=subject, text=text, html=html)


def _context(notice: Notice) -> dict[str, str]:
    fields = _FIELDS.get(notice.kind)
    if fields is None:
        raise UnknownNoticeKind(notice.kind)
    missing = [name for name in fields if name not in notice.payload]
    if missing:
        raise ValueError(f"{notice.kind} notice payload is missing field(s): {', '.join(missing)}")
    context = {
        name: _field(notice, name, _TEXT_FIELDS[name]) for name in fields if name in _TEXT_FIELDS
    }
    amount = _field(notice, "amount", _parse_amount)
    currency = _field(notice, "currency", _parse_currency)
    context["amount"] = format_money(amount, currency)
    return context


def _field(notice: Notice, name: str, parse: Callable[[object], _T]) -> _T:
    try:
        return parse(notice.payload[name])
    except (TypeError, ValueError) as exc:
        # The message names the field and the expected shape, never the value: it is personal
        # data and ends up in the outbox's error column.
        raise ValueError(f"{notice.kind} notice payload field {name!r}: {exc}") from None


def _currency_code(currency: object) -> str:
    code = currency.lower() if isinstance(currency, str) else ""
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise ValueError("currency must be a three-letter ISO 4217 code")
    return code


def _parse_first_name(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    # Collapse whitespace so a stray newline cannot reshape the greeting line.
    return " ".join(value.split())


def _parse_amount(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int in minor units, got {type(value).__name__}")
    return value


def _parse_currency(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return _currency_code(value)


def _parse_iso_date(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO date string, got {type(value).__name__}")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ValueError("expected an ISO date (YYYY-MM-DD)") from None
    return format_date(parsed)


def _parse_reference(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a string or an int, got {type(value).__name__}")
    reference = str(value).strip()
    if not reference:
        raise ValueError("must not be empty")
    return reference


_TEXT_FIELDS: Final[Mapping[str, Callable[[object], str]]] = {
    "first_name": _parse_first_name,
    "scheduled_date": _parse_iso_date,
    "sent_date": _parse_iso_date,
    "reference": _parse_reference,
}


def _template(name: str, *, html: bool) -> jinja2.Template:
    return _environment(html=html).get_template(name)


@functools.cache
def _environment(*, html: bool) -> jinja2.Environment:
    # Built on first use rather than at import; StrictUndefined turns a template typo into an
    # error instead of a silently blank sentence.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("service", "templates/email"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
