from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import rowcount, utcnow

from .errors import (
    ApprovalNotRequired,
    ExpertNotFound,
    InvalidInput,
    NotPending,
    TransferConflict,
    TransferNotFound,
)
from .models import Expert, PaymentTransfer
from .rules import (
    PENDING,
    DelayTable,
    payment_idempotency_key,
    scheduled_transfer_at,
    split_price,
)
from .sql import is_
from .validation import (
    ID_RE,
    MAX_TRANSFER_ID,
    ExpertInput,
    TransferInput,
    check_expert_id,
    parse_approver,
)


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
                apply_expert(expert, data, now)
                session.flush()
                return expert.to_dict(), created
        except IntegrityError:
            # Created concurrently by another request: the second pass updates it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def apply_expert(expert: Expert, data: ExpertInput, now: datetime) -> None:
    """Copy validated details onto an expert row."""
    expert.email = data.email
    expert.first_name = data.first_name
    expert.country = data.country
    expert.stripe_account_id = data.stripe_account_id
    expert.payouts_enabled = data.payouts_enabled
    expert.updated_at = now


def get_expert(sessions: sessionmaker[Session], expert_id: str) -> dict[str, Any]:
    """Return one expert; raise ExpertNotFound."""
    # An id that could not have been stored is not looked up (PostgreSQL refuses a NUL).
    if not ID_RE.fullmatch(expert_id):
        raise ExpertNotFound(f"no expert {expert_id!r}")
    with sessions() as session:
        expert = session.get(Expert, expert_id)
        if expert is None:
            raise ExpertNotFound(f"no expert {expert_id!r}")
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
            now: datetime, *, env: str) -> dict[str, Any]:
    """Return the column values of a newly registered transfer in environment `env`."""
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
        "idempotency_key": payment_idempotency_key(env, data.payment_id),
        "requires_approval": data.requires_approval,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def register_transfer(sessions: sessionmaker[Session], data: TransferInput, delays: DelayTable,
                      *, env: str, now: datetime | None = None) -> tuple[dict[str, Any], bool]:
    """Register a paid session's transfer, idempotent by payment id.

    Return the row and whether it was created. A repeat with the same details returns the
    existing row; one with different details raises TransferConflict.
    """
    now = now or utcnow()
    try:
        with sessions.begin() as session:
            existing = _by_payment(session, data.payment_id)
            if existing is not None:
                return _same_or_conflict(existing, data), False
            expert = session.get(Expert, data.expert_id)
            if expert is None:
                raise InvalidInput({"expert_id": "no such expert; create it first with "
                                                 "PUT /api/experts/<id>"})
            row = PaymentTransfer(**new_row(data, expert, delays, now, env=env))
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
        raise TransferConflict(
            f"payment {data.payment_id} is already registered with different details",
            extra={"transfer_id": row.id, "fields": changed},
        )
    return row.to_dict()


def _transfer(session: Session, transfer_id: int, *, lock: bool = False) -> PaymentTransfer:
    # An id beyond the column is not looked up: the database would refuse it.
    row = (session.get(PaymentTransfer, transfer_id, with_for_update=lock)
           if 1 <= transfer_id <= MAX_TRANSFER_ID else None)
    if row is None:
        raise TransferNotFound(f"no transfer {transfer_id}")
    return row


def get_transfer(sessions: sessionmaker[Session], transfer_id: int) -> dict[str, Any]:
    """Return one transfer; raise TransferNotFound."""
    with sessions() as session:
        return _transfer(session, transfer_id).to_dict()


def approve_transfer(sessions: sessionmaker[Session], transfer_id: int, approved_by: str, *,
                     now: datetime | None = None) -> dict[str, Any]:
    """Approve a pending transfer that requires approval; it is paid on the next run.

    Approving an already approved transfer returns it unchanged.
    """
    approved_by = parse_approver(approved_by)
    now = now or utcnow()
    with sessions.begin() as session:
        # Locked until the answer is decided: on PostgreSQL a concurrent approval committed
        # after this read would otherwise make the guarded update below find no row, and a
        # second approval be refused instead of answered with the first (SQLite's BEGIN
        # IMMEDIATE serialises the transactions already).
        row = _transfer(session, transfer_id, lock=True)
        if not row.requires_approval:
            raise ApprovalNotRequired(f"transfer {transfer_id} does not require approval; it "
                                      "is paid when due")
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
            raise NotPending(f"transfer {transfer_id} is {row.status}, not PENDING; only a "
                             "pending transfer can be approved", extra={"status": row.status})
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
