from __future__ import annotations

from flask import Blueprint, Response, request

from service.qstash.delivery import dispatch, resolve_target, verify_qstash_request
from service.qstash.protocol import RECEIVER_PATH, TARGET_HEADER

bp = Blueprint("qstash", __name__)


@bp.post(RECEIVER_PATH)
def receive() -> Response:
    """Verify a QStash delivery, then run the job its target header names."""
    claims = verify_qstash_request(RECEIVER_PATH)
    job = resolve_target(request.headers.get(TARGET_HEADER))
    return dispatch(job, "qstash", claims.get("jti"))
