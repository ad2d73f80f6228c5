from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from flask import Flask
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from service import create_app, extensions
from service.db import utcnow
from service.extensions import get_sessions, get_settings
from service.payouts import outbox
from service.payouts.models import Expert, Notification, PaymentTransfer
from service.payouts.registry import new_row
from service.payouts.rules import CANCELLED, COMPLETED, FAILED, PENDING, PROCESSING, DelayTable
from service.payouts.validation import TransferInput

PREFIX: Final = "demo_"

# id, first name, country, Stripe account, payouts enabled
EXPERTS: Final = (
    ("demo_ana", "Ana", "PT", "acct_1DemoAnaSilva", True),
    ("demo_javier", "Javier", "ES", "acct_1DemoJavierRuiz", True),
    ("demo_emily", "Emily", "US", "acct_1DemoEmilyCarter", True),
    ("demo_oliver", "Oliver", "GB", "acct_1DemoOliverHughes", True),
    ("demo_lena", "Lena", "DE", "acct_1DemoLenaFischer", True),
    ("demo_noah", "Noah", "CA", "acct_1DemoNoahTremblay", True),
    ("demo_camille", "Camille", "FR", "acct_1DemoCamilleMartin", False),
    ("demo_giulia", "Giulia", "IT", None, False),
)

PRICES: Final = {"eur": (6000, 8500, 12000, 15000), "usd": (7500, 9900, 14000),
                 "gbp": (5500, 8000), "cad": (9000,)}
CURRENCY: Final = {"PT": "eur", "ES": "eur", "DE": "eur", "FR": "eur", "IT": "eur",
                   "US": "usd", "GB": "gbp", "CA": "cad"}


class DemoDataPresent(Exception):
    """Demo rows exist already; reseeding needs --reset."""


