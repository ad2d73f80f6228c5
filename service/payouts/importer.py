from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import utcnow

from .errors import InvalidInput
from .models import Expert, PaymentTransfer
from .registry import apply_expert, differences, new_row
from .rules import DelayTable
from .validation import ID_RE, ExpertInput, TransferInput, parse_expert, parse_transfer

Format = Literal["csv", "jsonl"]
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Rows per INSERT, and keys per IN (...) look-up.
CHUNK: Final = 500


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


def detect_format(path: Path) -> Format | None:
    """Return the format its extension names, if any."""
    return EXTENSIONS.get(path.suffix.lower())


def read_records(path: Path, fmt: Format) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) for each record; unreadable lines yield UnreadableRow."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            for record in reader:
                if None in record:
                    yield reader.line_num, UnreadableRow(message="more values than columns")
                    continue
                if all(not (value or "").strip() for value in record.values()):
                    continue
                yield reader.line_num, {k.strip(): v for k, v in record.items() if k}
            return
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, UnreadableRow(message=f"not valid JSON ({exc.msg})")
                continue
            except RecursionError:
                yield number, UnreadableRow(message="JSON nested too deeply")
                continue
            except ValueError:  # an integer longer than int() converts
                yield number, UnreadableRow(message="a JSON number too long")
                continue
            if not isinstance(record, dict):
                yield number, UnreadableRow(message="not a JSON object")
                continue
            yield number, record


# Bulk registration (the `payouts import` command): every row is checked before any is written.


def import_transfers(sessions: sessionmaker[Session], rows: Iterable[tuple[int, Any]],
                     delays: DelayTable, *, env: str, from_text: bool,
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
        except InvalidInput as exc:
            errors.extend(RowError(line=line, field=name, message=message)
                          for name, message in exc.fields.items())
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
            new.append(new_row(item, experts[item.expert_id], delays, now, env=env))
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
        except InvalidInput as exc:
            errors.extend(RowError(line=line, field=name, message=message)
                          for name, message in exc.fields.items())
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
            apply_expert(expert, item, now)
    return ImportReport(created=created, unchanged=len(parsed) - created)


def _load(session: Session, model: Any, column: Any, keys: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), CHUNK):
        for row in session.scalars(select(model).where(column.in_(ordered[start:start + CHUNK]))):
            found[getattr(row, column.key)] = row
    return found
