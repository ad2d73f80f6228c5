from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from service import db
from service.extensions import get_engine, get_sessions
from service.runs.history import run_history
from tests.helpers import AppFactory


def test_jobs_list_names_every_job(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["jobs", "list"])
    assert result.exit_code == 0
    for name, cron in [("process-tasks", "0 4 * * *"),
                       ("process-expert-transfers", "0 */2 * * *"),
                       ("check-upcoming-payouts", "0 12 * * *")]:
        line = next(line for line in result.output.splitlines() if line.startswith(name))
        assert cron in line
        assert f"/api/cron/{name}" in line


def test_jobs_run_goes_through_the_ledger(app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["jobs", "run", "process-tasks"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["status"] == "succeeded"
    [run] = run_history(get_sessions(app))
    assert (run["id"], run["trigger"], run["status"]) == (outcome["run_id"], "cli", "succeeded")


def test_jobs_run_unknown_job_fails(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["jobs", "run", "nope"])
    assert result.exit_code == 1
    assert "unknown job 'nope'" in result.output


def test_db_upgrade_and_current(make_app: AppFactory, env: dict[str, str]) -> None:
    app = make_app(env, migrate=False)
    runner = app.test_cli_runner()
    assert db.current_revision(get_engine(app)) is None
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert db.current_revision(get_engine(app)) == db.head_revision()
    current = runner.invoke(args=["db", "current"])
    assert f"current: {db.head_revision()}" in current.output
    assert runner.invoke(args=["db", "downgrade", "base"]).exit_code == 0
    assert db.current_revision(get_engine(app)) is None


def test_db_upgrade_reports_an_unreachable_database(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    env["DATABASE_URL"] = "postgresql://nobody:pw-secret@127.0.0.1:9/none?connect_timeout=1"
    result = make_app(env, migrate=False).test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert "check DATABASE_URL" in result.output
    assert "pw-secret" not in result.output


@pytest.mark.parametrize(("args", "problem"), [
    (["db", "upgrade", "nope"], "Can't locate revision identified by 'nope'"),
    (["db", "downgrade", "nope"], "Can't locate revision identified by 'nope'"),
    (["db", "upgrade", "+5"], "Relative revision +5 didn't produce 5 migrations"),
    (["db", "downgrade", "--", "-9"], "Relative revision -9 didn't produce 9 migrations"),
])
def test_db_reports_a_revision_it_cannot_reach_in_one_line(
    app: Flask, runner: FlaskCliRunner, args: list[str], problem: str
) -> None:
    before = db.current_revision(get_engine(app))
    result = runner.invoke(args=args)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"Error: cannot migrate: {problem}" in result.output
    assert db.current_revision(get_engine(app)) == before == db.head_revision()
