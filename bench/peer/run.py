"""Verified deliveries side by side with the closest Python peer, django-qstash, on loopback.

    .venv/bin/python -m bench.peer.run [--database sqlite|postgres|both] [--quick] ...

The peer (django-qstash 0.8.1 on Django 5.2, its webhook verifying each delivery with the
official SDK and storing a task result) is installed into a virtual environment of its own,
bench/peer/.venv, on first use; its Django project is bench/peer/project. Both sides run under
gunicorn with 4 workers and the access log on (the service with its own gunicorn.conf.py, threaded
workers as it ships; the peer with sync workers, gunicorn's default), each on a fresh database of
the same kind, and are driven by wrk at 32 connections, in alternating rounds, with a fresh signed
token per request. Every 2xx must match a stored row: the service's run, the peer's task result.

Configurations: as shipped (the service's one no-op job: concurrent deliveries find it busy and
are recorded as skipped; the peer's Django project logging nothing at INFO, as a new project does)
and same work (64 no-op jobs, deliveries spread over them, so each one runs a job and stores its
outcome, as the peer does; both log two lines per delivery). The peer opens a database connection
per request, Django's default, unless --peer-persistent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from bench.databases import SetupError, reset_postgres
from bench.load import harness, wrk
from bench.load.report import machine_facts
from devtools.gunicorn import Gunicorn, free_port
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY
from service import db
from service.qstash.signature import MAX_LIFETIME

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROJECT = HERE / "project"
VENV = HERE / ".venv"
PEER_REQUIREMENTS = ("django-qstash==0.8.1", "django>=5.2,<5.3", "gunicorn>=23,<28",
                     "psycopg[binary]>=3.2,<4")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/bench_history_service"
DEFAULT_PEER_POSTGRES = "postgresql://postgres@127.0.0.1:5432/bench_history_peer"
PEER_PATH = "/qstash/webhook/"
PEER_BODY = json.dumps({"function": "noop", "module": "peertasks.tasks", "args": [],
                        "kwargs": {}}, separators=(",", ":")).encode()
PEER_TABLE = "django_qstash_results_taskresult"
TARGET_RATIO = 1.5  # same work: the service's verified deliveries/s over the peer's


@dataclass(frozen=True, kw_only=True)
class Plan:
    rounds: int
    duration: int
    workers: int
    connections: int
    threads: int
    jobs: int  # the same-work configuration's jobs
    peer_persistent: bool  # the peer keeps its database connections (not Django's default)


def peer_python() -> Path:
    """The peer's interpreter; create its virtual environment on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"installing the peer into {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
                       check=True)
    return python


def peer_environment(*, database_url: str, url: str, logs: bool,
                     persistent: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(harness.SETTING_PREFIXES + ("DJANGO_", "PEER_"))}
    env.update({
        "PYTHONPATH": str(PROJECT),
        "DJANGO_SETTINGS_MODULE": "peer_settings",
        "PEER_DATABASE_URL": database_url,
        "PEER_URL": url,
        # As shipped, a Django project logs nothing at INFO; for the same work, the library's two
        # lines per delivery, as the service logs two.
        "PEER_LOGS": "1" if logs else "",
        # Django's default is a connection per request; --peer-persistent keeps them open.
        "PEER_PERSISTENT": "1" if persistent else "",
        "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
        "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
    })
    return env


