from __future__ import annotations

from alembic import context

import service.models  # noqa: F401  (both register their tables on Base.metadata)
import service.payouts.models  # noqa: F401
from service.db import Base

# Containers starting together each run `flask db upgrade`. On PostgreSQL they take turns on this
# advisory lock, so the later ones find the schema at head instead of failing on tables the first
# one is creating. (On SQLite the migration's transaction starts with BEGIN IMMEDIATE, which
# serialises them already.)
MIGRATION_LOCK = 0x656C657661  # "eleva"

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    locked = connection.dialect.name == "postgresql"
    if locked:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
        connection.commit()  # the lock belongs to the session: it outlives this transaction
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if locked:
            connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
            connection.commit()
