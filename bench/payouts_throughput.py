"""Benchmark process-expert-transfers with the simulated provider.

    python -m bench.payouts_throughput --database-url sqlite:////tmp/bench.sqlite3
    python -m bench.payouts_throughput --database-url postgresql://postgres@127.0.0.1:5432/bench

Seeds `--total` transfers of which `--due` are due (the rest are paid history and future rows),
then runs the transfer-processing function in a fresh process with `--concurrency` workers against
a provider that takes `--latency-ms` per call, and prints one JSON line: throughput against the
ideal (concurrency / latency), SQL statements per transfer, and the process's peak memory.

`--provider simulated` (the default) is service.payouts.simulated, which keeps every transfer it
makes in memory, as a test double should. `--provider lean` behaves the same (latency, transfer
ids) but keeps only a count, so that the peak memory measured is the job's own. `--provider
throttled` is the lean provider behind a rate limit of `--provider-limit` calls per second (a
token bucket, as Stripe's): above it, it answers 429 at once. `--max-requests-per-second` sets the
run's own limit (PAYOUT_MAX_REQUESTS_PER_SECOND; none by default), and the ideal becomes
min(concurrency / latency, that limit).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
import tracemalloc
from datetime import timedelta
from queue import Empty
from typing import Any

from sqlalchemy import Engine, event, func, insert, select, text
from sqlalchemy.engine import make_url

from bench.databases import reset_postgres
from devtools.payout_providers import LeanProvider, ThrottledProvider
from service import db
from service.db import make_engine, normalise_url, utcnow
from service.payouts.claims import claim_query
from service.payouts.models import Expert, Notification, PaymentTransfer
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy
from service.payouts.simulated import SimulatedPayoutProvider

EXPERTS = 2_000
CHUNK = 5_000


def reset(url: str) -> None:
    """Start from an empty database (a new SQLite file, or an empty PostgreSQL schema)."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            path = f"{parsed.database}{suffix}"
            if os.path.exists(path):
                os.remove(path)
        return
    reset_postgres(url)  # creates the database when it is missing


