from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
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
from service.console import payouts as payout_views
from service.console.timeline import Timeline, build_timeline
from service.console.words import cron_in_words, cron_zone, duration_in_words, when_in_words
from service.db import utcnow
from service.errors import AppError, ConfigurationError
from service.extensions import (
    get_config_report,
    get_jobs,
    get_qstash,
    get_sessions,
    get_settings,
)
from service.health import qstash_health
from service.models import RUN_STATUSES, TRIGGERS
from service.notifications.channels import mask_email
from service.notifications.render import format_money
from service.payouts import registry
from service.payouts.errors import PayoutError
from service.qstash.api import QStashApiError
from service.qstash.dlq import delete_dead_letters, list_dead_letters, retry_dead_letters
from service.qstash.messages import publish_trigger
from service.qstash.protocol import RECEIVER_PATH
from service.qstash.schedules import (
    ScheduleConfigError,
    apply_plan,
    compute_plan,
    firing_after,
)
from service.runs.history import find_run, run_history

log = logging.getLogger("eleva.console")

bp = Blueprint(
    "console", __name__, url_prefix="/admin",
    static_folder=str(Path(service.__file__).parent / "static" / "console"),
    static_url_path="/static",
)
PUBLIC_ENDPOINTS = frozenset({"console.sign_in", "console.sign_in_link", "console.static"})
RUNS_PER_PAGE = 50
TIMELINE_RUNS = 2000  # a job every two hours fires 360 times in 30 days
MESSAGES_REMEMBERED = 20
EMAIL_RE = re.compile(r"[^@\s\"'<>,;:()]+@[^@\s\"'<>,;:()]+\.[A-Za-z]{2,}")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
throttle = access.SignInThrottle()


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
        return _page("console/off.html", status=503)
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
    return _page("console/error.html", status=exc.status, title=_title(exc.status),
                 message=exc.message, fields=exc.extra.get("fields", {}))


@bp.errorhandler(PayoutError)
def _payout_error(exc: PayoutError) -> BaseResponse:
    status = payout_status(exc)
    return _page("console/error.html", status=status, title=_title(status),
                 message=exc.message, fields=exc.extra.get("fields", {}))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> BaseResponse:
    if isinstance(exc.response, BaseResponse):
        return exc.response
    status = exc.code or 500
    return _page("console/error.html", status=status, title=_title(status),
                 message=exc.description or "", fields={})


