"""Run the whole system on one machine: local QStash, the service under gunicorn, and a first sync.

`python -m devtools.devstack run` keeps everything up until Ctrl-C; `demo` triggers every job of
the registry once, prints what each did and exits 0 only if all of them succeeded.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from blueprints import BLUEPRINTS
from devtools.gunicorn import GunicornError, running_gunicorn
from devtools.qstash_local import (
    DEV_TOKEN,
    LocalQStash,
    LocalQStashConfig,
    RunningServer,
    client_settings,
    serve,
)
from service.qstash.delivery import job_registry

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class StackError(Exception):
    """The local stack could not start or a step failed; the message says which."""


def job_names() -> tuple[str, ...]:
    """Return the names of the jobs the service registers."""
    return tuple(job_registry(BLUEPRINTS))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def pick_port(host: str, wanted: int, what: str) -> int:
    """Return wanted if free, else a free port (saying so)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, wanted))
            return wanted
        except OSError:
            pass
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    say(f"port {wanted} is taken; {what} uses {port} instead")
    return port


def stack_env(base: Mapping[str, str], *, app_url: str, qstash_url: str) -> dict[str, str]:
    """Return the environment that points the service at the local QStash server."""
    env = dict(base)
    env.update({
        "APP_URL": app_url,
        **client_settings(qstash_url),
        "FLASK_APP": "wsgi",
    })
    env.setdefault("ADMIN_API_TOKEN", "dev-" + secrets.token_urlsafe(16))
    env.setdefault("APP_ENV", "development")
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("GUNICORN_WORKERS", "2")
    return env


def flask(env: Mapping[str, str], *args: str) -> str:
    """Run a `flask` command of this project; return its standard output."""
    return command(env, [str(BIN / "flask"), *args], f"flask {' '.join(args)}")


def command(env: Mapping[str, str], argv: Sequence[str], name: str) -> str:
    """Run argv in the project's root; return its standard output."""
    result = subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"{name} failed:\n{result.stderr.strip()}")
    return result.stdout


@contextmanager
def local_qstash(host: str, port: int, *, backoff_scale: float) -> Iterator[RunningServer]:
    """Run the local QStash server, firing schedules on the wall clock."""
    local = LocalQStash(LocalQStashConfig(backoff_scale=backoff_scale))
    local.start(interval=0.5)
    server = serve(local, host=host, port=port)
    try:
        yield server
    finally:
        local.stop()
        server.shutdown()


@contextmanager
def service(env: Mapping[str, str], host: str, port: int) -> Iterator[str]:
    """Run the service under gunicorn until the block ends; yield its URL once it is live."""
    try:
        with running_gunicorn("wsgi:app", env=env, host=host, port=port, ready_path="/readyz",
                              timeout=60) as server:
            yield server.url
    except GunicornError as exc:
        raise StackError(str(exc).strip()) from None


def prepare(env: Mapping[str, str]) -> None:
    say("migrating the database")
    flask(env, "db", "upgrade")
    say("seeding demo data (only into an empty database)")
    seed = [sys.executable, "-m", "devtools.demo", "seed", "--if-empty"]
    print(command(env, seed, "python -m devtools.demo seed").strip())


def trigger_all(env: Mapping[str, str], jobs: Sequence[str]) -> dict[str, str]:
    say("syncing schedules: flask qstash update")
    print(flask(env, "qstash", "update").rstrip())
    messages = {}
    for job in jobs:
        messages[job] = flask(env, "qstash", "trigger", job).strip()
        say(f"triggered {job}: message {messages[job]}")
    return messages


def wait_for_runs(url: str, token: str, messages: Mapping[str, str], *, timeout: float = 120
                  ) -> dict[str, dict[str, Any]]:
    """Poll the admin API until every triggered message has a finished run."""
    deadline = time.monotonic() + timeout
    wanted = {m: job for job, m in messages.items()}
    finished: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        response = requests.get(url + "/api/admin/job-runs?limit=100", timeout=5,
                                headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        for run in response.json()["runs"]:
            if run["message_id"] in wanted and run["status"] != "running":
                finished[wanted[run["message_id"]]] = run
        if len(finished) == len(wanted):
            break
        time.sleep(0.5)
    return finished


def print_runs(runs: Mapping[str, Mapping[str, Any]], jobs: Sequence[str]) -> None:
    print(f"{'JOB':<28} {'STATUS':<10} {'MS':>7}  RESULT")
    for job in jobs:
        run = runs.get(job)
        if run is None:
            print(f"{job:<28} {'no run':<10} {'-':>7}  (not delivered in time)")
            continue
        summary = {k: v for k, v in (run["result"] or {}).items() if not isinstance(v, list)}
        print(f"{job:<28} {run['status']:<10} {run['duration_ms'] or 0:>7}  "
              f"{summary or run['error'] or ''}")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.devstack", description=__doc__)
    parser.add_argument("mode", choices=("run", "demo"))
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM both stop the stack's servers on the way out, also when it was started
    # where SIGINT is ignored (a script's background job) or is stopped by a process manager.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stop)
    host = "127.0.0.1"
    port = pick_port(host, int(os.environ.get("PORT", "8000")), "the service")
    qstash_port = pick_port(host, int(os.environ.get("QSTASH_DEV_PORT", "8080")),
                            "the local QStash server")
    env = stack_env(os.environ, app_url=f"http://{host}:{port}",
                    qstash_url=f"http://{host}:{qstash_port}")
    jobs = job_names()
    try:
        prepare(env)
        with local_qstash(host, qstash_port, backoff_scale=0.01) as qstash, \
                service(env, host, port) as url:
            messages = trigger_all(env, jobs)
            token = env["ADMIN_API_TOKEN"]
            if args.mode == "demo":
                runs = wait_for_runs(url, token, messages)
                print_runs(runs, jobs)
                ok = all(runs.get(job, {}).get("status") == "succeeded" for job in jobs)
                say(f"all {len(jobs)} jobs succeeded" if ok else "some jobs did not succeed")
                return 0 if ok else 1
            # A one-time link into the console, printed here on the machine that runs it.
            link = flask(env, "console", "sign-in-link", "--base-url", url).strip()
            print(f"""
  service        {url}   (health: {url}/readyz)
  console        {url}/admin/
                 sign in once, within 10 minutes: {link}
  local QStash   {qstash.url}   (token and keys: the public dev credentials)
  admin token    {token}
  job runs       curl -H 'Authorization: Bearer {token}' {url}/api/admin/job-runs
  health         curl -H 'Authorization: Bearer {token}' {url}/api/admin/qstash-health

To use the flask commands against this stack, in another terminal:
  export APP_URL={url} QSTASH_URL={qstash.url} QSTASH_TOKEN={DEV_TOKEN}
  .venv/bin/flask --app wsgi qstash trigger process-tasks

Press Ctrl-C to stop.
""", flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            say("stopping")
            return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0


if __name__ == "__main__":
    sys.exit(main())
