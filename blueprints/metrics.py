from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app

from service.auth import bearer_token
from service.errors import AppError, Unauthorized
from service.extensions import get_settings
from service.metrics.scrape import CONTENT_TYPE, render

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    """Export the service's metrics in Prometheus text format (Bearer METRICS_TOKEN)."""
    expected = get_settings().metrics_token
    if expected is None:
        # Off is 404, not 503: the service is healthy, it only exports nothing.
        raise AppError("metrics are off; set METRICS_TOKEN to enable GET /metrics",
                       code="metrics_disabled", status=404)
    token = bearer_token()
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("send Authorization: Bearer <METRICS_TOKEN>")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return Response(render(app), content_type=CONTENT_TYPE)
