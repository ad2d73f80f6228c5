from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from typing import Any

import requests
from flask import Flask
from sqlalchemy import insert, select

from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.db import utcnow
from service.extensions import get_sessions
from service.payouts.models import Expert, PaymentTransfer
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy
from service.payouts.provider import TransferRequest
from tests.helpers import AUTH, add_expert, outbox_rows, row_count

API_KEY = "sk_test_elevaPayoutsLocal4242"


ACCOUNT = "acct_1ExpertLocal"


def stripe_env(env: dict[str, str], server: StripeLocalServer) -> dict[str, str]:
    # The double on loopback shares its limit with no one: the rate limit only spaces calls.
    return {**env, "PAYOUT_PROVIDER": "stripe", "STRIPE_SECRET_KEY": API_KEY,
            "STRIPE_API_BASE": server.url, "STRIPE_MAX_NETWORK_RETRIES": "0",
            "STRIPE_TIMEOUT": "5", "PAYOUT_MAX_REQUESTS_PER_SECOND": "1000"}


def run(app: Flask, job: str = "process-expert-transfers") -> dict[str, Any]:
    response = app.test_client().post(f"/api/cron/{job}", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "succeeded"
    return dict(body["result"])


def transfer_posts(stripe: StripeLocal) -> list[dict[str, Any]]:
    return [{"key": r.idempotency_key, **r.params} for r in stripe.requests
            if (r.method, r.path) == ("POST", "/v1/transfers")]


def pay_in_fresh_process(env: dict[str, str], run_id: str, start_at: float) -> dict[str, int]:
    """Build the app in this process, wait for start_at, and run the transfer processing once.

    The function is called directly rather than through run_job: the job's lease would make a
    second process skip, and it is the claiming itself that is under test.
    """
    from service import create_app, extensions

    app = create_app(env)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        report = process_due_transfers(
            extensions.get_engine(app), extensions.get_payout_provider(app),
            PayoutPolicy.from_settings(extensions.get_settings(app)),
            run_id=run_id, deadline=time.monotonic() + 120)
    finally:
        extensions.close(app)
    return {"considered": report.considered, "paid": report.paid, "failed": report.failed,
            "retried": report.retried, "conflicts": report.conflicts}


def seed_due(app: Flask, count: int) -> list[int]:
    add_expert(app, stripe_account_id=ACCOUNT)
    now = utcnow()
    rows = [{
        "expert_id": "exp_1", "payment_id": f"pi_load{i:05d}", "amount": 1000 + i,
        "platform_fee": 150, "currency": "eur", "session_start_at": now - timedelta(days=9),
        "session_end_at": now - timedelta(days=9), "paid_at": now - timedelta(days=10),
        "scheduled_transfer_at": now - timedelta(minutes=i % 90), "status": "PENDING",
        "requires_approval": False, "attempts": 0, "created_at": now, "updated_at": now,
    } for i in range(count)]
    with get_sessions(app).begin() as session:
        session.execute(insert(PaymentTransfer), rows)
        return list(session.scalars(select(PaymentTransfer.id)))


def transfer_outcomes(app: Flask) -> dict[int, tuple[str, str | None]]:
    with get_sessions(app)() as session:
        return {r.id: (r.status, r.provider_transfer_id) for r in session.execute(
            select(PaymentTransfer.id, PaymentTransfer.status,
                   PaymentTransfer.provider_transfer_id))}


def stats(server: StripeLocalServer) -> dict[str, Any]:
    response = requests.get(f"{server.url}/_test/stats", timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def kill_paying_worker(env: dict[str, str], run_id: str, server: StripeLocalServer, *,
                       transfers: int, then: float = 0.0, poll: float, message: str) -> BaseProcess:
    """Pay in a fresh process; SIGKILL it once the provider has made `transfers` transfers.

    Waits `then` seconds more before the kill; a worker that ends first is not killed. Returns
    the process, ended and joined.
    """
    worker = multiprocessing.get_context("spawn").Process(target=pay_in_fresh_process,
                                                          args=(env, run_id, 0.0))
    worker.start()
    deadline = time.monotonic() + 60
    while stats(server)["transfers"] < transfers and worker.is_alive():
        assert time.monotonic() < deadline, message
        time.sleep(poll)
    time.sleep(then)
    if worker.is_alive():
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    return worker


def assert_paid_exactly_once(app: Flask, server: StripeLocalServer, ids: list[int],
                             stripe: StripeLocal) -> dict[str, Any]:
    rows = transfer_outcomes(app)
    assert {status for status, _ in rows.values()} == {"COMPLETED"}
    observed = stats(server)
    assert observed["transfers"] == len(ids)
    assert observed["transfers_by_metadata_transfer_id"] == {str(i): 1 for i in ids}
    # Each row's stored id is the one transfer the provider made for it.
    made = {t["metadata"]["transfer_id"]: t["id"] for t in stripe.transfers}
    assert {str(i): tr for i, (_, tr) in rows.items()} == made
    notices = Counter(n.dedup_key for n in outbox_rows(app))
    assert notices == Counter(f"payout_sent:{i}" for i in ids)
    return observed


MakeRequest = Callable[..., TransferRequest]  # the make_request fixture


EXPERT = {"email": "ana@example.com", "first_name": "Ana", "country": "PT",
          "stripe_account_id": "acct_1AnaSilva", "payouts_enabled": True}


def transfer_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "expert_id": "exp_1", "payment_id": "pi_3Pabc123", "charge_id": "ch_3Pabc123",
        "price": 10_000, "currency": "eur",
        "session_start_at": "2025-02-21T09:00:00Z", "session_end_at": "2025-02-21T10:00:00Z",
        "paid_at": "2025-02-20T18:30:00+01:00", "requires_approval": False,
    }
    body.update(changes)
    return body


def stored(app: Flask) -> tuple[int, int]:
    """Count the experts and the transfers in the database."""
    return row_count(app, Expert), row_count(app, PaymentTransfer)
