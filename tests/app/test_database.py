from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import Engine, TextClause, bindparam, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError

from service import db
from service.db import Base, utcnow
from service.extensions import get_engine
from tests.helpers import ROOT

RUN = ("INSERT INTO job_runs (id, message_id, job, retried, attempts, trigger, status,"
       " started_at, expires_at) VALUES (:id, :id, :job, 0, 1, 'qstash', :status, :now, :until)")
LEASE = ("INSERT INTO job_leases (job, holder, acquired_at, expires_at)"
         " VALUES (:job, :id, :now, :until)")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def instants(statement: str) -> TextClause:
    return text(statement).bindparams(
        *(bindparam(name, type_=db.UTCDateTime()) for name in ("now", "until")))


def test_migrations_match_the_models_and_go_down_and_up(app: Flask) -> None:
    engine = get_engine(app)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    db.downgrade(engine, "0001")
    assert "payment_transfers" not in inspect(engine).get_table_names()
    db.upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"experts", "payment_transfers", "notifications"} <= tables


def test_0003_ends_runs_that_lost_their_lease_and_makes_the_running_run_the_lease(
    engine: Engine,
) -> None:
    db.upgrade(engine, "0002")
    now = utcnow()
    live, past = now + timedelta(minutes=5), now - timedelta(minutes=1)
    with engine.begin() as conn:
        for run_id, job, status, until in (
            ("holder", "a", "running", live),   # running, holds its lease
            ("dead", "a", "running", past),     # its worker died; "holder" took the job over
            ("expired", "b", "running", past),  # holds a lease that has expired
            ("done", "b", "succeeded", past),
        ):
            conn.execute(instants(RUN), {"id": run_id, "job": job, "status": status,
                                         "now": now, "until": until})
        conn.execute(instants(LEASE), {"job": "a", "id": "holder", "now": now, "until": live})
        conn.execute(instants(LEASE), {"job": "b", "id": "expired", "now": now, "until": past})

    db.upgrade(engine)

    with engine.connect() as conn:
        rows = {r.id: (r.status, r.error) for r in conn.execute(
            text("SELECT id, status, error FROM job_runs"))}
    assert rows["holder"] == ("running", None)
    assert rows["done"] == ("succeeded", None)
    for ended in ("dead", "expired"):
        status, error = rows[ended]
        assert status == "failed"
        assert error is not None and error.startswith("expired: ")
    # The index now guards the job: a second running run of job a is refused.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(instants(RUN), {"id": "second", "job": "a", "status": "running",
                                     "now": now, "until": live})

    db.downgrade(engine, "0002")
    with engine.connect() as conn:
        leases = conn.execute(text("SELECT job, holder FROM job_leases")).all()
    assert [tuple(lease) for lease in leases] == [("a", "holder")]


def test_0004_records_token_ids_and_downgrades_without_them(engine: Engine) -> None:
    db.upgrade(engine, "0003")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(instants(RUN), {"id": "before", "job": "a", "status": "succeeded",
                                     "now": now, "until": now})
    db.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("UPDATE job_runs SET token_id = 'jwt_1'"))
        conn.execute(text("INSERT INTO delivery_tokens (token_id, run_id, used_at)"
                          " VALUES ('jwt_2', 'before', :now)")
                     .bindparams(bindparam("now", type_=db.UTCDateTime())), {"now": now})
    # A token starts one attempt: the same token id cannot be recorded for a second run.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(instants(RUN), {"id": "second", "job": "b", "status": "succeeded",
                                     "now": now, "until": now})
        conn.execute(text("UPDATE job_runs SET token_id = 'jwt_1' WHERE id = 'second'"))

    db.downgrade(engine, "0003")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM job_runs")).scalars().all() == ["before"]
        assert "token_id" not in {c["name"] for c in inspect(conn).get_columns("job_runs")}
        assert not inspect(conn).has_table("delivery_tokens")
    db.upgrade(engine)


def test_0006_keeps_the_row_key_of_every_existing_transfer(engine: Engine) -> None:
    db.upgrade(engine, "0004")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO experts (id, email, first_name, payouts_enabled,"
                          " created_at, updated_at) VALUES ('exp_1', 'a@x', 'Ana', true, :now,"
                          " :now)").bindparams(bindparam("now", type_=db.UTCDateTime())),
                     {"now": now})
        for payment, claimed in (("pi_sent", now), ("pi_waiting", None)):
            conn.execute(text(
                "INSERT INTO payment_transfers (expert_id, payment_id, amount, platform_fee,"
                " currency, session_start_at, session_end_at, paid_at, scheduled_transfer_at,"
                " status, requires_approval, attempts, claimed_at, created_at, updated_at)"
                " VALUES ('exp_1', :payment, 8500, 1500, 'eur', :now, :now, :now, :now,"
                " 'PENDING', false, 0, :claimed, :now, :now)"
            ).bindparams(bindparam("now", type_=db.UTCDateTime()),
                         bindparam("claimed", type_=db.UTCDateTime())),
                {"payment": payment, "now": now, "claimed": claimed})

    db.upgrade(engine, "0006")

    # No stored key: both keep `<env>:transfer:<id>`, under which a transfer may exist.
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT idempotency_key FROM payment_transfers")).all()
    assert [tuple(key) for key in keys] == [(None,), (None,)]
    db.downgrade(engine, "0004")
    with engine.connect() as conn:
        assert "idempotency_key" not in {
            c["name"] for c in inspect(conn).get_columns("payment_transfers")}
        assert conn.execute(text("SELECT COUNT(*) FROM payment_transfers")).scalar_one() == 2


