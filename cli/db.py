from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from flask.cli import AppGroup
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service import db
from service.extensions import get_engine

group = AppGroup("db", help="Manage the database schema.")


@contextmanager
def _migration_errors() -> Iterator[None]:
    """Report a migration that cannot run as a one-line error."""
    # Here, not at the top: every flask command loads this module, few of them migrate.
    from alembic.util.exc import CommandError

    try:
        yield
    except CommandError as exc:
        # An unknown or unreachable revision, e.g. "Can't locate revision identified by 'x'".
        raise click.ClickException(f"cannot migrate: {exc}") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"migration failed ({type(exc).__name__}); check DATABASE_URL and that the "
            "database server is reachable"
        ) from exc


def _migrate(step: Callable[[Engine, str], None], revision: str) -> None:
    """Run a migration step to revision and print the revision the database is at."""
    engine = get_engine()
    with _migration_errors():
        step(engine, revision)
    click.echo(f"database at revision {db.current_revision(engine) or 'base'}")


@group.command("upgrade")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply the database migrations (to the latest by default)."""
    _migrate(db.upgrade, revision)


@group.command("downgrade")
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Revert the database migrations down to REVISION ('base' removes every table)."""
    _migrate(db.downgrade, revision)


@group.command("current")
def current() -> None:
    """Print the database's migration revision and the latest one."""
    engine = get_engine()
    click.echo(f"current: {db.current_revision(engine) or 'none'}")
    click.echo(f"head:    {db.head_revision()}")
