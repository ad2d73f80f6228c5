"""Fill the run record with historic rows, fast; make the planner's statistics fresh or stale."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text

from service import db

HISTORY_TABLES = ("job_runs", "delivery_tokens", "payment_transfers", "notifications")
DELIVERED_JOB = "history-probe"


def fill_history(engine: Engine, rows: int, *, job: str = DELIVERED_JOB) -> None:
    """Add `rows` finished runs of the job, `rows` spent tokens, transfers and sent notices."""
    if rows <= 0:
        return
    if engine.dialect.name == "postgresql":
        _fill_postgres(engine, rows, job)
    else:
        _fill_sqlite(engine, rows, job)


# Runs of a busy job: mostly succeeded, a third skipped, a few failed, over the last 30 days.
_PG_FILL = (
    """INSERT INTO job_runs (id, message_id, job, retried, attempts, trigger, status,
           started_at, expires_at, finished_at, duration_ms, token_id)
       SELECT md5('r' || :tag || i), 'h' || :tag || '-' || i, :job, 0, 1, 'qstash',
           CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 3 = 0 THEN 'skipped' ELSE 'succeeded' END,
           now() - (i * interval '2 second'), now() - (i * interval '2 second'),
           now() - (i * interval '2 second'), 1, 'jh' || :tag || '-' || i
       FROM generate_series(1, :rows) AS i""",
    """INSERT INTO delivery_tokens (token_id, run_id, used_at)
       SELECT 'th' || :tag || '-' || i, md5('r' || :tag || i), now() - (i * interval '2 second')
       FROM generate_series(1, :rows) AS i""",
    """INSERT INTO experts (id, email, first_name, country, stripe_account_id, payouts_enabled,
           created_at, updated_at)
       VALUES ('hist_' || :tag, 'history@example.test', 'History', 'PT', 'acct_1History', true,
           now(), now())""",
    """INSERT INTO payment_transfers (expert_id, payment_id, amount, platform_fee, currency,
           session_start_at, session_end_at, paid_at, scheduled_transfer_at, status,
           requires_approval, attempts, provider_transfer_id, transferred_at, created_at,
           updated_at)
       SELECT 'hist_' || :tag, 'pi_h' || :tag || '-' || i, 8500, 1500, 'eur',
           now() - (i * interval '1 minute'), now() - (i * interval '1 minute'),
           now() - (i * interval '1 minute'), now() - (i * interval '1 minute'), 'COMPLETED',
           false, 1, 'tr_h' || :tag || '-' || i, now() - (i * interval '1 minute'), now(), now()
       FROM generate_series(1, :rows) AS i""",
    """INSERT INTO notifications (dedup_key, kind, recipient, payload, transfer_id, status,
           attempts, next_attempt_at, sent_at, created_at, updated_at)
       SELECT 'payout_sent:h' || :tag || '-' || i, 'payout_sent', 'history@example.test',
           '{}', NULL, 'SENT', 1, now() - (i * interval '1 minute'),
           now() - (i * interval '1 minute'), now(), now()
       FROM generate_series(1, :rows) AS i""",
)


def _fill_postgres(engine: Engine, rows: int, job: str) -> None:
    params = {"tag": uuid.uuid4().hex[:8], "job": job, "rows": rows}
    with engine.begin() as conn:
        for statement in _PG_FILL:
            conn.execute(text(statement), params)


def _fill_sqlite(engine: Engine, rows: int, job: str) -> None:
    tag = uuid.uuid4().hex[:8]
    # SQLite keeps instants as text without a zone (service.db.UTCDateTime).
    ago = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i * {step}) || ' seconds')"
    seq = ("WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq"
           " WHERE i < :rows) ")
    statements = (
        seq + "INSERT INTO job_runs (id, message_id, job, retried, attempts, trigger, status,"
        " started_at, expires_at, finished_at, duration_ms, token_id)"
        " SELECT lower(hex(randomblob(16))), 'h' || :tag || '-' || i, :job, 0, 1, 'qstash',"
        " CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 3 = 0 THEN 'skipped' ELSE 'succeeded' END,"
        f" {ago.format(step=2)}, {ago.format(step=2)}, {ago.format(step=2)}, 1,"
        " 'jh' || :tag || '-' || i FROM seq",
        seq + "INSERT INTO delivery_tokens (token_id, run_id, used_at)"
        f" SELECT 'th' || :tag || '-' || i, 'x', {ago.format(step=2)} FROM seq",
        "INSERT INTO experts (id, email, first_name, country, stripe_account_id,"
        " payouts_enabled, created_at, updated_at) VALUES ('hist_' || :tag,"
        " 'history@example.test', 'History', 'PT', 'acct_1History', 1, '2026-01-01 00:00:00',"
        " '2026-01-01 00:00:00')",
        seq + "INSERT INTO payment_transfers (expert_id, payment_id, amount, platform_fee,"
        " currency, session_start_at, session_end_at, paid_at, scheduled_transfer_at, status,"
        " requires_approval, attempts, provider_transfer_id, transferred_at, created_at,"
        " updated_at) SELECT 'hist_' || :tag, 'pi_h' || :tag || '-' || i, 8500, 1500, 'eur',"
        f" {ago.format(step=60)}, {ago.format(step=60)}, {ago.format(step=60)},"
        f" {ago.format(step=60)}, 'COMPLETED', 0, 1, 'tr_h' || :tag || '-' || i,"
        f" {ago.format(step=60)}, {ago.format(step=60)}, {ago.format(step=60)} FROM seq",
        seq + "INSERT INTO notifications (dedup_key, kind, recipient, payload, transfer_id,"
        " status, attempts, next_attempt_at, sent_at, created_at, updated_at)"
        " SELECT 'payout_sent:h' || :tag || '-' || i, 'payout_sent', 'history@example.test',"
        f" '{{}}', NULL, 'SENT', 1, {ago.format(step=60)}, {ago.format(step=60)},"
        f" {ago.format(step=60)}, {ago.format(step=60)} FROM seq",
    )
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), {"tag": tag, "job": job, "rows": rows})


def set_statistics(url: str, *, fresh: bool) -> None:
    """PostgreSQL: ANALYZE the history tables; before a fill (stale), turn autovacuum off too."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        for table in HISTORY_TABLES:
            name = sql.Identifier(table)
            if fresh:
                conn.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(name))
            else:
                conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)")
                             .format(name))
            # Stale: statistics of the tables as they were before the history was added.
            conn.execute(sql.SQL("ANALYZE {}").format(name))


def plain_url(url: str) -> str:
    """Return the URL as psycopg takes it, password included."""
    parsed = db.parse_database_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
