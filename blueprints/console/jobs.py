from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import abort, current_app, flash, redirect, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from blueprints.console.base import bp, clean, log, remember, render_page
from service.console.timeline import Timeline, build_timeline
from service.console.words import cron_in_words, cron_zone
from service.db import utcnow
from service.errors import ConfigurationError
from service.extensions import get_config_report, get_jobs, get_qstash, get_sessions, get_settings
from service.health import qstash_health
from service.models import RUN_STATUSES, TRIGGERS
from service.qstash.api import QStashApiError
from service.qstash.messages import publish_trigger
from service.qstash.schedules import ScheduleConfigError, apply_plan, compute_plan, firing_after
from service.runs.history import find_run, run_history

RUNS_PER_PAGE = 50
TIMELINE_RUNS = 2000  # a job every two hours fires 360 times in 30 days


def _health() -> dict[str, Any]:
    # Not the JSON endpoint's cache: a person who just triggered a run expects to see it.
    return qstash_health(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/")
def overview() -> BaseResponse:
    """Show the health report, each job's schedule and last runs, and schedule drift."""
    report = _health()
    now = utcnow()
    jobs = [_job_view(name, report, now=now) for name in get_jobs()]
    return render_page("console/overview.html", report=report, jobs=jobs)


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
    return render_page("console/job.html", job=view, runs=runs)


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
    remember(message_id)
    flash(f"Published {name}: message {message_id}.")
    return redirect(url_for("console.message", message_id=message_id), code=303)


@bp.get("/messages/<message_id>")
def message(message_id: str) -> BaseResponse:
    """Go to the run of a message published from the console, or wait for it to arrive."""
    run = find_run(get_sessions(), message_id=message_id)
    if run is not None and run["status"] != "running":
        return redirect(url_for("console.run", run_id=run["id"]), code=303)
    if run is None and message_id not in session.get("messages", []):
        abort(404, f"no run for message {message_id}")
    return render_page("console/message.html", message_id=message_id, run=run)


@bp.get("/schedules")
def schedules() -> BaseResponse:
    """Show what a schedule sync would change, as `flask qstash update --dry-run` prints it."""
    plan, error = None, None
    try:
        plan, _ = compute_plan(get_qstash(), get_settings(), get_jobs())
    except (ScheduleConfigError, QStashApiError, ConfigurationError) as exc:
        error = clean(str(exc))
    return render_page("console/schedules.html", plan=plan, error=error)


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



@bp.get("/runs")
def runs() -> BaseResponse:
    """List runs, newest first, filtered by job, status, trigger and date, a page at a time."""
    args, errors = _run_filters(request.args)
    page = args.pop("page")
    found = run_history(get_sessions(), limit=RUNS_PER_PAGE + 1,
                        offset=(page - 1) * RUNS_PER_PAGE, **args)
    shown = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_page("console/runs.html", runs=found[:RUNS_PER_PAGE], page=page,
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
    return render_page("console/run.html", run=found, job_known=found["job"] in get_jobs())
