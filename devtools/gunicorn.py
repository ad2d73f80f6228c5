from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "gunicorn.conf.py"


class GunicornError(Exception):
    """gunicorn exited or did not become ready in time; the message ends with its log."""


@dataclass(frozen=True, kw_only=True)
class Gunicorn:
    """A gunicorn master started by `running_gunicorn`."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        """Return the server's log so far, or "" when it writes to the terminal."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the server's log."""
        return self.log()[-chars:]

    def worker_pids(self) -> list[int]:
        """Return the ids of the master's live child processes: its workers."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command name, which is in parentheses and may contain spaces.
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == self.process.pid:
                pids.append(int(entry.name))
        return sorted(pids)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that nothing listens on at the moment."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_gunicorn(
    app: str,
    *,
    env: Mapping[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    cwd: Path = ROOT,
    config: Path = CONFIG,
    log_path: Path | None = None,
    ready_path: str = "/healthz",
    ready: Callable[[Gunicorn], bool] | None = None,
    timeout: float = 30.0,
    stop_timeout: float = 30.0,
) -> Iterator[Gunicorn]:
    """Run gunicorn serving `app` until the block ends; yield it once `ready_path` answers 200.

    The environment is passed as given (plus GUNICORN_BIND); port 0 picks a free one. Output goes
    to `log_path` when given, else to this process's terminal. `ready`, if given, must also hold
    (say, every worker booted) before the block starts.
    """
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb")) if log_path is not None else None
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(config), app],
            cwd=cwd, env={**env, "GUNICORN_BIND": f"{host}:{port}"},
            stdout=log, stderr=subprocess.STDOUT if log is not None else None,
        )
        server = Gunicorn(process=process, url=url, log_path=log_path)
        try:
            _wait_until_ready(server, ready_path=ready_path, ready=ready, timeout=timeout)
            yield server
        finally:
            _stop(process, timeout=stop_timeout)


def _wait_until_ready(server: Gunicorn, *, ready_path: str,
                      ready: Callable[[Gunicorn], bool] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if answers(server.url + ready_path) and (ready is None or ready(server)):
            return
        code = server.process.poll()
        if code is not None:
            raise GunicornError(f"gunicorn exited with code {code}\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise GunicornError(f"{server.url} did not become ready within {timeout:g} s\n"
                                f"{server.log_tail()}")
        time.sleep(0.1)


def answers(url: str) -> bool:
    """Whether a GET of url answers 200 within a second.

    The probe closes its connection: gunicorn, when it stops, waits up to 2 s on a kept-alive
    one, and every stop of a probed server would pay for it.
    """
    try:
        return requests.get(url, timeout=1, headers={"Connection": "close"}).status_code == 200
    except requests.RequestException:
        return False  # not listening yet, or a worker still booting on a busy machine


def _stop(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
