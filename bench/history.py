"""Does a delivery's cost grow with history? Deliveries and the health report at 0, 100k, 1M rows.

    .venv/bin/python -m bench.history [--database sqlite|postgres|both] [--quick] ...

Per database (PostgreSQL twice: statistics fresh, after ANALYZE, and stale, autovacuum off and
statistics taken while the tables were empty): a fresh, migrated database and gunicorn (4 sync
workers) serving the no-op job (bench.load.noop_wsgi:app). At each size, the ledger first gets
its historic rows (runs of the delivered job, spent tokens, paid transfers, sent notices: as many
of each), then:

- deliveries: wrk, 32 connections, verified deliveries of the no-op job (one job, as shipped:
  most deliveries find it busy); every 2xx must have its run in the ledger;
- takeover: sequential deliveries that take over a run whose worker died (the settle path);
- health report: the per-job part of `flask qstash health` / GET /api/admin/health (last run,
  last success), and the run history API, in-process.

Prints a table, writes JSON, and exits 1 when a check fails: the ledger must match wrk, and, in a
full run, deliveries/s at each size must stay within 10 % of the empty database's. Exit 2: the
run could not be set up. Figures are only as quiet as the machine: re-measure on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import Engine, insert, text

from bench.databases import SetupError
from bench.fill import fill_history, set_statistics
from bench.load import harness, phases, wrk
from bench.load.report import machine_facts
from bench.plans import noop, run
from service import create_app, db, extensions, health
from service.db import utcnow
from service.extensions import get_engine, get_jobs, get_sessions
from service.models import JobRun
from service.qstash.signature import MAX_LIFETIME
from service.runs.history import run_history
from service.runs.jobs import Delivery, Job

HERE = Path(__file__).resolve().parent
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/bench_history"
NOOP = Job(name=harness.NOOP_JOB, cron="*/5 * * * *", description="Load test: does nothing.",
           handler=noop, timeout=60)
MAX_SLOWDOWN = 0.10  # deliveries/s at any size: at least 90 % of the empty database's


@dataclass(frozen=True, kw_only=True)
class Plan:
    quick: bool
    sizes: tuple[int, ...]
    workers: int
    connections: int
    threads: int
    duration: int
    warmup: int
    takeovers: int
    reports: int



def measure(kind: str, mode: str, plan: Plan, *, postgres_url: str) -> list[dict[str, Any]]:
    """Serve one fresh database; at each size, add history, then measure."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"eleva-history-{kind}-") as tmp:
        workdir = Path(tmp)
        url = harness.prepare_database(kind, workdir=workdir, postgres_url=postgres_url)
        if mode == "stale":
            set_statistics(url, fresh=False)
        app = create_app(harness.service_environment(
            database_url=url, app_url="http://127.0.0.1:9", bind="127.0.0.1:9",
            workers=plan.workers) | {"LOG_LEVEL": "ERROR"})
        engine = get_engine(app)
        try:
            with harness.serve(database_url=url, workers=plan.workers,
                                workdir=workdir) as server:
                # Every worker imports what deliveries use and fills its connection pool.
                wrk.run_wrk(server.url, duration=plan.warmup, connections=plan.connections,
                                 threads=plan.threads, deliveries=wrk.delivery_settings(
                                     server, run=wrk.new_tag("W"),
                                     lifetime=MAX_LIFETIME))
                filled = 0
                for size in plan.sizes:
                    started = time.monotonic()
                    fill_history(engine, size - filled, job=NOOP.name)
                    filled = size
                    if kind == "postgres" and mode == "fresh":
                        set_statistics(url, fresh=True)
                    settle_writes(engine)
                    fill_seconds = round(time.monotonic() - started, 1)
                    print(f"[{kind} {mode}] {size:,} historic rows (filled in {fill_seconds} s)",
                          flush=True)
                    row = {"database": kind, "statistics": mode, "history": size,
                           "fill_seconds": fill_seconds,
                           **deliveries(server, engine, plan),
                           **takeovers(app, engine, plan),
                           **reports(app, plan)}
                    rows.append(row)
                    print("   ", json.dumps({k: v for k, v in row.items()
                                             if k not in ("ledger", "statuses")}), flush=True)
        finally:
            extensions.close(app)
        problems = harness.log_problems(workdir / "gunicorn.log")
        for row in rows:
            row["log_problems"] = problems
    return rows


