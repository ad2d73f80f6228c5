from __future__ import annotations

import re
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    String,
    Update,
    bindparam,
    literal_column,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute

_CONSTANT_RE = re.compile(r"[A-Z_]+")
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
AnyRow: TypeAlias = Row[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


def is_(column: InstrumentedAttribute[str], status: str) -> ColumnElement[bool]:
    """Compare a status column with a constant written into the SQL, not bound.

    The partial indexes are declared `WHERE status = 'PENDING'`; SQLite, and PostgreSQL once it
    switches a prepared statement to a generic plan, only use them when the query carries the
    same literal.
    """
    if not _CONSTANT_RE.fullmatch(status):
        raise ValueError(f"not a status constant: {status!r}")
    return column == literal_column(f"'{status}'", String)


def after_key(query: SelectT, after: tuple[Any, ...] | None, *key: Any) -> SelectT:
    """Continue a scan in `key` order past the last key it saw (`after`), if any."""
    return query if after is None else query.where(tuple_(*key) > tuple_(*after))


def claim_by_ids(model: Any, *, waiting: str, claimed: str) -> Update:
    """Start the UPDATE that moves rows `ids` still `waiting` to `claimed` by run `run` at `now`."""
    return (
        update(model)
        .where(model.id.in_(bindparam("ids", expanding=True)), is_(model.status, waiting))
        .values(status=claimed, claimed_by=bindparam("run"), claimed_at=bindparam("now"),
                updated_at=bindparam("now"))
    )


def insert_ignoring_conflicts(connection: Connection, table: Any, values: dict[str, Any]) -> bool:
    """Insert one row unless it collides with a unique constraint; tell whether it was added."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    # RETURNING, because rowcount is not reliable for an insert that may return rows.
    statement = (dialect.insert(table).values(**values).on_conflict_do_nothing()
                 .returning(table.c.id))
    return connection.execute(statement).first() is not None


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"
