from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import URL, CursorResult, Dialect, Result, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

from .errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15_000
# SQLite never shrinks its write-ahead log by itself: a burst of writes while readers are active
# (a load spike, a large import) leaves the file at its peak size. Each time the log starts over,
# a longer file is cut back to this.
SQLITE_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes
# The run record's statements use INSERT ... RETURNING (service/runs/runner.py).
SQLITE_MIN_VERSION = (3, 35, 0)
# Execution option: statements on this SQLite connection run without BEGIN (see autocommit).
SQLITE_AUTOCOMMIT = "sqlite_autocommit"
# PostgreSQL: a pooled connection unused for this long is pinged before it is handed out.
PING_AFTER_IDLE = 1.0  # seconds


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Store UTC instants; always hand back aware datetimes, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}

    def json_fields(self, *names: str) -> dict[str, Any]:
        """Return the named attributes as JSON values, times in ISO 8601 (UTC)."""
        return {name: _json_value(getattr(self, name)) for name in names}


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def default_database_url(instance_path: str) -> str:
    return f"sqlite:///{Path(instance_path) / 'eleva-jobs.sqlite3'}"


def normalise_url(url: str) -> str:
    """Use the psycopg 3 driver for plain postgres URLs (as hosting providers hand them out)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# The drivers the service is built and tested with, by the URL's scheme after normalise_url.
SUPPORTED_DRIVERS = {"sqlite": "SQLite", "sqlite+pysqlite": "SQLite",
                     "postgresql+psycopg": "PostgreSQL"}
DATABASE_URL_FORMS = ("sqlite:///path/to/eleva-jobs.sqlite3 or "
                      "postgresql://user:password@host:5432/dbname")


def parse_database_url(url: str) -> URL:
    """Parse DATABASE_URL; refuse, naming the variable, a malformed URL or another database."""
    try:
        parsed = make_url(normalise_url(url))
    except (ArgumentError, ValueError):
        # Not chained, and not quoted: the parser's messages can quote the password.
        raise ConfigurationError(
            "DATABASE_URL is not a valid database URL (check its host and port, and "
            f"percent-encode '@' in the password as %40); use {DATABASE_URL_FORMS}"
        ) from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        # The scheme is letters, digits and '+' only (make_url's grammar), so it can be named.
        backend = parsed.drivername.partition("+")[0]
        if backend in ("sqlite", "postgresql", "postgres"):
            raise ConfigurationError(
                f"DATABASE_URL names the driver {parsed.drivername!r}; the service brings only "
                f"Python's sqlite3 and psycopg 3: write the scheme as in {DATABASE_URL_FORMS}"
            )
        raise ConfigurationError(
            f"DATABASE_URL names a {backend!r} database; the service runs on SQLite or "
            f"PostgreSQL only: use {DATABASE_URL_FORMS}"
        )
    return parsed


def make_engine(url: str, **options: Any) -> Engine:
    """Create the engine: SQLite with WAL, foreign keys and a busy timeout, or PostgreSQL."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if sqlite3.sqlite_version_info < SQLITE_MIN_VERSION:
            raise ConfigurationError(
                f"DATABASE_URL names SQLite, but this Python's SQLite is {sqlite3.sqlite_version};"
                " the service needs 3.35 or later (use the container image, or PostgreSQL)"
            )
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"DATABASE_URL: the SQLite file's folder {folder} cannot be created "
                    f"({exc.strerror or type(exc).__name__}); set DATABASE_URL to a writable path"
                ) from None
        engine = _create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **options
        )

        @event.listens_for(engine, "connect")
        def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so that BEGIN IMMEDIATE below takes effect.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_SIZE_LIMIT}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def sqlite_begin(connection: Connection) -> None:
            if connection.get_execution_options().get(SQLITE_AUTOCOMMIT):
                return
            # Take the write lock up front: read-then-write transactions never hit a
            # lock upgrade deadlock, they wait for busy_timeout instead.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # LIFO: under load the same few connections stay busy and skip the ping below; the rest
    # idle, and are checked when next used.
    engine = _create_engine(parsed, pool_use_lifo=True, **options)

    @event.listens_for(engine, "checkin")
    def stamp_idle(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A connection back from the pool within PING_AFTER_IDLE was working moments ago: it
        # goes out as is (the ping was a third of a delivery's time under load). One idle for
        # longer may have been cut (a database restart, a proxy's idle timeout): check it, and
        # let the pool replace it if it is gone.
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("the pooled connection is gone; reconnecting") from exc

    @event.listens_for(engine, "connect")
    def postgres_plans(dbapi_connection: Any, _record: Any) -> None:
        # psycopg prepares a statement after a few executions, and PostgreSQL may then keep one
        # generic plan for it: one made while a table was small (a Seq Scan of delivery_tokens
        # in the replay check) stays in use as the table grows until the next ANALYZE, and one
        # cannot use a partial index whose predicate is a parameter. Planned for each execution,
        # a statement's plan follows the tables' current size; the parse is still saved.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.commit()

    return engine


def _create_engine(url: URL, **options: Any) -> Engine:
    try:
        return create_engine(url, **options)
    except ValueError:
        # e.g. sqlite:///x?timeout=soon; the driver's own message does not name the variable.
        database = SUPPORTED_DRIVERS[url.drivername]
        raise ConfigurationError(
            f"DATABASE_URL has an option after '?' whose value {database} does not accept; "
            "fix or remove it"
        ) from None


def autocommit(connection: Connection) -> Connection:
    """Let each statement on this connection commit on its own, as a one-statement transaction.

    On PostgreSQL that saves the BEGIN and COMMIT round trips; on SQLite the writer lock is
    held only while the statement runs.
    """
    if connection.dialect.name == "sqlite":
        # The driver already autocommits (isolation_level None); only BEGIN IMMEDIATE is skipped.
        return connection.execution_options(**{SQLITE_AUTOCOMMIT: True})
    return connection.execution_options(isolation_level="AUTOCOMMIT")


def run_statement(
    connection: Connection, statement: str, parameters: Mapping[str, Any]
) -> tuple[Sequence[Any], int]:
    """Run one statement in the driver's own paramstyle; return its rows and rowcount.

    For the hottest statements only: this skips SQLAlchemy's execution layer (about half of
    their CPU cost) but keeps its error handling: driver errors are raised as SQLAlchemy's
    exceptions, and a lost connection is invalidated as SQLAlchemy would.
    """
    pooled = connection.connection
    cursor = pooled.cursor()
    try:
        cursor.execute(statement, parameters)
        # Read every row: on SQLite the statement, and so its transaction, ends only then.
        rows = cursor.fetchall() if cursor.description else []
        return rows, cursor.rowcount
    except connection.dialect.loaded_dbapi.Error as exc:
        lost = connection.dialect.is_disconnect(exc, pooled.dbapi_connection, cursor)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(statement, parameters, exc, connection.dialect.loaded_dbapi.Error,
                                  connection_invalidated=lost, dialect=connection.dialect) from exc
    finally:
        cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


# Alembic is imported by the functions below, not by this module: a process that neither
# migrates nor reports its revision (a delivery, `flask qstash update`) does not load it.


def alembic_config(engine: Engine | None = None) -> Config:
    from alembic.config import Config  # deferred: see above

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to revision."""
    from alembic import command  # deferred: see above

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert the migrations down to revision."""
    from alembic import command  # deferred: see above

    command.downgrade(alembic_config(engine), revision)


@functools.cache
def head_revision() -> str | None:
    """Return the latest migration (read once: migrations do not change while serving)."""
    from alembic.script import ScriptDirectory  # deferred: see above

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext  # deferred: see above

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def rowcount(result: Result[Any]) -> int:
    """Return how many rows an UPDATE or DELETE touched."""
    return cast(CursorResult[Any], result).rowcount
