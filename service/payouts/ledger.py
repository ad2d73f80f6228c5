from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import rowcount, utcnow
from service.errors import AppError, ValidationFailed
from service.parsing import whole_number

from .models import Expert, PaymentTransfer
from .rules import (
    EARLIEST_INSTANT,
    END_OF_INSTANTS,
    PENDING,
    TRANSFER_STATUSES,
    DelayTable,
    scheduled_transfer_at,
    split_price,
)
from .sql import is_

# Every pattern is used with fullmatch: `$` would also accept a trailing newline.
ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PAYMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{3,255}")
CHARGE_ID_RE: Final = re.compile(r"(ch|py)_[A-Za-z0-9]{1,250}")
ACCOUNT_RE: Final = re.compile(r"acct_[A-Za-z0-9]{1,250}")
COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
CURRENCY_RE: Final = re.compile(r"[A-Za-z]{3}")
EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_PRICE: Final = 10**11
MAX_LIST_LIMIT: Final = 500
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


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


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
    """Validate an expert; raise ValidationFailed naming every invalid field."""
    if not isinstance(data, Mapping):
        raise ValidationFailed({"body": "send a JSON object"})
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
        raise ValidationFailed(read.errors)
    assert email is not None and first_name is not None
    return ExpertInput(email=email, first_name=first_name,
                       country=country.upper() if country else None,
                       stripe_account_id=account, payouts_enabled=enabled)


def parse_transfer(data: Mapping[str, Any], *, from_text: bool = False) -> TransferInput:
    """Validate a paid session to register; raise ValidationFailed naming every invalid field."""
    if not isinstance(data, Mapping):
        raise ValidationFailed({"body": "send a JSON object"})
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
        raise ValidationFailed(read.errors)
    assert expert_id and payment_id and price and currency and start and end and paid_at
    return TransferInput(expert_id=expert_id, payment_id=payment_id, charge_id=charge_id,
                         price=price, currency=currency.lower(), session_start_at=start,
                         session_end_at=end, paid_at=paid_at,
                         requires_approval=requires_approval)


def check_expert_id(expert_id: str) -> None:
    if not ID_RE.fullmatch(expert_id):
        raise ValidationFailed({"id": "letters, digits and . _ : - only, at most 64"})


def upsert_expert(sessions: sessionmaker[Session], expert_id: str, data: ExpertInput, *,
                  now: datetime | None = None) -> tuple[dict[str, Any], bool]:
    """Create or replace an expert; return it and whether it was created."""
    check_expert_id(expert_id)
    now = now or utcnow()
    for attempt in (1, 2):
        try:
            with sessions.begin() as session:
                expert = session.get(Expert, expert_id)
                created = expert is None
                if expert is None:
                    expert = Expert(id=expert_id, created_at=now)
                    session.add(expert)
                _apply(expert, data, now)
                session.flush()
                return expert.to_dict(), created
        except IntegrityError:
            # Created concurrently by another request: the second pass updates it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _apply(expert: Expert, data: ExpertInput, now: datetime) -> None:
    expert.email = data.email
    expert.first_name = data.first_name
    expert.country = data.country
    expert.stripe_account_id = data.stripe_account_id
    expert.payouts_enabled = data.payouts_enabled
    expert.updated_at = now


def get_expert(sessions: sessionmaker[Session], expert_id: str) -> dict[str, Any]:
    # An id that could not have been stored is not looked up (PostgreSQL refuses a NUL).
    if not ID_RE.fullmatch(expert_id):
        raise NotFound(f"no expert {expert_id!r}", code="expert_not_found")
    with sessions() as session:
        expert = session.get(Expert, expert_id)
        if expert is None:
            raise NotFound(f"no expert {expert_id!r}", code="expert_not_found")
        return expert.to_dict()


