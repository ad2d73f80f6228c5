"""Load, duplicate-storm and memory checks of POST /api/qstash under gunicorn, on loopback only.

    .venv/bin/python -m bench.load.run_load [--database sqlite|postgres|both] [--quick] ...

Per database: a fresh, migrated database; gunicorn with 4 workers serving
bench.load.noop_wsgi:app on a free 127.0.0.1 port; then the phases:

- load: wrk against the bare route (GET /healthz), then against verified deliveries of the no-op
  job (bench/load/deliveries.lua), each at 32 connections for a fixed duration; the ledger must
  hold one run per delivery that reached the server.
- storm: one message id delivered many times concurrently; the job must run exactly once.
- memory: RSS of each worker before and after N deliveries, sampled between chunks.

Prints a table, writes JSON, and exits 1 when a check fails. A quick run (--quick, for CI)
enforces correctness only (no errors, ledger counts, one run in the storm, memory measured); the
full run also enforces the performance targets. Exit 2: the run could not be set up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.databases import SetupError
from bench.load.harness import (
    DEFAULT_POSTGRES_URL,
    database_kinds,
    log_problems,
    prepare_database,
    serve,
)
from bench.load.phases import Plan, load_phase, memory_phase, storm_phase, warm_up
from bench.load.report import (
    MAX_P99_MS,
    MAX_RSS_GROWTH_MB,
    MIN_THROUGHPUT_RATIO,
    checks_for,
    machine_facts,
    print_table,
)
from service import db

HERE = Path(__file__).resolve().parent
PHASES = ("load", "storm", "memory")


@contextmanager
def timed(result: dict[str, Any], phase: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    result.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - started, 1)


def run_database(kind: str, plan: Plan, *, postgres_url: str) -> dict[str, Any]:
    """Run the planned phases against one fresh database and its own server."""
    with tempfile.TemporaryDirectory(prefix=f"eleva-bench-{kind}-") as tmp:
        workdir = Path(tmp)
        url = prepare_database(kind, workdir=workdir, postgres_url=postgres_url)
        engine = db.make_engine(url)
        result: dict[str, Any] = {}
        try:
            with serve(database_url=url, workers=plan.workers, workdir=workdir) as server:
                print(f"[{kind}] gunicorn pid {server.gunicorn.process.pid}, workers "
                      f"{server.worker_pids()} on {server.url}", flush=True)
                warm_up(server, plan)
                if "load" in plan.phases:
                    print(f"[{kind}] load: bare route, then deliveries, {plan.duration} s each",
                          flush=True)
                    with timed(result, "load"):
                        result["load"] = load_phase(server, engine, plan)
                if "storm" in plan.phases:
                    print(f"[{kind}] storm: {plan.storm} deliveries of one message id",
                          flush=True)
                    with timed(result, "storm"):
                        result["storm"] = storm_phase(server, engine, plan, workdir)
                if "memory" in plan.phases:
                    print(f"[{kind}] memory: {plan.deliveries} deliveries", flush=True)
                    load = result.get("load")
                    rate = load["deliveries"]["rps"] if load else None
                    with timed(result, "memory"):
                        result["memory"] = memory_phase(server, engine, plan, rate)
        finally:
            engine.dispose()
        result["log_problems"] = log_problems(workdir / "gunicorn.log")
    result["checks"] = [c.to_dict() for c in checks_for(result, plan)]
    return result


def parse_args(argv: Sequence[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load.run_load",
        description="Load, duplicate-storm and memory checks of POST /api/qstash (loopback).",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds per phase; enforce correctness, not targets")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    parser.add_argument("--duration", type=int, help="seconds per wrk load run (20; quick 2)")
    parser.add_argument("--deliveries", type=int,
                        help="deliveries for the memory phase (100000; quick 1000)")
    parser.add_argument("--storm", type=int,
                        help="deliveries of one message id in the storm (1000)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--postgres-url",
                        default=os.environ.get("LOAD_BENCH_DATABASE_URL", DEFAULT_POSTGRES_URL),
                        help="loopback PostgreSQL database to use; its public schema is "
                             "dropped (default: $LOAD_BENCH_DATABASE_URL or "
                             f"{DEFAULT_POSTGRES_URL})")
    parser.add_argument("--output", type=Path,
                        help="JSON results file (default: bench/load/results.json, "
                             "quick: bench/load/results-quick.json)")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        parser.error(f"--phases takes a comma-separated subset of {', '.join(PHASES)}")
    for name in ("duration", "deliveries", "storm", "connections", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    quick = bool(args.quick)
    plan = Plan(
        quick=quick,
        phases=phases,
        workers=args.workers,
        connections=args.connections,
        threads=min(2, args.connections),
        duration=args.duration or (2 if quick else 20),
        warmup=1 if quick else 5,
        deliveries=args.deliveries or (1000 if quick else 100_000),
        chunks=2 if quick else 5,
        storm=args.storm or 1000,
        storm_concurrency=32 if quick else 64,
        storm_hold=0.2,
    )
    return plan, args


def main(argv: Sequence[str] | None = None) -> int:
    plan, args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: install the Debian package with "
              "`apt-get install -y wrk`", file=sys.stderr)
        return 2
    kinds = database_kinds(args.database)
    output: Path = args.output or HERE / ("results-quick.json" if plan.quick else "results.json")
    started = time.time()
    results: dict[str, Any] = {}
    try:
        facts = machine_facts(args.postgres_url if "postgres" in kinds else None)
        for kind in kinds:
            results[kind] = run_database(kind, plan, postgres_url=args.postgres_url)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    passed = all(c["passed"] or not c["enforced"] for r in results.values() for c in r["checks"])
    facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "mode": "quick" if plan.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": facts,
        "plan": asdict(plan),
        "targets": {"min_throughput_ratio": MIN_THROUGHPUT_RATIO, "max_p99_ms": MAX_P99_MS,
                    "max_rss_growth_mb": MAX_RSS_GROWTH_MB},
        "results": results,
        "passed": passed,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"\n{'passed' if passed else 'FAILED'} in {report['seconds']} s; results in {output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
