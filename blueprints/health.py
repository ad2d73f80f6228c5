from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from service import db
from service.errors import ServiceUnavailable
from service.extensions import get_engine

bp = Blueprint("health", __name__)
log = logging.getLogger("eleva.health")


@bp.get("/healthz")
def liveness() -> Response:
    """Answer while the process can serve requests; checks no dependency."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readiness() -> Response:
    """Answer 200 only when the database is reachable and migrated."""
    engine = get_engine()
    try:
        current = db.current_revision(engine)
    except SQLAlchemyError as exc:
        log.error("database unreachable: %s", type(exc).__name__)
        raise ServiceUnavailable("the database is unreachable; check DATABASE_URL",
                                 code="database_unavailable") from None
    head = db.head_revision()
    if current != head:
        raise ServiceUnavailable(
            f"the database schema is at {current or 'nothing'}, expected {head}; "
            "run `flask db upgrade`",
            code="database_not_migrated",
        )
    return jsonify({"status": "ok", "database": {"revision": current}})
