from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import insert, select

from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.db import utcnow
from service.extensions import get_sessions
from service.payouts.models import PaymentTransfer
from tests.helpers import AppFactory, add_expert, age_claims, outbox_rows

from .helpers import ACCOUNT
from .test_process_transfers import run, stripe_env

pytestmark = pytest.mark.slow


def pay_in_fresh_process(env: dict[str, str], run_id: str, start_at: float) -> dict[str, int]:
    """Build the app in this process, wait for start_at, and run the transfer processing once.

    The function is called directly rather than through run_job: the job's lease would make a
    second process skip, and it is the claiming itself that is under test.
    """
    from service import create_app, extensions
    from service.payouts.payrun import process_due_transfers
    from service.payouts.policy import PayoutPolicy

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


def ledger(app: Flask) -> dict[int, tuple[str, str | None]]:
    with get_sessions(app)() as session:
        return {r.id: (r.status, r.provider_transfer_id) for r in session.execute(
            select(PaymentTransfer.id, PaymentTransfer.status,
                   PaymentTransfer.provider_transfer_id))}


def stats(server: StripeLocalServer) -> dict[str, Any]:
    response = requests.get(f"{server.url}/_test/stats", timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def assert_paid_exactly_once(app: Flask, server: StripeLocalServer, ids: list[int],
                             stripe: StripeLocal) -> dict[str, Any]:
    rows = ledger(app)
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


def test_two_processes_pay_1000_due_transfers_exactly_once(
    make_app: AppFactory, env: dict[str, str], stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    worker_env = {**stripe_env(env, stripe_server), "PAYOUT_CONCURRENCY": "8"}
    app = make_app(worker_env)
    ids = seed_due(app, 1000)

    start_at = time.time() + 3.0  # both processes have imported everything by then
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(pay_in_fresh_process, worker_env, f"proc{i}", start_at)
                   for i in range(2)]
        reports = [future.result(timeout=180) for future in futures]

    assert sum(r["paid"] for r in reports) == 1000
    assert sum(r["considered"] for r in reports) == 1000
    assert all(r["failed"] == r["retried"] == r["conflicts"] == 0 for r in reports)
    # Both really worked at the same time: each paid a share.
    assert all(r["paid"] > 0 for r in reports), reports
    observed = assert_paid_exactly_once(app, stripe_server, ids, stripe_local)
    # One provider call per row.
    assert len(observed["calls_by_idempotency_key"]) == 1000
    assert set(observed["calls_by_idempotency_key"].values()) == {1}


def test_a_worker_killed_mid_run_loses_nothing_and_pays_nothing_twice(
    make_app: AppFactory, env: dict[str, str], stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    stripe_local.latency = 0.05  # many calls are in flight when the worker dies
    worker_env = {**stripe_env(env, stripe_server), "PAYOUT_CONCURRENCY": "8"}
    app = make_app(worker_env)
    ids = seed_due(app, 200)

    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=pay_in_fresh_process, args=(worker_env, "doomed", 0.0))
    worker.start()
    deadline = time.monotonic() + 60
    while stats(stripe_server)["transfers"] < 40:
        assert time.monotonic() < deadline and worker.is_alive(), "the worker made no progress"
        time.sleep(0.02)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    assert worker.exitcode == -signal.SIGKILL
    time.sleep(0.3)  # requests the worker had sent are still being answered

    before = Counter(status for status, _ in ledger(app).values())
    assert before["PROCESSING"] > 0, before
    assert before["COMPLETED"] > 0 and before["PENDING"] > 0, before
    age_claims(app)  # time passes: the dead run's claims become stale

    maintenance = run(app, "process-tasks")
    assert (maintenance["recovered_completed"] + maintenance["recovered_released"]
            == before["PROCESSING"])
    assert maintenance["recovery_errors"] == 0
    # Calls in flight when the worker died reached the provider: found, not paid again.
    assert maintenance["recovered_completed"] > 0
    after_recovery = Counter(status for status, _ in ledger(app).values())
    assert after_recovery["PROCESSING"] == 0
    assert after_recovery["COMPLETED"] == before["COMPLETED"] + maintenance["recovered_completed"]

    result = run(app)
    assert result["paid"] == after_recovery["PENDING"]
    observed = assert_paid_exactly_once(app, stripe_server, ids, stripe_local)
    # A row whose call the crash interrupted may have been sent twice, never paid twice.
    assert max(observed["calls_by_idempotency_key"].values()) <= 2
