"""Verified deliveries/s under wrk for variants of the service, in alternating rounds.

    .venv/bin/python -m bench.load.variants --variant NAME[=VAR=VALUE,...] ... \
        [--database sqlite|postgres|both] [--rounds 8] [--duration 15] [--jobs 64]

Each variant is a gunicorn server of the service (gunicorn.conf.py, 4 workers, the no-op jobs of
bench/peer/service_wsgi.py) with some environment variables of its own, for example
`--variant on --variant off=BENCH_METRICS=off` (the metrics' cost: the delivery hook removed and
every recording call made a no-op) or `--variant slots4 --variant slots32=GUNICORN_APP_SLOTS=32`.
All of them run at once on one fresh database, each with its metric files on a tmpfs as in the
image, and wrk drives them in turns, the order reversed every other round, 32 connections, a
fresh signed token and message id per request; every 2xx must match a stored run. Reports each
variant's median deliveries/s and, against the first variant, the median of the per-round
ratios: the figure that a drift of the machine affects least.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from bench.databases import SetupError
from bench.load import harness, wrk
from bench.load.report import machine_facts
from bench.peer.run import DEFAULT_POSTGRES, Plan, serve, service_command, side_result, wrk_round
from devtools.gunicorn import free_port
from service import db


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """NAME or NAME=VAR=VALUE,VAR=VALUE."""
    name, _, assignments = text.partition("=")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        variable, equals, value = assignment.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{assignment!r} is not VAR=VALUE")
        env[variable] = value
    return name, env


def measure(kind: str, variants: dict[str, dict[str, str]], plan: Plan,
            postgres_url: str) -> dict[str, Any]:
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="variants-") as tmp, \
            tempfile.TemporaryDirectory(prefix="variants-", dir=shm) as files, ExitStack() as stack:
        workdir = Path(tmp)
        database = harness.prepare_database(kind, workdir=workdir, postgres_url=postgres_url)
        engine = db.make_engine(database)
        stack.callback(engine.dispose)
        urls = {}
        for name, extra in variants.items():
            port = free_port()
            url = urls[name] = f"http://127.0.0.1:{port}"
            env = harness.service_environment(database_url=database, app_url=url,
                                               bind=f"127.0.0.1:{port}", workers=plan.workers)
            env.update({"BENCH_JOBS": str(plan.jobs),
                        "PROMETHEUS_MULTIPROC_DIR": str(Path(files) / name), **extra})
            stack.enter_context(serve(service_command(plan), env, url=url, workdir=workdir,
                                      name=name, workers=plan.workers, health="/healthz"))
        targets = [f"/api/cron/noop-{n}" for n in range(plan.jobs)]
        rounds: list[dict[str, Any]] = []
        for number in range(plan.rounds):
            found = {}
            for name in list(variants)[::1 if number % 2 == 0 else -1]:
                tag = wrk.new_tag("V")
                result = wrk_round(url=urls[name], path="/api/qstash", body=b"{}",
                                   targets=targets, tag=tag, plan=plan)
                found[name] = side_result(result, sum(harness.settled_runs(
                    engine, tag + "-").values()))
            rounds.append(found)
            print(f"    round {number + 1}: " + ", ".join(
                f"{name} {found[name]['rps']}/s" for name in variants), flush=True)
    first = next(iter(variants))
    summary: dict[str, Any] = {}
    for name in variants:
        ratios = [r[name]["rps"] / r[first]["rps"] for r in rounds if r[first]["rps"]]
        summary[name] = {
            "rps_median": round(statistics.median(r[name]["rps"] for r in rounds), 1),
            f"ratio_to_{first}_median": round(statistics.median(ratios), 3),
            "every_2xx_matched": all(r[name]["matched"] for r in rounds),
        }
    return {"variants": summary, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load.variants",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME or NAME=VAR=VALUE,...; the first is the reference")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per variant")
    parser.add_argument("--duration", type=int, default=15, help="seconds per round")
    parser.add_argument("--jobs", type=int, default=64,
                        help="no-op jobs the deliveries spread over (1: most find it busy)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    variants = dict(args.variant)
    plan = Plan(rounds=args.rounds, duration=args.duration, workers=4, connections=32,
                threads=2, jobs=args.jobs, peer_persistent=False)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results: dict[str, Any] = {}
    try:
        facts = machine_facts(args.postgres_url if "postgres" in kinds else None)
        for kind in kinds:
            print(f"[{kind}] {plan.rounds} alternating rounds of {plan.duration} s", flush=True)
            results[kind] = measure(kind, variants, plan, args.postgres_url)
    except (SetupError, psycopg.OperationalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"machine": facts, "variants": variants, "plan": {
        "rounds": plan.rounds, "duration": plan.duration, "jobs": plan.jobs}, "results": results}
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    first = next(iter(variants))
    print(f"\ndatabase | variant | deliveries/s (median) | against {first} (median ratio)")
    for kind, found in results.items():
        for name, figures in found["variants"].items():
            print(f"{kind} | {name} | {figures['rps_median']} | "
                  f"{figures[f'ratio_to_{first}_median']}")
    matched = all(v["every_2xx_matched"] for r in results.values() for v in r["variants"].values())
    print("every 2xx matched a stored run" if matched else "FAILED: unmatched 2xx")
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