class SeedRefused(Exception):
    """The seed was refused; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class SeedReport:
    experts: int
    transfers: dict[str, int]
    skipped: bool = False


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """One demo transfer: when its session ended, and what state to leave it in."""

    expert: str
    ended_days_ago: float
    state: str
    requires_approval: bool = False
    approved: bool = False


# Every state of the payout records, and every case the jobs treat differently.
PLAN: Final = (
    _Plan(expert="demo_ana", ended_days_ago=30, state="completed"),
    _Plan(expert="demo_emily", ended_days_ago=20, state="completed"),
    _Plan(expert="demo_oliver", ended_days_ago=15, state="completed"),
    _Plan(expert="demo_ana", ended_days_ago=9, state="due"),
    _Plan(expert="demo_javier", ended_days_ago=8, state="due"),
    _Plan(expert="demo_emily", ended_days_ago=3, state="due"),
    _Plan(expert="demo_lena", ended_days_ago=10, state="due"),
    _Plan(expert="demo_noah", ended_days_ago=5.5, state="upcoming"),
    _Plan(expert="demo_ana", ended_days_ago=5.5, state="upcoming"),
    _Plan(expert="demo_emily", ended_days_ago=0.5, state="upcoming"),
    _Plan(expert="demo_javier", ended_days_ago=1, state="future"),
    _Plan(expert="demo_oliver", ended_days_ago=0, state="future"),
    _Plan(expert="demo_lena", ended_days_ago=12, state="due", requires_approval=True),
    _Plan(expert="demo_noah", ended_days_ago=1, state="future", requires_approval=True,
          approved=True),
    _Plan(expert="demo_oliver", ended_days_ago=11, state="retrying"),
    _Plan(expert="demo_javier", ended_days_ago=14, state="stale"),
    _Plan(expert="demo_lena", ended_days_ago=25, state="failed"),
    _Plan(expert="demo_ana", ended_days_ago=13, state="cancelled"),
    _Plan(expert="demo_camille", ended_days_ago=10, state="due"),
    _Plan(expert="demo_giulia", ended_days_ago=10, state="due"),
)


def has_any_data(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return bool(session.scalar(select(func.count()).select_from(Expert)))


def has_demo_data(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return bool(session.scalar(
            select(func.count()).select_from(Expert).where(Expert.id.startswith(PREFIX))))


def remove_demo_data(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        ids = select(PaymentTransfer.id).join(Expert).where(Expert.id.startswith(PREFIX))
        session.execute(delete(Notification).where(Notification.transfer_id.in_(ids)))
        session.execute(delete(PaymentTransfer).where(
            PaymentTransfer.expert_id.startswith(PREFIX)))
        session.execute(delete(Expert).where(Expert.id.startswith(PREFIX)))


def seed_demo(sessions: sessionmaker[Session], delays: DelayTable, *, env: str,
              now: datetime | None = None) -> SeedReport:
    """Add sample experts and transfers in every state; refuse if demo rows exist."""
    now = now or utcnow()
    if has_demo_data(sessions):
        raise DemoDataPresent("demo data is already present")
    counts: dict[str, int] = {}
    with sessions.begin() as session:
        experts = {}
        for expert_id, first_name, country, account, enabled in EXPERTS:
            expert = Expert(id=expert_id, email=f"{first_name.lower()}@example.com",
                            first_name=first_name, country=country,
                            stripe_account_id=account, payouts_enabled=enabled,
                            created_at=now - timedelta(days=60), updated_at=now)
            session.add(expert)
            experts[expert_id] = expert
        session.flush()
        for number, plan in enumerate(PLAN, start=1):
            expert = experts[plan.expert]
            row = PaymentTransfer(**_row(number, plan, expert, delays, now, env))
            session.add(row)
            session.flush()
            _finish(session, row, plan, expert, now)
            counts[row.status] = counts.get(row.status, 0) + 1
    return SeedReport(experts=len(EXPERTS), transfers=counts)


def _row(number: int, plan: _Plan, expert: Expert, delays: DelayTable,
         now: datetime, env: str) -> dict[str, Any]:
    currency = CURRENCY[expert.country or "PT"]
    prices = PRICES[currency]
    hour = now.replace(minute=0, second=0, microsecond=0)
    if plan.state == "upcoming":
        # Paid so that the country delay ends in about a day and a half (the upcoming-payout
        # window); booked ahead, so the session itself is a day after the payment.
        paid_at = hour + timedelta(days=1, hours=12) - delays.delay(expert.country)
        session_end = paid_at + timedelta(hours=26)
    else:
        session_end = hour - timedelta(days=plan.ended_days_ago)
        paid_at = session_end - timedelta(hours=26)
    data = TransferInput(
        expert_id=expert.id,
        payment_id=f"pi_demo{number:04d}{expert.id.removeprefix(PREFIX)}",
        charge_id=None,
        price=prices[number % len(prices)],
        currency=currency,
        session_start_at=session_end - timedelta(minutes=50),
        session_end_at=session_end,
        paid_at=paid_at,
        requires_approval=plan.requires_approval,
    )
    return new_row(data, expert, delays, now, env=env)


def _finish(session: Session, row: PaymentTransfer, plan: _Plan, expert: Expert,
            now: datetime) -> None:
    if plan.approved:
        row.approved_by, row.approved_at = "ops@example.com", now - timedelta(hours=2)
    if plan.state == "completed":
        row.status, row.attempts = COMPLETED, 1
        row.transferred_at = row.scheduled_transfer_at + timedelta(minutes=7)
        row.provider_transfer_id = f"tr_demo{row.id:06d}"
        row.claimed_by, row.claimed_at = "demo-run", row.transferred_at
        row.notified_at = row.scheduled_transfer_at - timedelta(days=1)
        outbox.queue_notice(session.connection(), kind=outbox.PAYOUT_SENT, transfer_id=row.id,
                            recipient=expert.email, now=now, payload={
                                "first_name": expert.first_name, "amount": row.amount,
                                "currency": row.currency,
                                "sent_date": row.transferred_at.date().isoformat(),
                                "reference": str(row.id)})
    elif plan.state == "retrying":
        row.attempts, row.last_error_code = 1, "rate_limited"
        row.last_error_message = "rate_limited: Request rate limit exceeded. (http_status=429)"
        row.next_attempt_at = now + timedelta(minutes=8)
        row.claimed_by, row.claimed_at = "demo-run", now - timedelta(minutes=2)
    elif plan.state == "stale":
        # Claimed by a run that died two hours ago: process-tasks recovers it.
        row.status, row.claimed_by, row.claimed_at = (PROCESSING, "demo-crashed-run",
                                                      now - timedelta(hours=2))
    elif plan.state == "failed":
        row.status, row.attempts = FAILED, 1
        row.last_error_code = "account_invalid"
        row.last_error_message = "account_invalid: No such destination (http_status=400)"
        row.claimed_by, row.claimed_at = "demo-run", row.scheduled_transfer_at
    elif plan.state == "cancelled":
        row.status, row.last_error_code = CANCELLED, "payment_refunded"
        row.last_error_message = "the customer's payment was refunded"
    else:
        row.status = PENDING


def seed_app(app: Flask, *, if_empty: bool = False, reset: bool = False) -> str:
    """Seed the demo rows into the app's database (never in production); return a summary."""
    settings = get_settings(app)
    if settings.app_env == "production":
        raise SeedRefused("refusing to seed demo data when APP_ENV=production")
    sessions = get_sessions(app)
    if if_empty and has_any_data(sessions):
        return "the database already has experts; nothing seeded"
    if reset:
        remove_demo_data(sessions)
    try:
        report = seed_demo(sessions, settings.payout_delay_days, env=settings.app_env)
    except DemoDataPresent:
        raise SeedRefused("demo data is already present; use --reset to replace it") from None
    states = ", ".join(f"{status} {count}" for status, count in sorted(report.transfers.items()))
    return (f"seeded {report.experts} experts and {sum(report.transfers.values())} "
            f"transfers ({states})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `seed` against the database the environment (or .env) names."""
    parser = argparse.ArgumentParser(prog="python -m devtools.demo",
                                     description="Sample data for local runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser(
        "seed", help="Add sample experts and transfers in every state (never in production).")
    seed.add_argument("--if-empty", action="store_true",
                      help="Do nothing if the database has any expert.")
    seed.add_argument("--reset", action="store_true", help="Replace the demo rows if they exist.")
    args = parser.parse_args(argv)
    app = create_app()
    try:
        with app.app_context():
            print(seed_app(app, if_empty=args.if_empty, reset=args.reset), flush=True)
    except SeedRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        extensions.close(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