def settle_writes(engine: Engine) -> None:
    """Write the fill out of the log before measuring, at every size alike.

    A fill of a million rows leaves a gigabyte of WAL: the checkpoint it triggers would run during
    the measurement and slow every commit (two per delivery), which is the fill's cost, not the
    history's.
    """
    with db.autocommit(engine.connect()) as conn:  # neither runs inside a transaction
        if engine.dialect.name == "postgresql":
            conn.execute(text("CHECKPOINT"))
        else:
            # Passive: the server's workers keep their connections open meanwhile.
            conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))


def deliveries(server: harness.Server, engine: Engine, plan: Plan) -> dict[str, Any]:
    """Verified deliveries of the no-op job under wrk; each 2xx matched to a run."""
    tag = wrk.new_tag("H")
    result = wrk.run_wrk(server.url, duration=plan.duration, connections=plan.connections,
                              threads=plan.threads,
                              deliveries=wrk.delivery_settings(
                                  server, run=tag, lifetime=MAX_LIFETIME))
    runs = harness.settled_runs(engine, tag + "-")
    script = result.script or {}
    return {
        "deliveries_per_s": round(result.rps, 1),
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "errors": result.errors,
        "statuses": script.get("statuses", {}),
        "ledger": phases.ledger_report(runs, ok=int(script.get("ok", 0)),
                                         sent=int(script.get("sent", 0))),
    }


def takeovers(app: Flask, engine: Engine, plan: Plan) -> dict[str, Any]:
    """Median time of a delivery that takes over a run whose worker died (the settle path)."""
    times = []
    for _ in range(plan.takeovers):
        message = f"takeover-{uuid.uuid4().hex}"
        with engine.begin() as conn:
            past = utcnow() - timedelta(seconds=1)
            conn.execute(insert(JobRun).values(
                id=uuid.uuid4().hex, message_id=message, job=NOOP.name, retried=0, attempts=1,
                trigger="qstash", status="running", started_at=past, expires_at=past))
        started = time.perf_counter()
        outcome = run(app, NOOP, Delivery(
            trigger="qstash", message_id=message, retried=1, token_id=uuid.uuid4().hex))
        times.append(time.perf_counter() - started)
        if outcome.status != "succeeded":
            raise SetupError(f"the takeover ended {outcome.status}: is a run still running?")
    return {"takeover_ms": _median_ms(times)}


def reports(app: Flask, plan: Plan) -> dict[str, Any]:
    """Median times of the health report's job part and of three run history pages."""
    sessions = get_sessions(app)
    registered = {**get_jobs(app), NOOP.name: NOOP}
    crons = {name: job.cron for name, job in registered.items()}
    timings: dict[str, list[float]] = {"health_ms": [], "history_ms": [],
                                       "history_job_ms": [], "history_failed_ms": []}
    for _ in range(plan.reports):
        for key, call in (
            ("health_ms", lambda: health._jobs(sessions, registered, crons, {},
                                               settings_prefix="", now=utcnow(), enabled=None)),
            ("history_ms", lambda: run_history(sessions)),
            ("history_job_ms", lambda: run_history(sessions, job=NOOP.name)),
            ("history_failed_ms", lambda: run_history(sessions, status="failed")),
        ):
            started = time.perf_counter()
            call()
            timings[key].append(time.perf_counter() - started)
    return {key: _median_ms(values) for key, values in timings.items()}


def _median_ms(seconds: Sequence[float]) -> float:
    return round(1000 * statistics.median(seconds), 2) if seconds else 0.0


