from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

import service
from blueprints.payouts_api import payout_status
from service.console import access
from service.console.words import cron_in_words, duration_in_words, when_in_words
from service.errors import AppError
from service.extensions import get_settings
from service.notifications.channels import mask_email
from service.notifications.render import format_money
from service.payouts.errors import PayoutError
from service.qstash.api import QStashApiError

log = logging.getLogger("eleva.console")

bp = Blueprint(
    "console", __name__, url_prefix="/admin",
    static_folder=str(Path(service.__file__).parent / "static" / "console"),
    static_url_path="/static",
)
PUBLIC_ENDPOINTS = frozenset({"console.sign_in", "console.sign_in_link", "console.static"})
MESSAGES_REMEMBERED = 20
EMAIL_RE = re.compile(r"[^@\s\"'<>,;:()]+@[^@\s\"'<>,;:()]+\.[A-Za-z]{2,}")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


@bp.record_once
def _configure_sessions(state: BlueprintSetupState) -> None:
    """Sign console sessions with a key derived from ADMIN_API_TOKEN; keep the cookie strict."""
    app = cast(Flask, state.app)
    settings = get_settings(app)
    if settings.admin_api_token is not None:
        app.config["SECRET_KEY"] = access.session_secret(settings.admin_api_token)
    app.config.update(
        SESSION_COOKIE_NAME=access.COOKIE_NAME,
        SESSION_COOKIE_PATH=bp.url_prefix,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=(settings.app_url or "").startswith("https://"),
        PERMANENT_SESSION_LIFETIME=access.SESSION_LIFETIME,
    )


@bp.before_request
def _guard() -> BaseResponse | None:
    """Refuse everything while the token is unset; send the signed-out to the sign-in page."""
    if get_settings().admin_api_token is None:
        return render_page("console/off.html", status=503)
    if request.method == "POST" and not access.csrf_valid(session,
                                                           request.form.get(access.CSRF_FIELD)):
        log.warning("console form refused: missing or wrong CSRF token",
                    extra={"event": {"path": request.path}})
        abort(400, "the form is out of date or was not sent by the console; reload and retry")
    if request.endpoint in PUBLIC_ENDPOINTS or access.is_signed_in(session):
        return None
    return redirect(url_for("console.sign_in"), code=303)


@bp.after_request
def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(AppError)
def _app_error(exc: AppError) -> BaseResponse:
    return render_page("console/error.html", status=exc.status, title=_title(exc.status),
                 message=exc.message, fields=exc.extra.get("fields", {}))


@bp.errorhandler(PayoutError)
def _payout_error(exc: PayoutError) -> BaseResponse:
    status = payout_status(exc)
    return render_page("console/error.html", status=status, title=_title(status),
                 message=exc.message, fields=exc.extra.get("fields", {}))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> BaseResponse:
    if isinstance(exc.response, BaseResponse):
        return exc.response
    status = exc.code or 500
    return render_page("console/error.html", status=status, title=_title(status),
                 message=exc.description or "", fields={})


@bp.errorhandler(QStashApiError)
def _qstash_error(exc: QStashApiError) -> BaseResponse:
    status = 404 if exc.status == 404 else 502
    return render_page("console/error.html", status=status, title=_title(status),
                 message=clean(str(exc)), fields={})


def _title(status: int) -> str:
    return {400: "Bad request", 404: "Not found", 409: "Conflict", 413: "Too large",
            422: "Invalid input",
            502: "QStash failed", 503: "Unavailable"}.get(status, f"Error {status}")


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {
        "csrf_token": lambda: access.csrf_token(session),
        "csrf_field": access.CSRF_FIELD,
        "when": when_in_words,
        "duration": duration_in_words,
        "cron_words": cron_in_words,
        "money": format_money,
        "clean": clean,
        "signed_in": access.is_signed_in(session),
        "service_name": get_settings().service_name,
        "app_env": get_settings().app_env,
    }


def clean(text: object) -> str:
    """Return text fit for a page: no configured secret, every e-mail address masked."""
    scrubbed = get_settings().scrub(str(text))
    return EMAIL_RE.sub(lambda match: mask_email(match.group(0)), scrubbed)


def render_page(template: str, *, status: int = 200, **context: Any) -> Response:
    response = current_app.make_response(render_template(template, **context))
    response.status_code = status
    return response


def remember(*message_ids: str) -> None:
    """Keep the latest message ids this session published, for their waiting page."""
    known = [m for m in session.get("messages", []) if m not in message_ids]
    session["messages"] = [*message_ids, *known][:MESSAGES_REMEMBERED]
