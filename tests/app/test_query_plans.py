from __future__ import annotations

import re

import pytest

from bench.plans import Plan, hot_plans

HISTORY = 20_000  # historic runs of the delivered job, and as many tokens, transfers, notices
# Statistics taken while the tables were empty make PostgreSQL guess them several times smaller
# than they are: below about 50,000 rows it rightly reads the table whole to find the oldest
# rows to prune, as that is cheaper at that size. Above, the plan is the index's.
STALE_HISTORY = 60_000


def _running_of_one_job(plan: Plan) -> bool:
    """A statement that looks up the running run of one job: the partial index's query."""
    sql = plan.statement.sql
    return "'running'" in sql and re.search(r"\bjob = ", sql) is not None


def check(plans: list[Plan]) -> None:
    assert plans, "no statement was recorded"
    paths = {plan.statement.path for plan in plans}
    assert {"delivery: take over an expired run (settle)", "health report", "run history API",
            "job process-tasks"} <= paths
    for plan in plans:
        shown = "\n".join((plan.statement.path, plan.statement.sql, *plan.lines))
        assert not plan.full_scans(), shown
        indexes = {index for _, index, table in plan.scans() if table == "job_runs"}
        if _running_of_one_job(plan):
            # Either index seeks the job's running run; PostgreSQL takes the partial one.
            assert indexes, shown
            assert indexes <= {"uq_job_runs_running_job", "ix_job_runs_job_status_started"}, shown
        if "ix_job_runs_job_started" in indexes:
            # Only the newest run of a job, or a page of them, is read through it.
            assert re.search(r"ORDER BY job_runs.started_at DESC\s+LIMIT", plan.statement.sql)
            assert "job_runs.status =" not in plan.statement.sql, shown


@pytest.mark.parametrize("stale", [False, True], ids=["fresh-statistics", "stale-statistics"])
def test_hot_statements_do_not_read_history(database_url: str, stale: bool) -> None:
    # PostgreSQL: each statement's generic plan, as psycopg's prepared statements run it.
    if not database_url.startswith("postgresql") and stale:
        pytest.skip("statistics are PostgreSQL's")
    check(hot_plans(database_url, history=STALE_HISTORY if stale else HISTORY, stale=stale))