def differences(row: PaymentTransfer, data: TransferInput) -> list[str]:
    """Name the fields of `data` that differ from the registered row."""
    stored = {
        "expert_id": row.expert_id, "payment_id": row.payment_id, "charge_id": row.charge_id,
        "price": row.price, "currency": row.currency, "session_start_at": row.session_start_at,
        "session_end_at": row.session_end_at, "paid_at": row.paid_at,
        "requires_approval": row.requires_approval,
    }
    return [name for name, value in stored.items() if getattr(data, name) != value]


def new_row(data: TransferInput, expert: Expert | None, delays: DelayTable,
            now: datetime) -> dict[str, Any]:
    """Return the column values of a newly registered transfer."""
    split = split_price(data.price)
    return {
        "expert_id": data.expert_id,
        "payment_id": data.payment_id,
        "charge_id": data.charge_id,
        "amount": split.amount,
        "platform_fee": split.platform_fee,
        "currency": data.currency,
        "session_start_at": data.session_start_at,
        "session_end_at": data.session_end_at,
        "paid_at": data.paid_at,
        "scheduled_transfer_at": scheduled_transfer_at(
            paid_at=data.paid_at, session_end_at=data.session_end_at,
            country=expert.country if expert else None, delays=delays),
        "status": PENDING,
        "requires_approval": data.requires_approval,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def register_transfer(sessions: sessionmaker[Session], data: TransferInput, delays: DelayTable,
                      *, now: datetime | None = None) -> tuple[dict[str, Any], bool]:
    """Register a paid session's transfer, idempotent by payment id.

    Return the row and whether it was created. A repeat with the same details returns the
    existing row; one with different details raises Conflict (409).
    """
    now = now or utcnow()
    try:
        with sessions.begin() as session:
            existing = _by_payment(session, data.payment_id)
            if existing is not None:
                return _same_or_conflict(existing, data), False
            expert = session.get(Expert, data.expert_id)
            if expert is None:
                raise ValidationFailed({"expert_id": "no such expert; create it first with "
                                                     "PUT /api/experts/<id>"})
            row = PaymentTransfer(**new_row(data, expert, delays, now))
            session.add(row)
            session.flush()
            return row.to_dict(), True
    except IntegrityError as exc:
        collision = exc
    # Registered concurrently with the same payment id: compare with the winner.
    with sessions() as session:
        existing = _by_payment(session, data.payment_id)
        if existing is None:
            raise collision
        return _same_or_conflict(existing, data), False


def _by_payment(session: Session, payment_id: str) -> PaymentTransfer | None:
    return session.scalars(
        select(PaymentTransfer).where(PaymentTransfer.payment_id == payment_id)
    ).first()


def _same_or_conflict(row: PaymentTransfer, data: TransferInput) -> dict[str, Any]:
    changed = differences(row, data)
    if changed:
        raise Conflict(
            f"payment {data.payment_id} is already registered with different details",
            code="transfer_conflict",
            extra={"transfer_id": row.id, "fields": changed},
        )
    return row.to_dict()


def _transfer(session: Session, transfer_id: int) -> PaymentTransfer:
    # An id beyond the column is not looked up: the database would refuse it.
    row = (session.get(PaymentTransfer, transfer_id)
           if 1 <= transfer_id <= MAX_TRANSFER_ID else None)
    if row is None:
        raise NotFound(f"no transfer {transfer_id}", code="transfer_not_found")
    return row


def get_transfer(sessions: sessionmaker[Session], transfer_id: int) -> dict[str, Any]:
    with sessions() as session:
        return _transfer(session, transfer_id).to_dict()


def parse_approver(value: Any) -> str:
    """Return who approves, stripped; raise ValidationFailed unless it is one line of text."""
    if isinstance(value, str):
        approver = value.strip()
        if 1 <= len(approver) <= MAX_APPROVER_LENGTH and is_single_line(approver):
            return approver
    raise ValidationFailed({"approved_by": "required: who approves, 1 to "
                                           f"{MAX_APPROVER_LENGTH} characters on one line"})


def approve_transfer(sessions: sessionmaker[Session], transfer_id: int, approved_by: str, *,
                     now: datetime | None = None) -> dict[str, Any]:
    """Approve a pending transfer that requires approval; it is paid on the next run.

    Approving an already approved transfer returns it unchanged.
    """
    approved_by = parse_approver(approved_by)
    now = now or utcnow()
    with sessions.begin() as session:
        row = _transfer(session, transfer_id)
        if not row.requires_approval:
            raise Conflict(f"transfer {transfer_id} does not require approval; it is paid "
                           "when due", code="approval_not_required")
        if row.approved_at is not None:
            return row.to_dict()
        written = rowcount(session.execute(
            update(PaymentTransfer)
            .where(PaymentTransfer.id == transfer_id, is_(PaymentTransfer.status, PENDING),
                   PaymentTransfer.approved_at.is_(None))
            .values(approved_by=approved_by, approved_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ))
        if written != 1:
            raise Conflict(f"transfer {transfer_id} is {row.status}, not PENDING; only a "
                           "pending transfer can be approved", code="not_pending",
                           extra={"status": row.status})
        session.refresh(row)
        return row.to_dict()


def list_transfers(sessions: sessionmaker[Session], *, status: str | None = None,
                   expert_id: str | None = None, limit: int = 50,
                   before: int | None = None) -> list[dict[str, Any]]:
    """Return transfers newest first, optionally filtered; `before` pages by id."""
    query = select(PaymentTransfer).order_by(PaymentTransfer.id.desc()).limit(limit)
    if status is not None:
        query = query.where(PaymentTransfer.status == status)
    if expert_id is not None:
        query = query.where(PaymentTransfer.expert_id == expert_id)
    if before is not None:
        query = query.where(PaymentTransfer.id < before)
    with sessions() as session:
        return [row.to_dict() for row in session.scalars(query)]


def parse_list_args(args: Mapping[str, str]) -> dict[str, Any]:
    """Validate the query string of GET /api/transfers."""
    errors: dict[str, str] = {}
    status = args.get("status") or None
    if status is not None:
        status = status.upper()
        if status not in TRANSFER_STATUSES:
            errors["status"] = f"one of {', '.join(TRANSFER_STATUSES)}"
    expert = args.get("expert") or None
    if expert is not None and not ID_RE.fullmatch(expert):
        errors["expert"] = "an expert id"
    limit = whole_number(args.get("limit", "50"), maximum=MAX_LIST_LIMIT) or 0
    if not limit:
        errors["limit"] = f"a whole number from 1 to {MAX_LIST_LIMIT}"
    raw_before = args.get("before")
    before = whole_number(raw_before, maximum=MAX_TRANSFER_ID) if raw_before else None
    if raw_before and before is None:
        errors["before"] = f"a transfer id, at most {MAX_TRANSFER_ID}"
    if errors:
        raise ValidationFailed(errors)
    return {"status": status, "expert_id": expert, "limit": limit, "before": before}


# Bulk registration (flask payouts import): every row is checked before anything is written.


@dataclass(frozen=True, kw_only=True)
class RowError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class UnreadableRow:
    """A line of an import file that could not be read as a record."""

    message: str


class ImportRejected(Exception):
    """The file has invalid rows; nothing was written."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        super().__init__(f"{len(errors)} problem(s)")
        self.errors = list(errors)


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    created: int
    unchanged: int


CHUNK: Final = 500


def import_transfers(sessions: sessionmaker[Session], rows: Iterable[tuple[int, Any]],
                     delays: DelayTable, *, from_text: bool,
                     now: datetime | None = None) -> ImportReport:
    """Register many transfers in one transaction, or none: raise ImportRejected with every
    problem (by line) when any row is invalid, names an unknown expert, repeats a payment id,
    or conflicts with a registered transfer. Rows identical to registered ones are skipped.
    """
    now = now or utcnow()
    errors: list[RowError] = []
    parsed: list[tuple[int, TransferInput]] = []
    first_line: dict[str, int] = {}
    for line, data in rows:
        if isinstance(data, UnreadableRow):
            errors.append(RowError(line=line, field="line", message=data.message))
            continue
        try:
            item = parse_transfer(data, from_text=from_text)
        except ValidationFailed as exc:
            errors.extend(RowError(line=line, field=name, message=message)
                          for name, message in exc.extra["fields"].items())
            continue
        if item.payment_id in first_line:
            errors.append(RowError(line=line, field="payment_id", message=(
                f"repeats the payment of line {first_line[item.payment_id]}")))
            continue
        first_line[item.payment_id] = line
        parsed.append((line, item))
    with sessions.begin() as session:
        experts = _load(session, Expert, Expert.id, {item.expert_id for _, item in parsed})
        registered = _load(session, PaymentTransfer, PaymentTransfer.payment_id,
                           {item.payment_id for _, item in parsed})
        new: list[dict[str, Any]] = []
        unchanged = 0
        for line, item in parsed:
            if item.expert_id not in experts:
                errors.append(RowError(line=line, field="expert_id", message="no such expert"))
                continue
            existing = registered.get(item.payment_id)
            if existing is not None:
                changed = differences(existing, item)
                if changed:
                    errors.append(RowError(line=line, field="payment_id", message=(
                        f"already registered as transfer {existing.id} with different "
                        f"{', '.join(changed)}")))
                else:
                    unchanged += 1
                continue
            new.append(new_row(item, experts[item.expert_id], delays, now))
        if errors:
            raise ImportRejected(sorted(errors, key=lambda e: e.line))
        for start in range(0, len(new), CHUNK):
            session.execute(insert(PaymentTransfer), new[start:start + CHUNK])
    return ImportReport(created=len(new), unchanged=unchanged)


def import_experts(sessions: sessionmaker[Session], rows: Iterable[tuple[int, Any]], *,
                   from_text: bool, now: datetime | None = None) -> ImportReport:
    """Create or update many experts (each row has an `id`) in one transaction, or none."""
    now = now or utcnow()
    errors: list[RowError] = []
    parsed: dict[str, ExpertInput] = {}
    lines: dict[str, int] = {}
    for line, data in rows:
        if isinstance(data, UnreadableRow):
            errors.append(RowError(line=line, field="line", message=data.message))
            continue
        expert_id = data.get("id") if isinstance(data, Mapping) else None
        if not isinstance(expert_id, str) or not ID_RE.fullmatch(expert_id.strip()):
            errors.append(RowError(line=line, field="id", message="required: an expert id"))
        elif expert_id.strip() in lines:
            errors.append(RowError(line=line, field="id", message=(
                f"repeats the expert of line {lines[expert_id.strip()]}")))
        try:
            item = parse_expert(data, from_text=from_text, extra=("id",))
        except ValidationFailed as exc:
            errors.extend(RowError(line=line, field=name, message=message)
                          for name, message in exc.extra["fields"].items())
            continue
        if isinstance(expert_id, str) and expert_id.strip() not in lines:
            lines[expert_id.strip()] = line
            parsed[expert_id.strip()] = item
    if errors:
        raise ImportRejected(sorted(errors, key=lambda e: e.line))
    created = 0
    with sessions.begin() as session:
        existing = _load(session, Expert, Expert.id, set(parsed))
        for expert_id, item in parsed.items():
            expert = existing.get(expert_id)
            if expert is None:
                expert = Expert(id=expert_id, created_at=now)
                session.add(expert)
                created += 1
            _apply(expert, item, now)
    return ImportReport(created=created, unchanged=len(parsed) - created)


def _load(session: Session, model: Any, column: Any, keys: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), CHUNK):
        for row in session.scalars(select(model).where(column.in_(ordered[start:start + CHUNK]))):
            found[getattr(row, column.key)] = row
    return found
