"""The hot statements as the service runs them, and their plans as the database would run them.

    .venv/bin/python -m bench.plans --database-url URL [--history N] [--stale]

Runs each hot path once through the service's own code (a delivery claiming, blocked, taking over
an expired run, answered as a duplicate and refused as a replay; the health report; the run
history API; the maintenance job's pruning; the payout jobs on demo data), records every
statement it sent, and prints the plan of each: on PostgreSQL the generic plan of the statement
prepared with `plan_cache_mode = force_generic_plan` (what psycopg's prepared statements run
after a few executions), on SQLite `EXPLAIN QUERY PLAN`. With --history, the ledger first gets N
historic runs of the delivered job (and N tokens, transfers and notices); --stale leaves
PostgreSQL's statistics as they were before the fill (no ANALYZE, autovacuum off).
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask
from psycopg import sql
from psycopg.types.json import Json
from sqlalchemy import Connection, Engine, event, insert, update

from bench.databases import reset_postgres
from bench.fill import DELIVERED_JOB, HISTORY_TABLES, fill_history, plain_url, set_statistics
from devtools import demo
from service import create_app, db, extensions, health
from service.db import utcnow
from service.errors import AppError
from service.extensions import get_engine, get_jobs, get_sessions, get_settings
from service.models import JobRun
from service.runs import runner
from service.runs.history import run_history
from service.runs.jobs import Delivery, Job, JobContext, RunOutcome

# Tables whose size grows with history: a plan must not scan them whole.
SCAN_RE = re.compile(r"(Seq Scan|Index Scan Backward|Index Only Scan|Index Scan|Bitmap Heap Scan"
                     r"|Bitmap Index Scan)(?: using (\w+))? on (\w+)")


@dataclass(frozen=True, kw_only=True)
class Statement:
    """One statement a hot path sent, in the driver's paramstyle, with the values it had."""

    path: str
    sql: str
    params: Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True, kw_only=True)
class Plan:
    statement: Statement
    lines: tuple[str, ...]

    def scans(self) -> list[tuple[str, str | None, str]]:
        """(scan kind, index or None, table) for each scan of the plan, outermost first."""
        if any(line.startswith(("SCAN ", "SEARCH ")) for line in self.lines):  # SQLite's
            return _sqlite_scans(self.lines)
        return [(kind, index, table) for line in self.lines
                for kind, index, table in SCAN_RE.findall(line)]

    def full_scans(self) -> list[str]:
        """The history tables this plan reads whole."""
        return [table for kind, index, table in self.scans()
                if table in HISTORY_TABLES and kind in ("Seq Scan", "SCAN")]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.statement.path, "sql": self.statement.sql, "plan": self.lines}


def _sqlite_scans(lines: Sequence[str]) -> list[tuple[str, str | None, str]]:
    found: list[tuple[str, str | None, str]] = []
    for line in lines:
        match = re.search(r"\b(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", line)
        if match:
            kind, table, index = match.groups()
            if kind == "SCAN" and index is not None:
                kind = "SCAN USING INDEX"  # an ordered walk of a whole index
            found.append((kind, index, table))
    return found


def noop(ctx: JobContext) -> Mapping[str, Any]:
    """Do nothing: the delivery's cost is the run record's."""
    return {}


def run(app: Flask, job: Job, delivery: Delivery) -> RunOutcome:
    """Run a job for a delivery as the service does: in an app context, errors scrubbed."""
    with app.app_context():
        return runner.run_job(get_engine(app), job, delivery, scrub=get_settings(app).scrub)


PROBE = Job(name=DELIVERED_JOB, cron="*/5 * * * *", description="Plans: does nothing.",
            handler=noop, timeout=60)