def seed(engine: Engine, *, total: int, due: int) -> None:
    """Insert experts and `total` transfers: `due` due now, the rest paid or not yet due."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(insert(Expert), [
            {"id": f"expert_{i}", "email": f"expert{i}@example.com", "first_name": f"Expert{i}",
             "country": "PT" if i % 5 else "US", "stripe_account_id": f"acct_bench{i}",
             "payouts_enabled": True, "created_at": now, "updated_at": now}
            for i in range(EXPERTS)
        ])
    rest = total - due
    history = rest * 9 // 10  # most of a real ledger is paid history
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        with engine.begin() as connection:
            connection.execute(insert(PaymentTransfer), rows)
        rows.clear()

    for i in range(total):
        if i < due:
            status, scheduled = "PENDING", now - timedelta(minutes=1 + i % 5000)
        elif i < due + history:
            status, scheduled = "COMPLETED", now - timedelta(days=1 + i % 700)
        else:
            status, scheduled = "PENDING", now + timedelta(hours=1 + i % 400)
        paid_at = scheduled - timedelta(days=7)
        rows.append({
            "expert_id": f"expert_{i % EXPERTS}", "payment_id": f"pi_bench{i:08d}",
            "amount": 8500, "platform_fee": 1500, "currency": "eur",
            "session_start_at": paid_at, "session_end_at": paid_at + timedelta(hours=1),
            "paid_at": paid_at, "scheduled_transfer_at": scheduled, "status": status,
            "requires_approval": False, "attempts": 0 if status == "PENDING" else 1,
            "provider_transfer_id": f"tr_bench{i}" if status == "COMPLETED" else None,
            "created_at": paid_at, "updated_at": paid_at,
        })
        if len(rows) == CHUNK:
            flush()
    if rows:
        flush()
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))


def explain(engine: Engine) -> list[str]:
    """Return the plan of the first claim query of the due phase, as the database chooses it."""
    query = claim_query("due", utcnow(), None, 32)
    if engine.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=PaymentTransfer)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return [str(row[-1]) for row in connection.execute(text("EXPLAIN QUERY PLAN " + sql))]
        return [row[0] for row in connection.execute(text("EXPLAIN " + sql))]


def measure(url: str, concurrency: int, latency: float, queue: Any,
            provider_name: str = "simulated", trace_memory: bool = False,
            max_rate: int | None = None, provider_limit: float = 25.0) -> None:
    """Run the transfer-processing function once in this (fresh) process; report to queue."""
    engine = make_engine(url, pool_size=concurrency + 4)
    statements = {"count": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def count(*_args: Any) -> None:
        statements["count"] += 1

    @event.listens_for(engine, "commit")
    def count_commit(*_args: Any) -> None:
        statements["count"] += 1

    provider: SimulatedPayoutProvider | LeanProvider
    if provider_name == "throttled":
        provider = ThrottledProvider(latency=latency, limit=provider_limit)
    elif provider_name == "lean":
        provider = LeanProvider(latency=latency)
    else:
        provider = SimulatedPayoutProvider(latency=latency)
    policy = PayoutPolicy(env="bench", concurrency=concurrency,
                          max_requests_per_second=max_rate)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace_memory:
        tracemalloc.start()
    started = time.perf_counter()
    report = process_due_transfers(engine, provider, policy, run_id="bench-run",
                                   deadline=time.monotonic() + 3600)
    elapsed = time.perf_counter() - started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced_peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
    calls = provider.calls if isinstance(provider, LeanProvider) else len(provider.transfers)
    with engine.connect() as connection:
        notices = connection.execute(select(func.count()).select_from(Notification)).scalar_one()
        distinct = connection.execute(
            select(func.count(func.distinct(PaymentTransfer.provider_transfer_id)))
            .where(PaymentTransfer.status == "COMPLETED", PaymentTransfer.claimed_by == "bench-run")
        ).scalar_one()
    engine.dispose()
    ideal = concurrency / latency if latency > 0 else None
    if max_rate is not None:
        ideal = min(ideal, max_rate) if ideal is not None else float(max_rate)
    queue.put({
        "paid": report.paid, "failed": report.failed, "retried": report.retried,
        "remaining": report.remaining, "provider": provider_name, "provider_calls": calls,
        "max_requests_per_second": max_rate,
        "provider_limit": provider_limit if provider_name == "throttled" else None,
        "answered_429": provider.refused if isinstance(provider, ThrottledProvider) else 0,
        "rate_limit_pauses": report.rate_limit_pauses,
        "distinct_transfer_ids": distinct, "notices_queued": notices,
        "seconds": round(elapsed, 2), "transfers_per_second": round(report.paid / elapsed, 1),
        "ideal_per_second": None if ideal is None else round(ideal, 1),
        "efficiency": None if ideal is None else round(report.paid / elapsed / ideal, 3),
        "statements": statements["count"],
        "statements_per_transfer": round(statements["count"] / max(report.paid, 1), 2),
        "rss_start_mb": round(rss_before / 1024, 1), "rss_peak_mb": round(rss_peak / 1024, 1),
        "traced_peak_mb": None if traced_peak is None else round(traced_peak / 2**20, 2),
    })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.payouts_throughput")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--total", type=int, default=200_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--provider", choices=("simulated", "lean", "throttled"),
                        default="simulated")
    parser.add_argument("--provider-limit", type=float, default=25.0,
                        help="calls per second above which --provider throttled answers 429 "
                             "(default 25, Stripe's test mode)")
    parser.add_argument("--max-requests-per-second", type=int, default=None,
                        help="the run's own limit, PAYOUT_MAX_REQUESTS_PER_SECOND (default: "
                             "none)")
    parser.add_argument("--trace-memory", action="store_true",
                        help="also report the peak of Python allocations during the run "
                             "(tracemalloc; slows the run down)")
    parser.add_argument("--explain", action="store_true",
                        help="print the claim query's plan on the seeded data (stderr)")
    args = parser.parse_args(argv)
    if args.due > args.total:
        parser.error("--due must not exceed --total")

    reset(args.database_url)
    engine = make_engine(args.database_url)
    db.upgrade(engine)
    started = time.perf_counter()
    seed(engine, total=args.total, due=args.due)
    seeded = time.perf_counter() - started
    if args.explain:
        print("\n".join(explain(engine)), file=sys.stderr)
    engine.dispose()

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(
        args.database_url, args.concurrency, args.latency_ms / 1000, queue, args.provider,
        args.trace_memory, args.max_requests_per_second, args.provider_limit))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                raise SystemExit(
                    f"the measuring process died (exit code {process.exitcode})") from None
    process.join()
    print(json.dumps({
        "database": make_url(normalise_url(args.database_url)).get_backend_name(),
        "total": args.total, "due": args.due, "concurrency": args.concurrency,
        "latency_ms": args.latency_ms, "seed_seconds": round(seeded, 1), **result,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "argv": sys.argv[1:],
    }))


if __name__ == "__main__":
    main()
