"""Where a verified delivery's CPU goes: one process, one client, no gunicorn and no wrk.

    .venv/bin/python -m bench.load.delivery_cpu [--database sqlite|postgres|both]
        [--requests N] [--rounds R]

Per database: a fresh, migrated database and the service with the no-op job
(bench/load/noop_wsgi.py) called as a WSGI app, its logs going to a file as under gunicorn. For
each part, the CPU time (time.process_time) per call, the median of R rounds of N calls after a
warm-up:

- bare: GET /healthz through the app;
- delivery: a verified delivery of the no-op job through POST /api/qstash, unique message ids;
- signature: service.qstash.signature.verify_signature on the same token and body;
- run: service.runs.runner.run_job for the no-op job (run record, run context, log lines),
  unique ids;
- ledger: the ledger alone: a connection from the pool, then the statements that claim the run
  and record its outcome (runner._start and runner._finish).

PostgreSQL's own CPU is not included: it runs in other processes. Prints a table; exit 2 when the
database cannot be set up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from bench.databases import SetupError
from bench.load.harness import (
    DEFAULT_POSTGRES_URL,
    database_kinds,
    fresh_databases,
    service_environment,
)
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY
from service import create_app, extensions
from service.db import autocommit
from service.extensions import get_engine, get_jobs, get_settings
from service.qstash.signature import qstash_claims, sign_claims, verify_signature
from service.runs import runner
from service.runs.jobs import Delivery, RunOutcome

APP_URL = "http://bench.local"
BODY = b'{"job":"noop"}'
PARTS = ("bare", "delivery", "signature", "run", "ledger")


def per_call_ms(call: Callable[[int], object], count: int, rounds: int) -> float:
    """Median over rounds of the CPU per call: robust to neighbours on a shared machine."""
    for i in range(min(200, count)):
        call(-1 - i)
    figures = []
    for r in range(rounds):
        started = time.process_time()
        for i in range(r * count, (r + 1) * count):
            call(i)
        figures.append(1000 * (time.process_time() - started) / count)
    return statistics.median(figures)


@contextmanager
def service(database_url: str, log_path: Path) -> Iterator[Any]:
    """The no-op service app, configured as bench/load/harness.py configures gunicorn."""
    env = service_environment(database_url=database_url, app_url=APP_URL, bind="", workers=1)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with log_path.open("w") as log, redirect_stdout(log):
            # Imported here: it builds gunicorn's app (unused here) from the environment set
            # above. The app's log handler writes to the stdout it finds at start-up: the file.
            from bench.load import noop_wsgi

            app = create_app(blueprints=noop_wsgi.WITH_LOAD_JOBS)
            try:
                yield app
            finally:
                extensions.close(app)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def measure(database_url: str, count: int, rounds: int,
            workdir: Path) -> dict[str, float]:
    # A token per delivery, minted before the clock starts: the service refuses a token that
    # was already used. The signature part checks the same token again and again.
    tokens = [sign_claims(qstash_claims(url=APP_URL + "/api/qstash", body=BODY),
                          DEV_CURRENT_SIGNING_KEY) for _ in range(count * rounds + 200)]
    token = tokens[0]
    keys = [DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY]
    with service(database_url, workdir / "service.log") as app:
        engine, job = get_engine(app), get_jobs(app)["noop"]
        scrub = get_settings(app).scrub
        tag = f"{time.time_ns()}"
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)

        def wsgi(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
            environ = {
                "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
                "SERVER_NAME": "bench.local", "SERVER_PORT": "80", "HTTP_HOST": "bench.local",
                "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
                "CONTENT_LENGTH": str(len(body)),
                **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
            }
            b"".join(app(environ, start_response))

        def deliver(i: int) -> None:
            wsgi("POST", "/api/qstash", {
                "Upstash-Signature": tokens[i], "Upstash-Message-Id": f"d-{tag}-{i}",
                "Upstash-Retried": "0", "X-Qstash-Target-Url": job.path,
                "Content-Type": "application/json"}, BODY)

        def run(i: int) -> None:
            runner.run_job(engine, job, Delivery(trigger="qstash", message_id=f"r-{tag}-{i}"),
                           scrub=scrub)

        def ledger(i: int) -> None:
            delivery = Delivery(trigger="qstash", message_id=f"t-{tag}-{i}")
            with autocommit(engine.connect()) as conn:
                claim = runner._start(conn, job, delivery)
                assert not isinstance(claim, RunOutcome), claim
                runner._finish(conn, job, *claim, status="succeeded", started=time.monotonic(),
                               result={})

        figures = {
            "bare": per_call_ms(lambda i: wsgi("GET", "/healthz", {}), count, rounds),
            "delivery": per_call_ms(deliver, count, rounds),
            "signature": per_call_ms(lambda i: verify_signature(
                BODY, token, keys=keys, url=APP_URL + "/api/qstash", leeway=5), count, rounds),
            "run": per_call_ms(run, count, rounds),
            "ledger": per_call_ms(ledger, count, rounds),
        }
    if set(statuses) != {"200 OK"}:
        raise SystemExit(f"unexpected answers: {sorted(set(statuses))}; see {workdir}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--requests", type=int, default=1000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per part; the median")
    parser.add_argument("--postgres-url",
                        default=os.environ.get("LOAD_BENCH_DATABASE_URL", DEFAULT_POSTGRES_URL))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    try:
        for kind, url, workdir in fresh_databases(database_kinds(args.database),
                                                  prefix="delivery-cpu",
                                                  postgres_url=args.postgres_url):
            results[kind] = measure(url, args.requests, args.rounds, workdir)
    except SetupError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"CPU ms per call (median of {args.rounds} × {args.requests}){'':<9}" +
          "".join(f"{kind:>10}" for kind in results))
    for part in PARTS:
        print(f"{part:<48}" + "".join(f"{results[k][part]:>10.3f}" for k in results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
