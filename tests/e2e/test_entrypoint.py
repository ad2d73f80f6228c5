from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qstash import QStash

from devtools.qstash_local import DEV_TOKEN, LocalQStash, RunningServer
from tests.helpers import ROOT, free_port, wait_until_live

SERVED = [sys.executable, "-c", "print('server started')"]
Local = tuple[LocalQStash, RunningServer]


def entrypoint(env: dict[str, str], *command: str, timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "docker-entrypoint.sh"), *command],
        cwd=ROOT, env=container_env(env), capture_output=True, text=True, timeout=timeout,
    )


def container_env(env: dict[str, str]) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FLASK_APP": "wsgi",
            "FLASK_SKIP_DOTENV": "1", "LOG_FORMAT": "json", **env}


def entrypoint_lines(output: str) -> list[dict[str, str]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "entrypoint"]


def stopped(env: dict[str, str], *, exit_code: int = 1) -> dict[str, str]:
    """Run the entrypoint, which must stop before serving; return the one line it logged."""
    result = entrypoint(env, *SERVED)
    assert result.returncode == exit_code
    assert "server started" not in result.stdout
    [line] = entrypoint_lines(result.stdout)
    return line


def schedule_ids(server: RunningServer) -> list[str]:
    client = QStash(DEV_TOKEN, base_url=server.url, retry=False)
    try:
        return sorted(s.schedule_id for s in client.schedule.list())
    finally:
        client.http._client.close()


@pytest.mark.slow
def test_configured_start_migrates_syncs_and_serves(
    qstash_env: dict[str, str], local_qstash: Local
) -> None:
    result = entrypoint(qstash_env, *SERVED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("server started")
    assert "created 3, updated 0, deleted 0, unchanged 0" in result.stdout
    [line] = entrypoint_lines(result.stdout)
    assert line == {"level": "info", "logger": "entrypoint",
                    "message": "QStash schedules are in sync"}
    assert len(schedule_ids(local_qstash[1])) == 3


@pytest.mark.slow
def test_unconfigured_qstash_says_what_is_missing_and_serves(env: dict[str, str]) -> None:
    del env["QSTASH_TOKEN"]
    result = entrypoint(env, *SERVED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("server started")
    [line] = entrypoint_lines(result.stdout)
    assert line["level"] == "warning"
    assert line["message"].startswith("schedules were not created or updated: "
                                      "QStash is not configured: QSTASH_TOKEN: missing")


def test_strict_mode_also_exits_when_qstash_is_not_configured(env: dict[str, str]) -> None:
    del env["QSTASH_TOKEN"]
    line = stopped({**env, "QSTASH_UPDATE_STRICT": "1"}, exit_code=3)
    assert line["level"] == "error"
    assert line["message"].endswith("exiting because QSTASH_UPDATE_STRICT is set")


@pytest.mark.slow
def test_a_one_off_flask_command_neither_migrates_nor_syncs_first(
    qstash_env: dict[str, str], local_qstash: Local
) -> None:
    # Previewing a new image's sync must not apply it, nor migrate the database on the way.
    result = entrypoint(qstash_env, "flask", "qstash", "update", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was changed" in result.stdout
    assert entrypoint_lines(result.stdout) == []
    assert schedule_ids(local_qstash[1]) == []
    status = entrypoint(qstash_env, "flask", "db", "current")
    assert status.returncode == 0 and "(head)" not in status.stdout  # still unmigrated


@pytest.mark.slow
def test_failed_update_is_loud_but_not_fatal(
    qstash_env: dict[str, str], local_qstash: Local
) -> None:
    result = entrypoint({**qstash_env, "QSTASH_TOKEN": "rotated-away"}, *SERVED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("server started")
    [line] = entrypoint_lines(result.stdout)
    assert line["level"] == "error"
    assert "flask qstash update failed (exit 1)" in line["message"]
    assert "QStash refused the token" in line["message"]
    assert "rotated-away" not in result.stdout + result.stderr
    assert schedule_ids(local_qstash[1]) == []


@pytest.mark.slow
def test_strict_mode_exits_when_the_update_fails(
    qstash_env: dict[str, str], local_qstash: Local
) -> None:
    env = {**qstash_env, "QSTASH_TOKEN": "rotated-away", "QSTASH_UPDATE_STRICT": "true"}
    line = stopped(env)
    assert "exiting because QSTASH_UPDATE_STRICT=true" in line["message"]


@pytest.mark.slow
def test_migration_failure_stops_the_container(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"
    line = stopped(env)
    assert line["message"].startswith("start-up stopped at the database migration: ")
    assert "check DATABASE_URL and that the database server is reachable" in line["message"]


@pytest.mark.slow
def test_a_bad_setting_stops_the_container_naming_it(env: dict[str, str]) -> None:
    env["LOG_FORMAT"] = "xml"
    line = stopped(env)
    assert "LOG_FORMAT" in line["message"] and "DATABASE_URL" not in line["message"]


@pytest.mark.slow
def test_default_command_execs_gunicorn_which_receives_signals(env: dict[str, str]) -> None:
    del env["QSTASH_TOKEN"]
    port = free_port()
    process = subprocess.Popen(
        ["sh", str(ROOT / "docker-entrypoint.sh"), "gunicorn", "-c", "gunicorn.conf.py",
         "wsgi:app"],
        cwd=ROOT, env={**container_env(env), "PORT": str(port), "GUNICORN_WORKERS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_live(f"http://127.0.0.1:{port}", process)
        # The shell replaced itself with gunicorn: SIGTERM reaches the server directly.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
