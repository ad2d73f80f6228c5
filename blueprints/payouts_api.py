from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from service.auth import require_admin
from service.errors import ValidationFailed
from service.extensions import get_sessions, get_settings
from service.payouts import ledger

bp = Blueprint("payouts_api", __name__, url_prefix="/api")
bp.before_request(require_admin)


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


@bp.put("/experts/<expert_id>")
def put_expert(expert_id: str) -> tuple[Response, int]:
    """Create or replace an expert (201 when created, 200 when updated)."""
    ledger.check_expert_id(expert_id)
    data = ledger.parse_expert(_json_body())
    expert, created = ledger.upsert_expert(get_sessions(), expert_id, data)
    return _created(expert, created)


@bp.get("/experts/<expert_id>")
def get_expert(expert_id: str) -> Response:
    """Return one expert."""
    return jsonify(ledger.get_expert(get_sessions(), expert_id))


@bp.post("/transfers")
def post_transfer() -> tuple[Response, int]:
    """Register a paid session's transfer: 201 new, 200 identical repeat, 409 conflicting one."""
    data = ledger.parse_transfer(_json_body())
    transfer, created = ledger.register_transfer(get_sessions(), data,
                                                 get_settings().payout_delay_days)
    return _created(transfer, created)


@bp.get("/transfers")
def list_transfers() -> Response:
    """List transfers newest first (filters: status, expert; paging: limit, before)."""
    options = ledger.parse_list_args(request.args)
    transfers = ledger.list_transfers(get_sessions(), **options)
    next_before = transfers[-1]["id"] if len(transfers) == options["limit"] else None
    return jsonify({"transfers": transfers, "count": len(transfers),
                    "next_before": next_before})


@bp.get("/transfers/<int:transfer_id>")
def get_transfer(transfer_id: int) -> Response:
    """Return one transfer."""
    return jsonify(ledger.get_transfer(get_sessions(), transfer_id))


@bp.post("/transfers/<int:transfer_id>/approve")
def approve_transfer(transfer_id: int) -> Response:
    """Approve a transfer that requires approval; body: {"approved_by": "<who>"}."""
    body = _json_body()
    approved_by = ledger.parse_approver(body.get("approved_by") if isinstance(body, dict)
                                        else None)
    return jsonify(ledger.approve_transfer(get_sessions(), transfer_id, approved_by))
