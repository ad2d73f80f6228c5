"""Start-up cost: the app's import time, a flask command's, and a container's start to ready.

    .venv/bin/python -m bench.startup [--database sqlite|postgres] [--rounds N] [--quick]

- import: `import wsgi` (which builds the app) in a fresh interpreter, median of the rounds; and
  which heavy packages it loaded, with their cumulative import time (`-X importtime`);
- command: a whole `flask jobs list` process, start to exit;
- start to ready: docker-entrypoint.sh as the container runs it (`flask db upgrade` on an empty
  database, `flask qstash update` against a local QStash, then gunicorn with 4 workers) until
  /readyz answers 200 with every worker up; the entrypoint's log lines time its phases.

Processes run from the repository with the container's settings (FLASK_APP=wsgi, a fresh
database, the simulated payout provider). Prints one JSON object; figures are only as quiet as
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from bench.databases import SetupError, reset_postgres
from bench.load.report import machine_facts
from devtools.gunicorn import free_port
from devtools.qstash_local import LocalQStash, LocalQStashConfig, client_settings, serve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/bench_history_startup"
# Packages worth knowing whether start-up loads: the heavy optional ones and the core.
WATCHED = ("stripe", "requests", "alembic", "qstash", "httpx", "croniter", "sqlalchemy",
           "flask", "psycopg", "jinja2", "dotenv", "wsgi")
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)")
WORKERS = 4


def environment(*, database_url: str, qstash_url: str, port: int) -> dict[str, str]:
    """The container's settings, without the developer's."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "FLASK_APP": "wsgi",
        "FLASK_SKIP_DOTENV": "1",
        "PYTHONUNBUFFERED": "1",
        "APP_ENV": "development",
        "APP_URL": f"http://127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        **client_settings(qstash_url),
        "LOG_FORMAT": "json",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(WORKERS),
        "PORT": str(port),
    })
    return env


def children_cpu() -> float:
    """CPU seconds used so far by this process's waited-for children: robust to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def import_seconds(env: Mapping[str, str]) -> tuple[float, float]:
    """Seconds a fresh interpreter spends in `import wsgi`: wall clock, and CPU."""
    code = ("import time; started = time.perf_counter(); cpu = time.process_time(); "
            "import wsgi; print(time.perf_counter() - started, time.process_time() - cpu)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"import wsgi failed:\n{done.stderr[-2000:]}")
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def imported_packages(env: Mapping[str, str]) -> dict[str, float]:
    """Cumulative import milliseconds of the watched packages `import wsgi` loads."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wsgi"], cwd=ROOT,
                          env=dict(env), capture_output=True, text=True, check=False)
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and match.group(3) in WATCHED:
            found.setdefault(match.group(3), round(int(match.group(1)) / 1000, 1))
    return found


def command_seconds(env: Mapping[str, str]) -> tuple[float, float]:
    """Seconds a whole `flask jobs list` process takes: wall clock, and CPU."""
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-m", "flask", "jobs", "list"], cwd=ROOT,
                          env=dict(env), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"flask jobs list failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, children_cpu() - cpu


def start_to_ready(env: Mapping[str, str], *, port: int) -> dict[str, float]:
    """Run the entrypoint with gunicorn; time its phases until /readyz answers 200."""
    command = ["sh", str(ROOT / "docker-entrypoint.sh"), sys.executable, "-m", "gunicorn",
               "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"]
    started, cpu = time.perf_counter(), children_cpu()
    process = subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            now = time.perf_counter() - started
            if "database at revision" in line:
                marks.setdefault("migrated_s", now)
            elif '"logger":"entrypoint"' in line and "schedules" in line:
                marks.setdefault("schedules_synced_s", now)
            elif "Booting worker" in line:
                marks["last_worker_booted_s"] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with requests.Session() as http:
            while True:
                if process.poll() is not None or time.perf_counter() - started > 120:
                    raise SetupError("the entrypoint stopped or hung:\n" + "".join(lines)[-3000:])
                try:
                    ready = http.get(url, timeout=2).status_code == 200
                except requests.RequestException:
                    ready = False
                if ready and sum("Booting worker" in line for line in lines) >= WORKERS:
                    marks["ready_s"] = time.perf_counter() - started
                    break
                time.sleep(0.02)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    # Every process of the start (flask commands, gunicorn and its workers), until they ended.
    marks["cpu_s"] = children_cpu() - cpu
    if "schedules_synced_s" not in marks or not any('"in sync"' in line or "are in sync" in line
                                                      for line in lines):
        raise SetupError("the schedules were not synced:\n" + "".join(lines)[-3000:])
    return {key: round(value, 3) for key, value in marks.items()}


def fresh_database(kind: str, folder: Path, postgres_url: str, number: int) -> str:
    if kind == "postgres":
        reset_postgres(postgres_url)
        return postgres_url
    return f"sqlite:///{folder / f'start-{number}.sqlite3'}"


def measure(kind: str, rounds: int, postgres_url: str) -> dict[str, Any]:
    local = LocalQStash(LocalQStashConfig())
    with serve(local) as qstash, tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        folder = Path(tmp)
        port = free_port()
        env = environment(database_url=fresh_database(kind, folder, postgres_url, 0),
                          qstash_url=qstash.url, port=port)
        imports = [import_seconds(env) for _ in range(rounds)]
        commands = [command_seconds(env) for _ in range(rounds)]
        starts = []
        for number in range(rounds):
            port = free_port()
            env = environment(database_url=fresh_database(kind, folder, postgres_url, number + 1),
                              qstash_url=qstash.url, port=port)
            starts.append(start_to_ready(env, port=port))
        packages = imported_packages(env)
    return {
        "database": kind,
        "rounds": rounds,
        "import_wsgi_ms": _median_ms([wall for wall, _ in imports]),
        "import_wsgi_cpu_ms": _median_ms([cpu for _, cpu in imports]),
        "flask_command_ms": _median_ms([wall for wall, _ in commands]),
        "flask_command_cpu_ms": _median_ms([cpu for _, cpu in commands]),
        "start_to_ready": {key: round(statistics.median(s[key] for s in starts), 3)
                           for key in starts[0]},
        "imported_packages_ms": packages,
        "not_imported": [name for name in WATCHED if name not in packages],
    }


def _median_ms(seconds: Sequence[float]) -> float:
    return round(1000 * statistics.median(seconds), 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--rounds", type=int, help="repetitions, medians reported (5; quick 1)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    try:
        results = [measure(kind, rounds, args.postgres_url) for kind in kinds]
        facts = machine_facts(args.postgres_url if "postgres" in kinds else None)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"machine": facts, "results": results}
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
