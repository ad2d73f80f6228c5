from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from service import db
from service.extensions import get_engine


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
