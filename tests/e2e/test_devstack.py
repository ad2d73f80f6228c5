from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from devtools.devstack import job_names, pick_port
from tests.helpers import ROOT, free_port


@pytest.mark.slow
def test_make_demo_runs_the_whole_system_once(env: dict[str, str]) -> None:
    demo_env = {**os.environ, "DATABASE_URL": env["DATABASE_URL"], "FLASK_SKIP_DOTENV": "1",
                "PORT": str(free_port()), "QSTASH_DEV_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "devtools.devstack", "demo"], cwd=ROOT,
                            env=demo_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "seeded " in out and "created 3, updated 0, deleted 0" in out
    table = {line.split()[0]: line.split()[1] for line in out.splitlines()
             if line.startswith(("process-", "check-"))}
    assert table == {"process-tasks": "succeeded", "check-upcoming-payouts": "succeeded",
                     "process-expert-transfers": "succeeded"}
    assert "all 3 jobs succeeded" in out


def test_the_stack_runs_every_registered_job() -> None:
    assert set(job_names()) == {"process-tasks", "check-upcoming-payouts",
                                "process-expert-transfers"}


def test_a_taken_port_is_replaced_and_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = pick_port("127.0.0.1", port, "the service")
    assert chosen != port
    assert f"port {port} is taken; the service uses {chosen} instead" in capsys.readouterr().out
