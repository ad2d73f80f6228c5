"""What the metrics cost a verified delivery: CPU per call with them and without, interleaved.

    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python -m bench.load.metrics_overhead \
        [--database sqlite|postgres|both] [--requests N] [--blocks B]

One process, the service with the no-op job called as a WSGI app (as bench/load/delivery_cpu.py
does). Blocks of N deliveries alternate (on, off, off, on, ...) between metrics on and metrics
off (the delivery hook removed and every recording call made a no-op), so that a busy neighbour
slows both alike; the
median CPU per call of each side, and their ratio. With PROMETHEUS_MULTIPROC_DIR set, the
values go to the multiprocess files, as under gunicorn.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from bench.databases import SetupError
from bench.load.delivery_cpu import APP_URL, BODY, service
from bench.load.harness import DEFAULT_POSTGRES_URL, database_kinds, fresh_databases
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY
from service import metrics
from service.extensions import get_jobs
from service.qstash.signature import qstash_claims, sign_claims


class _Nothing:
    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def metrics_switch(app: Flask) -> Callable[[bool], None]:
    """Return a switch that turns the app's metrics off (the delivery hook removed and every
    recording call made a no-op) and on again."""
    hooks = app.after_request_funcs[None]
    hook = next(f for f in hooks if f.__name__ == "count_delivery")
    child = metrics._child

    def switch(on: bool) -> None:
        if on:
            metrics._child = child
            if hook not in hooks:
                hooks.append(hook)
        else:
            metrics._child = lambda *labels: _Nothing()  # type: ignore[assignment]
            if hook in hooks:
                hooks.remove(hook)

    return switch


def measure(database_url: str, count: int, blocks: int, workdir: Path) -> dict[str, float]:
    tokens = [sign_claims(qstash_claims(url=APP_URL + "/api/qstash", body=BODY),
                          DEV_CURRENT_SIGNING_KEY) for _ in range(count * blocks * 2 + 200)]
    statuses: set[str] = set()
    with service(database_url, workdir / "service.log") as app:
        job = get_jobs(app)["noop"]
        tag = f"{time.time_ns()}"
        switch = metrics_switch(app)

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.add(status)

        def deliver(i: int) -> None:
            environ = {
                "REQUEST_METHOD": "POST", "PATH_INFO": "/api/qstash", "QUERY_STRING": "",
                "SERVER_NAME": "bench.local", "SERVER_PORT": "80", "HTTP_HOST": "bench.local",
                "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(BODY), "wsgi.errors": sys.stderr,
                "CONTENT_LENGTH": str(len(BODY)), "CONTENT_TYPE": "application/json",
                "HTTP_UPSTASH_SIGNATURE": tokens[i], "HTTP_UPSTASH_MESSAGE_ID": f"m-{tag}-{i}",
                "HTTP_UPSTASH_RETRIED": "0", "HTTP_X_QSTASH_TARGET_URL": job.path,
            }
            b"".join(app(environ, start_response))

        for i in range(200):
            deliver(-1 - i)
        figures: dict[bool, list[float]] = {True: [], False: []}
        index = 0
        for block in range(2 * blocks):
            on = block % 4 in (0, 3)  # on, off, off, on: a drift of the machine cancels out
            switch(on)
            started = time.process_time()
            for _ in range(count):
                deliver(index)
                index += 1
            figures[on].append(1000 * (time.process_time() - started) / count)
            switch(True)
    if statuses != {"200 OK"}:
        raise SystemExit(f"unexpected answers: {sorted(statuses)}; see {workdir}")
    with_metrics = statistics.median(figures[True])
    without = statistics.median(figures[False])
    return {"with_metrics_ms": with_metrics, "without_ms": without,
            "overhead_percent": 100 * (with_metrics - without) / without}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--requests", type=int, default=200, help="deliveries per block")
    parser.add_argument("--blocks", type=int, default=40, help="blocks per side")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = {}
    try:
        for kind, url, workdir in fresh_databases(database_kinds(args.database),
                                                  prefix="metrics-overhead",
                                                  postgres_url=args.postgres_url):
            results[kind] = found = measure(url, args.requests, args.blocks, workdir)
            print(f"{kind}: {found['with_metrics_ms']:.3f} ms with metrics, "
                  f"{found['without_ms']:.3f} ms without: {found['overhead_percent']:+.1f} %")
    except SetupError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
