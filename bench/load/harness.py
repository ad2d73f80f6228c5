from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from bench.databases import SetupError, reset_postgres
from devtools.gunicorn import Gunicorn, GunicornError, free_port, running_gunicorn
from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY
from service import db

ROOT = Path(__file__).resolve().parents[2]
WSGI_APP = "bench.load.noop_wsgi:app"
NOOP_JOB = "noop"
# Not "bench": other benchmarks of this repository reset that one.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/bench_load"

# Settings the service reads; scrubbed from the inherited environment so that a developer's
# shell cannot change what is measured.
SETTING_PREFIXES = (
    "APP_", "NEXT_PUBLIC_APP_URL", "QSTASH_", "DATABASE_URL", "ADMIN_API_TOKEN", "SERVICE_NAME",
    "LOG_", "JOB_", "MAX_BODY_BYTES", "STRIPE_", "SMTP_", "MAIL_", "PAYOUT_", "NOTIFIER",
    "GUNICORN_", "PORT", "FORWARDED_ALLOW_IPS", "BENCH_",
)
LOG_PROBLEMS = ('"level": "error"', '"level": "critical"', "[ERROR]", "[CRITICAL]",
                "Traceback", "WORKER TIMEOUT")


def prepare_database(kind: str, *, workdir: Path, postgres_url: str) -> str:
    """Return the URL of a fresh, migrated database of this kind."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    else:
        url = postgres_url
        reset_postgres(url)
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    return url


def database_kinds(choice: str) -> tuple[str, ...]:
    """Return the database kinds a `--database sqlite|postgres|both` choice names."""
    return ("sqlite", "postgres") if choice == "both" else (choice,)


def fresh_databases(kinds: Sequence[str], *, prefix: str,
                    postgres_url: str) -> Iterator[tuple[str, str, Path]]:
    """Yield each kind with the URL of a fresh database of it and a new scratch directory."""
    for kind in kinds:
        workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{kind}-"))
        try:
            url = prepare_database(kind, workdir=workdir, postgres_url=postgres_url)
        except SetupError as exc:
            raise SetupError(f"cannot set up {kind}: {exc}") from exc
        yield kind, url, workdir


def runs_by_status(engine: Engine, prefix: str) -> dict[str, int]:
    """Count the ledger's runs whose message id starts with prefix, by status."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, COUNT(*) FROM job_runs WHERE message_id LIKE :p GROUP BY status"),
            {"p": prefix + "%"},
        ).all()
    return {str(status): int(count) for status, count in rows}


def settled_runs(engine: Engine, prefix: str, *, timeout: float = 15.0) -> dict[str, int]:
    """Wait until requests still in the server have finished, then count their runs."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] | None = None
    while True:
        counts = runs_by_status(engine, prefix)
        if (counts == last and not counts.get("running")) or time.monotonic() > deadline:
            return counts
        last = counts
        time.sleep(0.3)


@dataclass(frozen=True, kw_only=True)
class Server:
    url: str
    app_url: str
    gunicorn: Gunicorn

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's child processes."""
        return self.gunicorn.worker_pids()


def service_environment(*, database_url: str, app_url: str, bind: str,
                        workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update({
        "PYTHONPATH": str(ROOT),
        "APP_URL": app_url,
        "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
        "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
        # Never called during deliveries; set so the configuration report is clean.
        "QSTASH_TOKEN": "bench-token",
        "QSTASH_URL": "http://127.0.0.1:9",
        "DATABASE_URL": database_url,
        "APP_ENV": "development",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "GUNICORN_BIND": bind,
        "GUNICORN_WORKERS": str(workers),
    })
    return env


@contextmanager
def serve(*, database_url: str, workers: int, workdir: Path) -> Iterator[Server]:
    """Run gunicorn with the no-op app on a free loopback port until the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_environment(database_url=database_url, app_url=url,
                              bind=f"127.0.0.1:{port}", workers=workers)
    # Started from the work directory so that a developer's .env is not read.
    try:
        with running_gunicorn(
            WSGI_APP, env=env, port=port, cwd=workdir, log_path=workdir / "gunicorn.log",
            ready=lambda g: len(g.worker_pids()) == workers, stop_timeout=40,
        ) as gunicorn:
            yield Server(url=url, app_url=url, gunicorn=gunicorn)
    except GunicornError as exc:
        # Raised only while starting: the block's own errors pass through unchanged.
        raise SetupError(f"gunicorn did not start with {workers} workers:\n{exc}") from None


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SetupError(f"no VmRSS for process {pid}")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time the processes have used, from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def log_problems(path: Path) -> int:
    """Count error lines, tracebacks and worker timeouts in the server's log."""
    found = 0
    with path.open(errors="replace") as log:
        for line in log:
            if any(marker in line for marker in LOG_PROBLEMS):
                found += 1
    return found


def rss_of(pids: Sequence[int]) -> dict[str, float]:
    return {str(pid): round(rss_mb(pid), 2) for pid in pids}