@bp.errorhandler(QStashApiError)
def _qstash_error(exc: QStashApiError) -> BaseResponse:
    status = 404 if exc.status == 404 else 502
    return _page("console/error.html", status=status, title=_title(status),
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


def _page(template: str, *, status: int = 200, **context: Any) -> Response:
    response = current_app.make_response(render_template(template, **context))
    response.status_code = status
    return response


# Access


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> BaseResponse:
    """Show the sign-in form; sign in with ADMIN_API_TOKEN."""
    if request.method == "GET":
        if access.is_signed_in(session):
            return redirect(url_for("console.overview"), code=303)
        return _page("console/sign_in.html")
    address = request.remote_addr or "unknown"
    locked = throttle.locked_for(address)
    if locked:
        log.warning("console sign-in refused: too many failures from this address",
                    extra={"event": {"client": address, "locked_seconds": int(locked)}})
        response = _page("console/sign_in.html", status=429,
                         error=f"Too many failed sign-ins; try again in {int(locked) + 1} s.")
        response.headers["Retry-After"] = str(int(locked) + 1)
        return response
    if access.token_matches(request.form.get("token", ""), get_settings().admin_api_token):
        throttle.succeeded(address)
        access.start_session(session)
        session.permanent = True
        log.info("console sign-in", extra={"event": {"client": address}})
        return redirect(url_for("console.overview"), code=303)
    wait = throttle.failed(address)
    log.warning("console sign-in failed: wrong token", extra={"event": {
        "client": address, "pause_seconds": wait}})
    access.pause(wait)
    return _page("console/sign_in.html", status=401,
                 error="That token is not the ADMIN_API_TOKEN of this service.")


@bp.get("/sign-in/link")
def sign_in_link() -> BaseResponse:
    """Sign in with a one-time link made by `flask console sign-in-link`."""
    code = request.args.get("code", "")
    address = request.remote_addr or "unknown"
    if throttle.locked_for(address) or not access.redeem_sign_in_code(
            current_app.instance_path, code):
        log.warning("console sign-in link refused: unknown, used or expired",
                    extra={"event": {"client": request.remote_addr}})
        access.pause(throttle.failed(address))
        return _page("console/sign_in.html", status=401,
                     error="That sign-in link is unknown, expired or already used.")
    access.start_session(session)
    session.permanent = True
    log.info("console sign-in with a one-time link",
             extra={"event": {"client": request.remote_addr}})
    return redirect(url_for("console.overview"), code=303)


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    """End the console session."""
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.sign_in"), code=303)


# Overview, jobs and schedules


def _health() -> dict[str, Any]:
    # Not the JSON endpoint's cache: a person who just triggered a run expects to see it.
    return qstash_health(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/")
def overview() -> BaseResponse:
    """Show the health report, each job's schedule and last runs, and schedule drift."""
    report = _health()
    now = utcnow()
    jobs = [_job_view(name, report, now=now) for name in get_jobs()]
    return _page("console/overview.html", report=report, jobs=jobs)


def _job_view(name: str, report: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    job = get_jobs()[name]
    status = report["jobs"].get(name, {})
    cron = status.get("cron", job.cron)
    schedule = (report["schedules"].get("per_job") or {}).get(name, {})
    next_run = schedule.get("next_run")
    if next_run is None and status.get("enabled", True):
        next_run = firing_after(cron, now).isoformat()
    last = status.get("last_run")
    last_run = find_run(get_sessions(), run_id=last["run_id"]) if last else None
    return {
        "name": name,
        "description": job.description,
        "cron": cron,
        "cron_words": cron_in_words(cron),
        "zone": cron_zone(cron)[1],
        "enabled": status.get("enabled", True),
        "paused": schedule.get("paused", False),
        "next_run": next_run,
        "last_run": last_run,
        "last_success": status.get("last_success"),
        "overdue": status.get("overdue", False),
        "timeline": _timeline(name, status, now=now),
    }


def _timeline(name: str, status: Mapping[str, Any], *, now: datetime) -> Timeline:
    runs = run_history(get_sessions(), job=name, limit=TIMELINE_RUNS,
                       since=now - timedelta(days=30))
    overdue_since = None
    if status.get("overdue") and status.get("last_success"):
        overdue_since = (datetime.fromisoformat(status["last_success"])
                         + timedelta(seconds=status["overdue_after_seconds"]))
    elif status.get("overdue"):
        overdue_since = now - timedelta(seconds=status["overdue_after_seconds"])
    return build_timeline(name, runs, now=now, overdue_since=overdue_since)


@bp.get("/jobs/<name>")
def job(name: str) -> BaseResponse:
    """Show one job: its schedule, its last 30 days as a timeline, and its latest runs."""
    if name not in get_jobs():
        abort(404, f"no job named {name!r}")
    report = _health()
    view = _job_view(name, report, now=utcnow())
    runs = run_history(get_sessions(), job=name, limit=20)
    return _page("console/job.html", job=view, runs=runs)


@bp.post("/jobs/<name>/trigger")
def trigger(name: str) -> BaseResponse:
    """Publish one delivery of the job through QStash, as `flask qstash trigger` does."""
    jobs = get_jobs()
    if name not in jobs:
        abort(404, f"no job named {name!r}")
    blocking = get_config_report().errors_for("APP_URL", "QSTASH_TOKEN", "QSTASH_URL")
    app_url = get_settings().app_url
    if blocking or app_url is None:
        abort(503, "QStash is not configured: " + "; ".join(str(p) for p in blocking))
    message_id = publish_trigger(get_qstash(), app_url=app_url, job=jobs[name])
    log.info("console triggered a job", extra={"event": {"job": name,
                                                         "message_id": message_id}})
    _remember(message_id)
    flash(f"Published {name}: message {message_id}.")
    return redirect(url_for("console.message", message_id=message_id), code=303)


def _remember(*message_ids: str) -> None:
    known = [m for m in session.get("messages", []) if m not in message_ids]
    session["messages"] = [*message_ids, *known][:MESSAGES_REMEMBERED]


@bp.get("/messages/<message_id>")
def message(message_id: str) -> BaseResponse:
    """Go to the run of a message published from the console, or wait for it to arrive."""
    run = find_run(get_sessions(), message_id=message_id)
    if run is not None and run["status"] != "running":
        return redirect(url_for("console.run", run_id=run["id"]), code=303)
    if run is None and message_id not in session.get("messages", []):
        abort(404, f"no run for message {message_id}")
    return _page("console/message.html", message_id=message_id, run=run)


@bp.get("/schedules")
def schedules() -> BaseResponse:
    """Show what a schedule sync would change, as `flask qstash update --dry-run` prints it."""
    plan, error = None, None
    try:
        plan, _ = compute_plan(get_qstash(), get_settings(), get_jobs())
    except (ScheduleConfigError, QStashApiError, ConfigurationError) as exc:
        error = clean(str(exc))
    return _page("console/schedules.html", plan=plan, error=error)


@bp.post("/schedules/sync")
def sync_schedules() -> BaseResponse:
    """Make the QStash schedules match the jobs, as `flask qstash update` does."""
    try:
        api = get_qstash()
        plan, _ = compute_plan(api, get_settings(), get_jobs())
        applied = apply_plan(api, plan)
    except (ScheduleConfigError, QStashApiError, ConfigurationError) as exc:
        flash(f"Sync failed: {clean(str(exc))}", "error")
        return redirect(url_for("console.schedules"), code=303)
    log.info("console synced schedules", extra={"event": {"applied": len(applied)}})
    counts = {a: len(plan.of(a)) for a in ("create", "update", "delete", "unchanged")}
    flash("Schedules synced: created {create}, updated {update}, deleted {delete}, "
          "unchanged {unchanged}.".format(**counts))
    return redirect(url_for("console.overview"), code=303)


# Runs


@bp.get("/runs")
def runs() -> BaseResponse:
    """List runs, newest first, filtered by job, status, trigger and date, a page at a time."""
    args, errors = _run_filters(request.args)
    page = args.pop("page")
    found = run_history(get_sessions(), limit=RUNS_PER_PAGE + 1,
                        offset=(page - 1) * RUNS_PER_PAGE, **args)
    shown = {k: v for k, v in request.args.items() if k != "page" and v}
    return _page("console/runs.html", runs=found[:RUNS_PER_PAGE], page=page,
                 more=len(found) > RUNS_PER_PAGE, errors=errors, filters=shown,
                 jobs=sorted(get_jobs()), statuses=RUN_STATUSES, triggers=TRIGGERS)


def _run_filters(query: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the runs page's query string; an invalid filter is reported and left out."""
    errors: dict[str, str] = {}
    chosen: dict[str, Any] = {"page": 1}
    for name, options in (("job", tuple(get_jobs())), ("status", RUN_STATUSES),
                          ("trigger", TRIGGERS)):
        value = query.get(name) or None
        if value is not None and value not in options:
            errors[name] = f"one of {', '.join(options)}"
        elif value is not None:
            chosen[name] = value
    for name, key, shift in (("from", "since", 0), ("to", "until", 1)):
        raw = query.get(name) or None
        if raw is None:
            continue
        try:
            day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            errors[name] = "a date, YYYY-MM-DD"
            continue
        chosen[key] = day + timedelta(days=shift)  # "to" includes its whole day
    raw_page = query.get("page") or "1"
    if raw_page.isdigit() and 1 <= int(raw_page) <= 10_000:
        chosen["page"] = int(raw_page)
    else:
        errors["page"] = "a page number"
    return chosen, errors


@bp.get("/runs/<run_id>")
def run(run_id: str) -> BaseResponse:
    """Show one run: its message, attempts, timings, result and stored error."""
    found = find_run(get_sessions(), run_id=run_id) if len(run_id) <= 64 else None
    if found is None:
        abort(404, f"no run {run_id}")
    return _page("console/run.html", run=found, job_known=found["job"] in get_jobs())


# Payouts


@bp.get("/payouts")
def payouts() -> BaseResponse:
    """Show transfer totals by status and currency, and the transfers that need a person."""
    settings = get_settings()
    attention, counts = payout_views.needing_attention(
        get_sessions(), max_attempts=settings.payout_max_attempts)
    maintenance = run_history(get_sessions(), job="process-tasks", status="succeeded", limit=1)
    refunded = (maintenance[0]["result"] or {}).get("refunded_after_transfer", 0) \
        if maintenance else 0
    return _page("console/payouts.html", totals=payout_views.totals(get_sessions()),
                 attention=attention, counts=counts, refunded=refunded,
                 maintenance=maintenance[0] if maintenance else None)


@bp.get("/payouts/transfers/<int:transfer_id>")
def transfer(transfer_id: int) -> BaseResponse:
    """Show one transfer, its expert (e-mail masked) and its history."""
    row = registry.get_transfer(get_sessions(), transfer_id)
    expert = registry.get_expert(get_sessions(), row["expert_id"])
    expert = {**expert, "email": mask_email(expert.get("email") or "")}
    return _page("console/transfer.html", transfer=row, expert=expert,
                 history=payout_views.history(get_sessions(), row))


@bp.post("/payouts/transfers/<int:transfer_id>/approve")
def approve(transfer_id: int) -> BaseResponse:
    """Approve a transfer awaiting approval, naming who approves."""
    row = registry.approve_transfer(get_sessions(), transfer_id,
                                  request.form.get("approved_by", ""))
    log.info("console approved a transfer", extra={"event": {"transfer_id": transfer_id}})
    flash(f"Transfer {row['id']} approved by {row['approved_by']}; the next transfer run "
          "pays it.")
    return redirect(url_for("console.transfer", transfer_id=transfer_id), code=303)


# Dead letters


def _destination() -> str:
    app_url = get_settings().app_url
    if app_url is None:
        abort(503, "APP_URL is missing: the dead letters of this service are found by it")
    return app_url + RECEIVER_PATH


@bp.get("/dead-letters")
def dead_letters() -> BaseResponse:
    """List this service's messages in QStash's DLQ with the answer the service gave."""
    letters, error = [], None
    try:
        letters = list_dead_letters(get_qstash(), destination=_destination())
    except (QStashApiError, ConfigurationError) as exc:
        error = clean(str(exc))
    jobs = {job.path: name for name, job in get_jobs().items()}
    return _page("console/dead_letters.html", letters=letters, error=error, jobs=jobs)


def _chosen_letters() -> list[str]:
    if request.form.get("all") == "1":
        return [letter.dlq_id for letter in list_dead_letters(get_qstash(),
                                                              destination=_destination())]
    dlq_id = request.form.get("dlq_id", "")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", dlq_id):
        abort(404, "no such dead letter")
    return [dlq_id]


@bp.post("/dead-letters/retry")
def retry_letters() -> BaseResponse:
    """Publish dead letters again through QStash, as `flask qstash dlq retry` does."""
    ids = _chosen_letters()
    message_ids = retry_dead_letters(get_qstash(), ids)
    if len(ids) == 1 and not message_ids and request.form.get("all") != "1":
        abort(404, f"no dead letter {ids[0]}")
    _remember(*message_ids)
    log.info("console retried dead letters", extra={"event": {"count": len(message_ids)}})
    flash(f"Retried {len(message_ids)} dead letter(s).")
    if len(message_ids) == 1:
        return redirect(url_for("console.message", message_id=message_ids[0]), code=303)
    return redirect(url_for("console.dead_letters"), code=303)


@bp.post("/dead-letters/delete")
def delete_letters() -> BaseResponse:
    """Remove dead letters from QStash's DLQ, as `flask qstash dlq delete` does."""
    ids = _chosen_letters()
    deleted = delete_dead_letters(get_qstash(), ids)
    if len(ids) == 1 and not deleted and request.form.get("all") != "1":
        abort(404, f"no dead letter {ids[0]}")
    log.info("console deleted dead letters", extra={"event": {"count": deleted}})
    flash(f"Deleted {deleted} dead letter(s).")
    return redirect(url_for("console.dead_letters"), code=303)
