from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Response, jsonify, request

from .. import metrics
from ..auth import bearer_token, is_admin, require_admin_enabled
from ..errors import NonRetryable, ServiceUnavailable, Unauthorized
from ..extensions import get_config_report, get_engine, get_jobs, get_settings
from ..parsing import whole_number
from ..runs.jobs import Delivery, Job, RunOutcome, Trigger, registry
from ..runs.runner import run_job
from ..settings import SIGNING_KEY_VARS
from .protocol import JOB_PATH_PREFIX, TARGET_HEADER
from .signature import SignatureRejected, verify_signature

log = logging.getLogger("eleva.delivery")

MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_RETRIED = 999_999


def public_url(path: str) -> str:
    """Return the URL QStash calls for a path: APP_URL + path, exactly as signed in `sub`."""
    return f"{get_settings().app_url}{path}"


@metrics.timed_verification
def verify_qstash_request(path: str) -> dict[str, Any]:
    """Check the Upstash-Signature of the current request for the given path; return claims."""
    report = get_config_report()
    blocking = report.errors_for("APP_URL", *SIGNING_KEY_VARS)
    if blocking:
        names = sorted({p.variable for p in blocking})
        log.error("refusing QStash delivery: %s", "; ".join(str(p) for p in blocking))
        raise ServiceUnavailable(
            f"QStash verification is not configured: fix {', '.join(names)}",
            code="qstash_not_configured",
            extra={"variables": names},
        )
    settings = get_settings()
    keys = [k for k in (settings.qstash_current_signing_key,
                        settings.qstash_next_signing_key) if k]
    raw = request.get_data(cache=True)
    try:
        return verify_signature(
            raw,
            request.headers.get("Upstash-Signature"),
            keys=keys,
            url=public_url(path),
            leeway=settings.qstash_clock_tolerance,
        )
    except SignatureRejected as exc:
        log.warning(
            "rejected request: %s", exc.message,
            extra={"event": {"check": exc.code, "path": path,
                             "message_id": _header_for_log("Upstash-Message-Id")}},
        )
        raise


def resolve_target(value: str | None) -> Job:
    """Map the X-Qstash-Target-Url header to a registered job, refusing anything else."""
    if value is None or not value.strip():
        raise NonRetryable(f"the {TARGET_HEADER} header is missing", code="missing_target")
    value = value.strip()
    if any(c in value for c in "\\\r\n\t ") or not value.isprintable():
        raise NonRetryable(f"{TARGET_HEADER} contains forbidden characters",
                           code="invalid_target")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        app_url = urlsplit(get_settings().app_url or "")
        if (parts.scheme.lower(), _host_port(parts)) != (app_url.scheme.lower(),
                                                         _host_port(app_url)):
            raise NonRetryable(f"{TARGET_HEADER} points at another host",
                               code="foreign_target")
        path = parts.path
        if app_url.path and path.startswith(app_url.path + "/"):
            path = path[len(app_url.path):]
    else:
        path = parts.path
    if parts.query or parts.fragment or "%" in value:
        raise NonRetryable(f"{TARGET_HEADER} must be a plain path without query or encoding",
                           code="invalid_target")
    if not path.startswith("/") or "//" in path or ".." in unquote(path).split("/"):
        raise NonRetryable(f"{TARGET_HEADER} must be an absolute path without '..'",
                           code="invalid_target")
    jobs = get_jobs()
    name = path[len(JOB_PATH_PREFIX):] if path.startswith(JOB_PATH_PREFIX) else None
    if name is None or name not in jobs:
        raise NonRetryable(f"{TARGET_HEADER} names no job; known jobs: {', '.join(sorted(jobs))}",
                           code="unknown_target")
    return jobs[name]


def _host_port(parts: Any) -> tuple[str, int | None]:
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port or default
    except ValueError:
        port = -1
    return (parts.hostname or "").lower(), port


def delivery_from_request(job: Job, trigger: Trigger, token_id: str | None = None) -> Delivery:
    """Read the delivery headers and the JSON body of the current request.

    `token_id` is the `jti` of the request's verified signature, if it has one.
    """
    message_id = request.headers.get("Upstash-Message-Id")
    if trigger == "qstash" and message_id is None:
        raise NonRetryable("Upstash-Message-Id is missing", code="missing_message_id")
    if message_id is not None and not MESSAGE_ID_RE.fullmatch(message_id):
        raise NonRetryable("Upstash-Message-Id is not a valid id", code="invalid_message_id")
    # Informational only, and not signed: a value that is not a plausible count is ignored.
    retried = whole_number(request.headers.get("Upstash-Retried", "0"), maximum=MAX_RETRIED) or 0
    payload = parse_payload(request.get_data(cache=True))
    named = payload.get("job")
    if named is not None and named != job.name:
        # The target header is not signed but the body is: they must agree.
        raise NonRetryable(f"the signed body names job {named!r} but the target is {job.name!r}",
                           code="target_mismatch")
    schedule_id = request.headers.get("Upstash-Schedule-Id")
    return Delivery(
        trigger=trigger,
        message_id=message_id,
        schedule_id=schedule_id[:128] if schedule_id else None,
        retried=retried,
        payload=payload,
        token_id=token_id,
    )


def parse_payload(raw: bytes) -> Mapping[str, Any]:
    """Decode a delivery body: empty, or a JSON object."""
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # also too deeply nested, or a number too long
        payload = None
    if not isinstance(payload, dict):
        raise NonRetryable("the body must be empty or a JSON object", code="invalid_body")
    return payload


def dispatch(job: Job, trigger: Trigger, token_id: str | None = None) -> Response:
    """Run the job for the current request and answer with its outcome."""
    delivery = delivery_from_request(job, trigger, token_id)
    return response(metrics.delivered(
        run_job(get_engine(), job, delivery, scrub=get_settings().scrub)))


def response(outcome: RunOutcome) -> Response:
    """Answer a request with a run's outcome."""
    return jsonify(outcome.to_dict())


def handle_direct(job: Job) -> Response:
    """Serve POST /api/cron/<job>: an admin bearer token or a QStash signature for this URL."""
    token = bearer_token()
    if token is not None:
        require_admin_enabled()
        if not is_admin(token):
            raise Unauthorized("the bearer token is not ADMIN_API_TOKEN", code="invalid_token")
        return dispatch(job, "admin")
    if "Upstash-Signature" in request.headers:
        claims = verify_qstash_request(job.path)
        return dispatch(job, "qstash", claims.get("jti"))
    raise Unauthorized(
        "send a QStash signature for this URL or Authorization: Bearer <ADMIN_API_TOKEN>"
    )


def _header_for_log(name: str) -> str | None:
    value = request.headers.get(name)
    return value[:128] if value else None


class JobBlueprint(Blueprint):
    """A blueprint that carries its job and serves it at the job's own path."""

    def __init__(self, job: Job, import_name: str) -> None:
        super().__init__("job_" + job.name.replace("-", "_"), import_name)
        self.job = job
        self.add_url_rule(job.path, "run", self._run_direct, methods=["POST"])

    def _run_direct(self) -> Response:
        return handle_direct(self.job)


def job_registry(blueprints: Iterable[Blueprint]) -> dict[str, Job]:
    """Collect the jobs the blueprints carry, refusing duplicate names."""
    return registry(bp.job for bp in blueprints if isinstance(bp, JobBlueprint))
