from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from flask import Blueprint, Response, jsonify, request

from service.auth import require_admin
from service.errors import ValidationFailed
from service.extensions import get_sessions, get_settings
from service.parsing import whole_number
from service.payouts import registry
from service.payouts.errors import Conflict, InvalidInput, NotFound, PayoutError
from service.payouts.rules import TRANSFER_STATUSES
from service.payouts.validation import (
    ID_RE,
    MAX_TRANSFER_ID,
    check_expert_id,
    parse_approver,
    parse_expert,
    parse_transfer,
)

MAX_LIST_LIMIT: Final = 500
# The status each kind of refusal is answered with; the body carries the domain's own code.
STATUS: Final[tuple[tuple[type[PayoutError], int], ...]] = (
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
)

bp = Blueprint("payouts_api", __name__, url_prefix="/api")
bp.before_request(require_admin)


@bp.errorhandler(PayoutError)
def payout_error(exc: PayoutError) -> Response:
    """Answer a refusal of the payouts domain as JSON with its status code."""
    response = jsonify({"error": exc.code, "message": exc.message, **exc.extra})
    response.status_code = payout_status(exc)
    return response


def payout_status(exc: PayoutError) -> int:
    """Return the HTTP status a refusal of the payouts domain is answered with."""
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)


def _json_body() -> Any:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        # Deeply nested arrays or objects; `silent` only covers ValueError.
        body = None
    if body is None:
        raise ValidationFailed({"body": "send a JSON object with Content-Type: application/json"})
    return body


def _created(body: dict[str, Any], created: bool) -> tuple[Response, int]:
    return jsonify(body), 201 if created else 200


def _list_options(args: Mapping[str, str]) -> dict[str, Any]:
    """Validate the query string of GET /api/transfers."""
    errors: dict[str, str] = {}
    status = args.get("status") or None
    if status is not None:
        status = status.upper()
        if status not in TRANSFER_STATUSES:
            errors["status"] = f"one of {', '.join(TRANSFER_STATUSES)}"
    expert = args.get("expert") or None
    if expert is not None and not ID_RE.fullmatch(expert):
        errors["expert"] = "an expert id"
    limit = whole_number(args.get("limit", "50"), maximum=MAX_LIST_LIMIT) or 0
    if not limit:
        errors["limit"] = f"a whole number from 1 to {MAX_LIST_LIMIT}"
    raw_before = args.get("before")
    before = whole_number(raw_before, maximum=MAX_TRANSFER_ID) if raw_before else None
    if raw_before and before is None:
        errors["before"] = f"a transfer id, at most {MAX_TRANSFER_ID}"
    if errors:
        raise ValidationFailed(errors)
    return {"status": status, "expert_id": expert, "limit": limit, "before": before}


@bp.put("/experts/<expert_id>")
def put_expert(expert_id: str) -> tuple[Response, int]:
    """Create or replace an expert (201 when created, 200 when updated)."""
    check_expert_id(expert_id)
    data = parse_expert(_json_body())
    expert, created = registry.upsert_expert(get_sessions(), expert_id, data)
    return _created(expert, created)


@bp.get("/experts/<expert_id>")
def get_expert(expert_id: str) -> Response:
    """Return one expert."""
    return jsonify(registry.get_expert(get_sessions(), expert_id))


@bp.post("/transfers")
def post_transfer() -> tuple[Response, int]:
    """Register a paid session's transfer: 201 new, 200 identical repeat, 409 conflicting one."""
    data = parse_transfer(_json_body())
    settings = get_settings()
    transfer, created = registry.register_transfer(get_sessions(), data,
                                                   settings.payout_delay_days,
                                                   env=settings.app_env)
    return _created(transfer, created)


@bp.get("/transfers")
def list_transfers() -> Response:
    """List transfers newest first (filters: status, expert; paging: limit, before)."""
    options = _list_options(request.args)
    transfers = registry.list_transfers(get_sessions(), **options)
    next_before = transfers[-1]["id"] if len(transfers) == options["limit"] else None
    return jsonify({"transfers": transfers, "count": len(transfers),
                    "next_before": next_before})


@bp.get("/transfers/<int:transfer_id>")
def get_transfer(transfer_id: int) -> Response:
    """Return one transfer."""
    return jsonify(registry.get_transfer(get_sessions(), transfer_id))


@bp.post("/transfers/<int:transfer_id>/approve")
def approve_transfer(transfer_id: int) -> Response:
    """Approve a transfer that requires approval; body: {"approved_by": "<who>"}."""
    body = _json_body()
    approved_by = parse_approver(body.get("approved_by") if isinstance(body, dict) else None)
    return jsonify(registry.approve_transfer(get_sessions(), transfer_id, approved_by))