class Recorder:
    """Every statement an engine sends, by the hot path that was running."""

    def __init__(self) -> None:
        self.path = "setup"
        self.statements: list[Statement] = []

    def add(self, statement: str, params: Any) -> None:
        if self.path == "setup":
            return
        values = dict(params) if isinstance(params, Mapping) else tuple(params or ())
        self.statements.append(Statement(path=self.path, sql=statement, params=values))

    def unique(self) -> list[Statement]:
        seen: set[str] = set()
        out = []
        for statement in self.statements:
            key = re.sub(r"\s+", " ", statement.sql)
            if key.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE",
                               "select pg_catalog", "SELECT pg_catalog")) or key in seen:
                continue
            seen.add(key)
            out.append(statement)
        return out


@contextmanager
def recording(engine: Engine) -> Iterator[Recorder]:
    """Record what the engine sends, the ledger's cursor-level statements included."""
    recorder = Recorder()

    def before(conn: Connection, cursor: Any, statement: str, params: Any, context: Any,
               executemany: bool) -> None:
        if not executemany:
            recorder.add(statement, params)

    original = db.run_statement

    def run_statement(conn: Connection, statement: str,
                      params: Mapping[str, Any]) -> tuple[Sequence[Any], int]:
        recorder.add(statement, params)
        return original(conn, statement, params)

    event.listen(engine, "before_cursor_execute", before)
    # The ledger's statements go to the driver's cursor, below the engine's events.
    vars(runner)["run_statement"] = run_statement
    try:
        yield recorder
    finally:
        vars(runner)["run_statement"] = original
        event.remove(engine, "before_cursor_execute", before)