@contextmanager
def serve(command: Sequence[str], env: Mapping[str, str], *, url: str, workdir: Path,
          name: str, workers: int, health: str) -> Iterator[harness.Server]:
    """Run a gunicorn command until the block ends, once `health` answers on every worker."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(list(command), cwd=workdir, env=dict(env), stdout=log,
                                   stderr=subprocess.STDOUT)
    server = harness.Server(url=url, app_url=url,
                            gunicorn=Gunicorn(process=process, url=url, log_path=log_path))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                import requests

                up = requests.post(url + health, timeout=1).status_code < 500
            except Exception:
                up = False
            if up and len(server.worker_pids()) == workers:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def service_command(plan: Plan) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "bench.peer.service_wsgi:app"]


def peer_command(python: Path, plan: Plan, port: int) -> list[str]:
    return [str(python), "-m", "gunicorn", "--workers", str(plan.workers), "--worker-class",
            "sync", "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "--error-logfile",
            "-", "peer_wsgi:application"]


def wrk_round(*, url: str, path: str, body: bytes, targets: Sequence[str], tag: str,
              plan: Plan) -> wrk.WrkResult:
    """One wrk run of verified deliveries, each with its own token and message id."""
    deliveries = wrk.Deliveries(url=url + path, path=path, body=body, targets=tuple(targets),
                                run=tag, lifetime=MAX_LIFETIME)
    return wrk.run_wrk(url, duration=plan.duration, connections=plan.connections,
                       threads=plan.threads, deliveries=deliveries)


def peer_rows(database_url: str, tag: str) -> int:
    """The peer's stored task results for this run's message ids, once requests have ended."""
    engine = db.make_engine(database_url)
    try:
        last = -1
        for _ in range(50):
            with engine.connect() as conn:
                count = int(conn.execute(text(f"SELECT COUNT(*) FROM {PEER_TABLE}"
                                              " WHERE task_id LIKE :p"),
                                         {"p": tag + "-%"}).scalar_one())
            if count == last:
                return count
            last = count
            time.sleep(0.3)
        return last
    finally:
        engine.dispose()


def side_result(result: wrk.WrkResult, stored: int) -> dict[str, Any]:
    script = result.script or {}
    ok, sent = int(script.get("ok", 0)), int(script.get("sent", 0))
    return {"rps": round(result.rps, 1), "p50_ms": result.latency_ms["p50"],
            "p99_ms": result.latency_ms["p99"], "ok_2xx": ok, "sent": sent, "stored": stored,
            "errors": result.errors, "matched": ok <= stored <= sent and result.errors == 0}


def fresh(kind: str, workdir: Path, name: str, postgres_url: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / (name + '.sqlite3')}"
    reset_postgres(postgres_url)
    return postgres_url


def measure(kind: str, plan: Plan, *, postgres_url: str,
            peer_postgres_url: str) -> dict[str, Any]:
    python = peer_python()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"eleva-peer-{kind}-") as tmp:
        workdir = Path(tmp)
        peer_db = fresh(kind, workdir, "peer", peer_postgres_url)
        peer_port = free_port()
        peer_url = f"http://127.0.0.1:{peer_port}"
        for config, jobs in (("as shipped", 1), ("same work", plan.jobs)):
            peer_env = peer_environment(database_url=peer_db, url=peer_url,
                                        logs=config == "same work",
                                        persistent=plan.peer_persistent)
            subprocess.run([str(python), str(PROJECT / "manage.py"), "migrate", "--verbosity",
                            "0"], env=peer_env, cwd=workdir, check=True)
            service_db = harness.prepare_database(kind, workdir=workdir,
                                                   postgres_url=postgres_url)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = harness.service_environment(database_url=service_db, app_url=url,
                                               bind=f"127.0.0.1:{port}", workers=plan.workers)
            env["BENCH_JOBS"] = str(jobs)
            engine = db.make_engine(service_db)
            targets = [f"/api/cron/noop-{n}" for n in range(jobs)]  # service_wsgi's jobs
            rounds: list[dict[str, Any]] = []
            try:
                with serve(service_command(plan), env, url=url, workdir=workdir,
                           name=f"service-{jobs}", workers=plan.workers,
                           health="/healthz") as _service, \
                        serve(peer_command(python, plan, peer_port), peer_env, url=peer_url,
                              workdir=workdir, name="peer", workers=plan.workers,
                              health=PEER_PATH):
                    print(f"[{kind} {config}] {plan.rounds} alternating rounds of "
                          f"{plan.duration} s", flush=True)
                    for number in range(plan.rounds):
                        tag = wrk.new_tag("S")
                        mine = wrk_round(url=url, path="/api/qstash", body=b"{}",
                                         targets=targets, tag=tag, plan=plan)
                        runs = harness.settled_runs(engine, tag + "-")
                        service = side_result(mine, sum(runs.values()))
                        service["skipped"] = runs.get("skipped", 0)
                        tag = wrk.new_tag("P")
                        theirs = wrk_round(url=peer_url, path=PEER_PATH, body=PEER_BODY,
                                           targets=(), tag=tag, plan=plan)
                        peer = side_result(theirs, peer_rows(peer_db, tag))
                        rounds.append({"service": service, "peer": peer})
                        print(f"    round {number + 1}: service {service['rps']}/s "
                              f"({service['skipped']} skipped), peer {peer['rps']}/s", flush=True)
            finally:
                engine.dispose()
            out[config] = summarise(rounds)
    return out


def summarise(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    service = statistics.median(r["service"]["rps"] for r in rounds)
    peer = statistics.median(r["peer"]["rps"] for r in rounds)
    skipped = sum(r["service"]["skipped"] for r in rounds)
    stored = sum(r["service"]["stored"] for r in rounds)
    return {
        "service_rps_median": service,
        "peer_rps_median": peer,
        "ratio": round(service / peer, 2) if peer else None,
        "service_skipped_share": round(skipped / stored, 3) if stored else None,
        "service_p50_ms_median": statistics.median(r["service"]["p50_ms"] for r in rounds),
        "peer_p50_ms_median": statistics.median(r["peer"]["p50_ms"] for r in rounds),
        "every_2xx_matched": all(r["service"]["matched"] and r["peer"]["matched"]
                                 for r in rounds),
        "rounds": list(rounds),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer.run", description=__doc__)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="one short round per side")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (7; quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per round (20; quick 2)")
    parser.add_argument("--peer-persistent", action="store_true",
                        help="let the peer keep its database connections (CONN_MAX_AGE=None); "
                             "by default it runs as a new Django project does, one per request")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--peer-postgres-url", default=DEFAULT_PEER_POSTGRES)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    plan = Plan(rounds=args.rounds or (1 if args.quick else 7),
                duration=args.duration or (2 if args.quick else 20), workers=4, connections=32,
                threads=2, jobs=64, peer_persistent=args.peer_persistent)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results: dict[str, Any] = {}
    try:
        facts = machine_facts(args.postgres_url if "postgres" in kinds else None)
        for kind in kinds:
            results[kind] = measure(kind, plan, postgres_url=args.postgres_url,
                                    peer_postgres_url=args.peer_postgres_url)
    except (SetupError, psycopg.OperationalError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    matched = all(c["every_2xx_matched"] for r in results.values() for c in r.values())
    report = {"machine": facts, "plan": asdict(plan), "results": results, "passed": matched}
    output: Path = args.output or HERE / ("results-quick.json" if args.quick else "results.json")
    output.write_text(json.dumps(report, indent=2) + "\n")
    print("\ndatabase | configuration | service/s | peer/s | ratio | service skipped")
    for kind, configs in results.items():
        for config, found in configs.items():
            print(f"{kind} | {config} | {found['service_rps_median']} | "
                  f"{found['peer_rps_median']} | {found['ratio']} | "
                  f"{found['service_skipped_share']}")
    print(f"\n{'every 2xx matched a stored row' if matched else 'FAILED: unmatched 2xx'};"
          f" results in {output}")
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
