from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from service import db

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SetupError(Exception):
    """The benchmark cannot start; the message says what to fix."""


def reset_postgres(url: str) -> None:
    """Create the database when missing, then drop and recreate its public schema."""
    parsed = make_url(db.normalise_url(url))
    if parsed.host not in LOOPBACK:
        raise SetupError(f"the benchmark runs on loopback only; {parsed.host!r} is not")
    name = parsed.database
    if not name:
        raise SetupError("the PostgreSQL URL names no database")
    plain = parsed.set(drivername="postgresql")
    admin = plain.set(database="postgres").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
    except psycopg.OperationalError as exc:
        raise SetupError(f"PostgreSQL at {parsed.host}:{parsed.port or 5432} is unreachable: "
                         f"{str(exc).strip().splitlines()[0]}") from None
