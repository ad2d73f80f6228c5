from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest
from flask import Flask
from sqlalchemy import select, update

from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.db import utcnow
from service.extensions import get_sessions
from service.payouts.models import PaymentTransfer
from tests.helpers import AppFactory, age_claims
from tests.payouts.helpers import (
    assert_paid_exactly_once,
    kill_paying_worker,
    run,
    seed_due,
    stats,
    stripe_env,
    transfer_outcomes,
)

pytestmark = pytest.mark.slow
# `make reliability` raises these; the defaults keep the suite in seconds.
KILL_ROUNDS = int(os.environ.get("KILL_ROUNDS", "3"))
KILL_SEED = int(os.environ.get("KILL_SEED", str(int(time.time()))))


def test_workers_killed_at_random_points_again_and_again_lose_and_double_nothing(
    make_app: AppFactory, env: dict[str, str], stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    rng = random.Random(KILL_SEED)
    stripe_local.latency = 0.02
    worker_env = {**stripe_env(env, stripe_server), "PAYOUT_CONCURRENCY": "8"}
    app = make_app(worker_env)
    ids = seed_due(app, 60 * KILL_ROUNDS)
    kills = 0
    for round_number in range(KILL_ROUNDS):
        made = stats(stripe_server)["transfers"]
        # A random point: after a random number of new transfers, plus a random moment.
        worker = kill_paying_worker(worker_env, f"doomed{round_number}", stripe_server,
                                    transfers=made + rng.randint(1, 40),
                                    then=rng.uniform(0, 0.05), poll=0.005,
                                    message=f"no progress (seed {KILL_SEED})")
        if worker.exitcode == -signal.SIGKILL:
            kills += 1
        time.sleep(0.2)  # requests the worker had sent are still being answered
        age_claims(app)
        maintenance = run(app, "process-tasks")
        assert maintenance["recovery_errors"] == 0, f"seed {KILL_SEED}"
        assert Counter(s for s, _ in transfer_outcomes(app).values())["PROCESSING"] == 0
    assert kills >= 1, f"no worker was killed (seed {KILL_SEED})"

    result = run(app)
    assert result["failed"] == 0
    observed = assert_paid_exactly_once(app, stripe_server, ids, stripe_local)
    # An interrupted call may be repeated under its key; the provider never paid twice.
    assert set(observed["transfers_by_metadata_transfer_id"].values()) == {1}


def test_a_provider_that_times_out_for_a_while_is_retried_without_paying_twice(
    make_app: AppFactory, env: dict[str, str], stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    # Each call takes longer than the client waits; the provider still makes the transfer.
    stripe_local.latency = 1.5
    app = make_app({**stripe_env(env, stripe_server), "STRIPE_TIMEOUT": "1",
                    "PAYOUT_CONCURRENCY": "4"})
    ids = seed_due(app, 6)
    first = run(app)
    assert (first["paid"], first["retried"]) == (0, 6)
    pending = {row.id: row for row in _rows(app)}
    assert {r.status for r in pending.values()} == {"PENDING"}
    assert {r.last_error_code for r in pending.values()} == {"connection_error"}
    assert all(r.next_attempt_at is not None and r.next_attempt_at > utcnow()
               for r in pending.values())  # backing off

    second = run(app)  # still backing off: nothing is called
    assert second["considered"] == 0

    stripe_local.latency = 0.0  # the provider recovers; the backoff has passed
    with get_sessions(app).begin() as session:
        session.execute(update(PaymentTransfer).values(next_attempt_at=utcnow()))
    third = run(app)
    assert third["paid"] == 6
    observed = assert_paid_exactly_once(app, stripe_server, ids, stripe_local)
    assert set(observed["calls_by_idempotency_key"].values()) <= {1, 2}


def _rows(app: Flask) -> list[PaymentTransfer]:
    with get_sessions(app)() as session:
        return list(session.scalars(select(PaymentTransfer)))