def exercise(app: Flask, recorder: Recorder) -> None:
    """Run each hot path once; the recorder files each statement under its path."""
    engine = get_engine(app)
    sessions = get_sessions(app)
    settings = get_settings(app)

    def deliver(message_id: str | None, token: str | None) -> None:
        try:
            run(app, PROBE, Delivery(trigger="qstash", message_id=message_id,
                                                    token_id=token))
        except AppError:
            pass

    recorder.path = "delivery: claim and finish"
    deliver(_tag("m"), _tag("t"))
    recorder.path = "setup"
    held = _tag("m")
    with engine.begin() as conn:  # a live run holds the job
        conn.execute(insert(JobRun).values(
            id=uuid.uuid4().hex, message_id=held, job=DELIVERED_JOB, retried=0, attempts=1,
            trigger="qstash", status="running", started_at=utcnow(),
            expires_at=utcnow() + timedelta(minutes=5)))
    recorder.path = "delivery: busy job (block)"
    deliver(_tag("m"), _tag("t"))
    recorder.path = "setup"
    with engine.begin() as conn:  # its worker died: the lease has expired
        conn.execute(update(JobRun).where(JobRun.message_id == held)
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    recorder.path = "delivery: take over an expired run (settle)"
    deliver(held, _tag("t"))
    recorder.path = "delivery: duplicate (settle)"
    deliver(held, _tag("t"))
    recorder.path = "delivery: replayed token (settle)"
    spent = _tag("t")
    deliver(_tag("m"), spent)
    deliver(_tag("m"), spent)

    recorder.path = "health report"
    registered = get_jobs(app)
    health._jobs(sessions, registered, {n: j.cron for n, j in registered.items()}, {},
                 settings_prefix="", now=utcnow(), enabled=None)
    recorder.path = "run history API"
    for job, status in ((None, None), (DELIVERED_JOB, None), (None, "failed"),
                        (DELIVERED_JOB, "failed")):
        run_history(sessions, job=job, status=status, limit=50)

    recorder.path = "setup"
    demo.seed_demo(sessions, settings.payout_delay_days, env=settings.app_env)
    for name in ("process-expert-transfers", "check-upcoming-payouts", "process-tasks"):
        recorder.path = f"job {name}"
        run(app, registered[name], Delivery(trigger="cli"))
    recorder.path = "setup"


def _tag(letter: str) -> str:
    return f"{letter}{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------------------------------------
# Plans


def explain_all(url: str, statements: Sequence[Statement]) -> list[Plan]:
    """The plan of each statement: generic on PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    if url.startswith("sqlite"):
        return _explain_sqlite(url, statements)
    return _explain_postgres(url, statements)


_PYFORMAT_RE = re.compile(r"%\((\w+)\)s")


def _explain_postgres(url: str, statements: Sequence[Statement]) -> list[Plan]:
    plans = []
    with psycopg.connect(plain_url(url)) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for number, statement in enumerate(statements):
            names = list(dict.fromkeys(_PYFORMAT_RE.findall(statement.sql)))
            query = _numbered(statement.sql, names)
            assert isinstance(statement.params, Mapping)
            values = [statement.params[name] for name in names]
            types = ", ".join(_pg_type(value) for value in values)
            prepared = f"hot_{number}"
            conn.execute(f"PREPARE {prepared}{f'({types})' if types else ''} AS {query}")
            arguments = sql.SQL(", ").join(sql.Literal(v) for v in values)
            explain = sql.SQL("EXPLAIN EXECUTE {}{}").format(
                sql.Identifier(prepared),
                sql.SQL("({})").format(arguments) if values else sql.SQL(""))
            lines = tuple(row[0] for row in psycopg.ClientCursor(conn).execute(explain))
            conn.execute(f"DEALLOCATE {prepared}")
            plans.append(Plan(statement=statement, lines=lines))
        conn.rollback()
    return plans


def _numbered(statement: str, names: list[str]) -> str:
    """Write psycopg's %(name)s placeholders as PREPARE's $1, $2, ... in first-use order."""
    return _PYFORMAT_RE.sub(lambda m: f"${names.index(m.group(1)) + 1}", statement)


def _pg_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, datetime):
        return "timestamptz"
    if isinstance(value, list):
        return "unknown[]" if not value else f"{_pg_type(value[0])}[]"
    if isinstance(value, dict | Json):
        return "json"
    return "unknown"  # strings and NULLs: inferred from where they are used


def _explain_sqlite(url: str, statements: Sequence[Statement]) -> list[Plan]:
    path = db.parse_database_url(url).database or ""
    plans = []
    with sqlite3.connect(path) as conn:
        for statement in statements:
            params = statement.params
            rows = conn.execute("EXPLAIN QUERY PLAN " + statement.sql,
                                dict(params) if isinstance(params, Mapping) else tuple(params)
                                ).fetchall()
            plans.append(Plan(statement=statement,
                              lines=tuple(str(row[-1]) for row in rows)))
    return plans


# ---------------------------------------------------------------------------------------------
# The command


def hot_plans(url: str, *, history: int = 0, stale: bool = False,
              setup: Callable[[], None] | None = None) -> list[Plan]:
    """Migrate a fresh database at url, fill its history, run the hot paths, explain them."""
    app = create_app({
        "DATABASE_URL": url, "APP_ENV": "development", "APP_URL": "https://plans.example.test",
        "QSTASH_CURRENT_SIGNING_KEY": "sig_plans_current", "QSTASH_NEXT_SIGNING_KEY":
        "sig_plans_next", "LOG_LEVEL": "ERROR",
    })
    try:
        engine = get_engine(app)
        if setup is not None:
            setup()
        db.upgrade(engine)
        if url.startswith("postgresql") and stale:
            set_statistics(url, fresh=False)
        fill_history(engine, history)
        if url.startswith("postgresql") and not stale:
            set_statistics(url, fresh=True)
        with recording(engine) as recorder:
            exercise(app, recorder)
        return explain_all(url, recorder.unique())
    finally:
        extensions.close(app)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL database to reset (default: a scratch SQLite file)")
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--stale", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="plans-") as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'plans.sqlite3'}"
        setup = (lambda: reset_postgres(url)) if url.startswith("postgres") else None
        plans = hot_plans(url, history=args.history, stale=args.stale, setup=setup)
    if args.json:
        print(json.dumps([plan.to_dict() for plan in plans], indent=1, default=str))
        return 0
    for plan in plans:
        print(f"## {plan.statement.path}")
        print(re.sub(r"\s+", " ", plan.statement.sql)[:400])
        for line in plan.lines:
            print("    " + line)
        flagged = plan.full_scans()
        if flagged:
            print(f"    !! reads {', '.join(flagged)} whole")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