def test_0005_adds_the_history_indexes_and_downgrades_without_them(engine: Engine) -> None:
    added = {"job_runs": {"ix_job_runs_job_status_started", "ix_job_runs_status_started",
                          "ix_job_runs_ended_started"},
             "delivery_tokens": {"ix_delivery_tokens_used_at"}}

    def indexes() -> dict[str, set[str]]:
        inspector = inspect(engine)
        return {table: {str(i["name"]) for i in inspector.get_indexes(table)} for table in added}

    db.upgrade(engine, "0004")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(instants(RUN), {"id": "kept", "job": "a", "status": "succeeded",
                                     "now": now, "until": now})
    assert all(not (found & added[table]) for table, found in indexes().items())
    db.upgrade(engine, "0005")
    assert all(found >= added[table] for table, found in indexes().items())
    db.downgrade(engine, "0004")
    assert all(not (found & added[table]) for table, found in indexes().items())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM job_runs")).scalars().all() == ["kept"]
    db.upgrade(engine)


def test_run_statement_raises_driver_errors_as_sqlalchemy_does(engine: Engine) -> None:
    db.upgrade(engine)

    def insert(run_id: str) -> str:  # no parameters, so the same SQL serves both drivers
        return ("INSERT INTO job_runs (id, job, retried, attempts, trigger, status, started_at,"
                f" expires_at) VALUES ('{run_id}', 'a', 0, 1, 'cli', 'running',"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")

    with db.autocommit(engine.connect()) as conn:
        rows, count = db.run_statement(conn, insert("r1"), {})
        assert (list(rows), count) == ([], 1)
        with pytest.raises(IntegrityError) as caught:
            db.run_statement(conn, insert("r2"), {})  # job a already has a running run
        assert not caught.value.connection_invalidated
        # The connection still works after the error.
        assert db.run_statement(conn, "SELECT id FROM job_runs", {})[0] == [("r1",)]
    # Each statement committed on its own: another connection sees the first run.
    with engine.connect() as other:
        assert other.execute(text("SELECT id FROM job_runs")).scalars().all() == ["r1"]


def test_sqlite_cuts_its_write_ahead_log_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 1024 * 1024
    monkeypatch.setattr(db, "SQLITE_WAL_SIZE_LIMIT", limit)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'burst.sqlite3'}")
    wal = tmp_path / "burst.sqlite3-wal"
    try:
        with engine.begin() as conn:  # one transaction of about 6 MB: the log grows past it
            conn.execute(text("CREATE TABLE burst (data BLOB)"))
            for _ in range(1500):
                conn.execute(text("INSERT INTO burst VALUES (randomblob(4000))"))
        assert wal.stat().st_size > 4 * limit
        with db.autocommit(engine.connect()) as conn:  # not in a transaction
            busy, _, _ = conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)")).one()
            assert busy == 0
        for statement in ("DELETE FROM burst", "INSERT INTO burst VALUES (1)"):
            with engine.begin() as conn:  # the log starts over, and is cut back
                conn.execute(text(statement))
        assert 0 < wal.stat().st_size <= limit
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM burst")).scalar_one() == 1
    finally:
        engine.dispose()


def test_containers_starting_together_migrate_one_after_another(database_url: str) -> None:
    # Each container runs `flask db upgrade` at start-up; none may fail on the others' tables.
    env = {**os.environ, "DATABASE_URL": database_url, "FLASK_APP": "wsgi",
           "FLASK_SKIP_DOTENV": "1"}
    flask = [sys.executable, "-m", "flask", "db", "upgrade"]
    started = [subprocess.Popen(flask, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in started]

    assert [process.returncode for process in started] == [0, 0, 0], outputs
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [version for (version,) in versions] == [db.head_revision()]
        assert "job_runs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_connections_plan_each_execution_for_its_values(engine: Engine) -> None:
    # A generic plan cached while a table was small would outlive its growth (until ANALYZE).
    with engine.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
        conn.rollback()
    with engine.connect() as conn:  # the setting survives a rolled-back transaction
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"


def _cut_connection(engine: Engine) -> int:
    """Terminate the server side of the pool's one connection, as a database restart would."""
    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        conn.rollback()
    other = db.make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with other.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            conn.commit()
    finally:
        other.dispose()
    return pid


@pytest.mark.postgres
def test_a_connection_idle_past_the_threshold_is_checked_and_replaced(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    cut = _cut_connection(engine)
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)  # every pooled connection counts as idle
    with engine.connect() as conn:  # the ping finds it gone: the pool hands out a new one
        assert int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()) != cut


@pytest.mark.postgres
def test_a_connection_used_moments_ago_goes_out_unchecked_and_a_lost_one_is_replaced(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 3600.0)  # nothing counts as idle: no ping
    cut = _cut_connection(engine)
    with engine.connect() as conn, pytest.raises(OperationalError) as caught:
        db.run_statement(conn, "SELECT 1", {})  # the hot path's first statement finds it gone
    assert caught.value.connection_invalidated
    with engine.connect() as conn:  # and the next checkout has a working connection
        assert int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()) != cut
