from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from service.auth import require_admin
from service.errors import ValidationFailed
from service.extensions import get_health_cache, get_jobs, get_sessions
from service.health import qstash_health
from service.models import RUN_STATUSES
from service.parsing import whole_number
from service.runs.history import run_history

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
bp.before_request(require_admin)

MAX_LIMIT = 500


@bp.get("/job-runs")
def job_runs() -> Response:
    """List recent job runs, newest first (filters: job, status, limit)."""
    job = request.args.get("job") or None
    status = request.args.get("status") or None
    raw_limit = request.args.get("limit", "50")
    errors: dict[str, str] = {}
    if job is not None and job not in get_jobs():
        errors["job"] = f"unknown job; one of {', '.join(sorted(get_jobs()))}"
    if status is not None and status not in RUN_STATUSES:
        errors["status"] = f"one of {', '.join(RUN_STATUSES)}"
    limit = whole_number(raw_limit, maximum=MAX_LIMIT) or 0
    if not limit:
        errors["limit"] = f"a whole number from 1 to {MAX_LIMIT}"
    if errors:
        raise ValidationFailed(errors)
    runs = run_history(get_sessions(), job=job, status=status, limit=limit)
    return jsonify({"runs": runs, "count": len(runs)})


@bp.get("/qstash-health")
def qstash_health_report() -> tuple[Response, int]:
    """Report configuration, QStash reachability, schedule drift and job runs (503 unless ok)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    report = get_health_cache().get(lambda: qstash_health(app))
    return jsonify(report), 200 if report["status"] == "ok" else 503