def checks(rows: Sequence[Mapping[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """The ledger matches wrk everywhere; a full run also holds deliveries/s within 10 %."""
    found = []
    for row in rows:
        name = f"{row['database']} {row['statistics']} {row['history']:,}"
        found.append({"name": f"{name}: every 2xx has its run, no errors",
                      "passed": row["ledger"]["consistent"] and row["errors"] == 0,
                      "enforced": True})
        empty = next(r for r in rows if (r["database"], r["statistics"]) ==
                     (row["database"], row["statistics"]) and r["history"] == plan.sizes[0])
        ratio = row["deliveries_per_s"] / empty["deliveries_per_s"] if empty[
            "deliveries_per_s"] else 0.0
        found.append({"name": f"{name}: deliveries/s {ratio:.1%} of the empty database's",
                      "passed": ratio >= 1 - MAX_SLOWDOWN, "enforced": not plan.quick})
    return found


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    header = ("database", "statistics", "history", "deliveries/s", "p99 ms", "takeover ms",
              "health ms", "history ms", "by job ms", "failed ms")
    print("\n" + " | ".join(header))
    for row in rows:
        print(" | ".join(str(x) for x in (
            row["database"], row["statistics"], f"{row['history']:,}", row["deliveries_per_s"],
            row["p99_ms"], row["takeover_ms"], row["health_ms"], row["history_ms"],
            row["history_job_ms"], row["history_failed_ms"])))


def parse_args(argv: Sequence[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--statistics", choices=("fresh", "stale", "both"), default="both",
                        help="PostgreSQL: statistics after ANALYZE, stale ones, or both")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and a few seconds each; checks correctness only")
    parser.add_argument("--sizes", help="comma-separated history sizes "
                                        "(0,100000,1000000; quick 0,2000)")
    parser.add_argument("--duration", type=int, help="seconds of wrk per size (20; quick 1)")
    parser.add_argument("--postgres-url",
                        default=os.environ.get("HISTORY_BENCH_DATABASE_URL",
                                               DEFAULT_POSTGRES_URL),
                        help="loopback PostgreSQL database; its public schema is dropped")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    sizes = tuple(int(s) for s in (args.sizes or ("0,2000" if quick else "0,100000,1000000"))
                  .split(","))
    if list(sizes) != sorted(sizes) or sizes[0] < 0:
        parser.error("--sizes must be increasing and start at 0 or more")
    plan = Plan(quick=quick, sizes=sizes, workers=4, connections=32, threads=2,
                duration=args.duration or (1 if quick else 20), warmup=1 if quick else 5,
                takeovers=10 if quick else 50, reports=5 if quick else 30)
    return plan, args


def main(argv: Sequence[str] | None = None) -> int:
    plan, args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    runs = []
    if args.database in ("sqlite", "both"):
        runs.append(("sqlite", "n/a"))
    if args.database in ("postgres", "both"):
        runs += [("postgres", mode) for mode in ("fresh", "stale")
                 if args.statistics in (mode, "both")]
    output: Path = args.output or HERE / ("history-results-quick.json" if plan.quick
                                          else "history-results.json")
    started = time.time()
    rows: list[dict[str, Any]] = []
    try:
        facts = machine_facts(args.postgres_url if args.database != "sqlite" else None)
        for kind, mode in runs:
            rows += measure(kind, mode, plan, postgres_url=args.postgres_url)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    found = checks(rows, plan)
    passed = all(c["passed"] or not c["enforced"] for c in found)
    facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"mode": "quick" if plan.quick else "full",
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "seconds": round(time.time() - started, 1), "machine": facts,
              "plan": asdict(plan), "results": rows, "checks": found, "passed": passed}
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    for check in found:
        if not check["passed"]:
            print(f"{'FAILED' if check['enforced'] else 'missed (not enforced)'}: "
                  f"{check['name']}")
    print(f"\n{'passed' if passed else 'FAILED'} in {report['seconds']} s; results in {output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
