from __future__ import annotations

import multiprocessing
import signal
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest

from devtools.stripe_local import StripeLocal, StripeLocalServer
from tests.helpers import AppFactory, age_claims
from tests.payouts.helpers import (
    assert_paid_exactly_once,
    kill_paying_worker,
    pay_in_fresh_process,
    run,
    seed_due,
    stripe_env,
    transfer_outcomes,
)

pytestmark = pytest.mark.slow


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

    worker = kill_paying_worker(worker_env, "doomed", stripe_server, transfers=40, poll=0.02,
                                message="the worker made no progress")
    assert worker.exitcode == -signal.SIGKILL, "the worker ended before it was killed"
    time.sleep(0.3)  # requests the worker had sent are still being answered

    before = Counter(status for status, _ in transfer_outcomes(app).values())
    assert before["PROCESSING"] > 0, before
    assert before["COMPLETED"] > 0 and before["PENDING"] > 0, before
    age_claims(app)  # time passes: the dead run's claims become stale

    maintenance = run(app, "process-tasks")
    assert (maintenance["recovered_completed"] + maintenance["recovered_released"]
            == before["PROCESSING"])
    assert maintenance["recovery_errors"] == 0
    # Calls in flight when the worker died reached the provider: found, not paid again.
    assert maintenance["recovered_completed"] > 0
    after_recovery = Counter(status for status, _ in transfer_outcomes(app).values())
    assert after_recovery["PROCESSING"] == 0
    assert after_recovery["COMPLETED"] == before["COMPLETED"] + maintenance["recovered_completed"]

    result = run(app)
    assert result["paid"] == after_recovery["PENDING"]
    observed = assert_paid_exactly_once(app, stripe_server, ids, stripe_local)
    # A row whose call the crash interrupted may have been sent twice, never paid twice.
    assert max(observed["calls_by_idempotency_key"].values()) <= 2
