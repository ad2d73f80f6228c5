from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from service import metrics
from service.extensions import get_config_report, get_jobs, get_qstash, get_settings
from service.health import qstash_health
from service.qstash.api import QStashApiError
from service.qstash.messages import publish_trigger
from service.qstash.schedules import (
    Plan,
    ScheduleConfigError,
    apply_plan,
    compute_plan,
    schedule_prefix,
)

from .dlq import group as dlq_group

group = AppGroup("qstash", help="Sync and inspect the QStash schedules of the jobs.")
group.add_command(dlq_group)
NOT_CONFIGURED = 3


class NotConfigured(click.ClickException):
    exit_code = NOT_CONFIGURED


def require_config(*variables: str) -> None:
    """Stop with one line naming what is missing or invalid among variables."""
    blocking = get_config_report().errors_for(*variables)
    if blocking:
        raise NotConfigured("QStash is not configured: " + "; ".join(str(p) for p in blocking))


@group.command("update")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--check", is_flag=True, help="Print the plan; exit 1 if anything would change.")
def update(dry_run: bool, check: bool) -> None:
    """Make the QStash schedules match the jobs declared in code (owned schedules only)."""
    require_config("APP_URL", "QSTASH_TOKEN", "QSTASH_URL")
    for problem in get_config_report().problems:
        if problem.variable not in ("APP_URL", "QSTASH_TOKEN", "QSTASH_URL"):
            click.echo(f"warning: {problem}", err=True)
    api = get_qstash()
    try:
        plan, _ = compute_plan(api, get_settings(), get_jobs())
    except (ScheduleConfigError, QStashApiError) as exc:
        raise click.ClickException(str(exc)) from exc
    print_plan(plan)
    if check:
        if not plan.empty:
            raise click.ClickException("schedules differ from the code; run `flask qstash update`")
        return
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    try:
        apply_plan(api, plan)
    except QStashApiError as exc:
        raise click.ClickException(f"update stopped part-way: {exc}; run it again") from exc
    metrics.schedules_synced()
    counts = {a: len(plan.of(a)) for a in ("create", "update", "delete", "unchanged")}
    click.echo("created {create}, updated {update}, deleted {delete}, unchanged {unchanged}"
               .format(**counts) + f"; {len(plan.foreign)} foreign schedule(s) left alone")


def print_plan(plan: Plan) -> None:
    click.echo(f"{'ACTION':<10} {'SCHEDULE ID':<48} {'CRON':<20} CHANGES")
    for item in plan.items:
        cron = item.desired.cron if item.desired else "-"
        changes = ", ".join(c.field for c in item.changes) or "-"
        click.echo(f"{item.action:<10} {item.schedule_id:<48} {cron:<20} {changes}")
    if plan.foreign:
        click.echo(f"{len(plan.foreign)} foreign schedule(s) (other apps or environments): "
                   "not touched")


@group.command("list")
def list_schedules() -> None:
    """List every schedule on the QStash account, marking those this service owns."""
    require_config("QSTASH_TOKEN", "QSTASH_URL")
    try:
        remote = get_qstash().list_schedules()
    except QStashApiError as exc:
        raise click.ClickException(str(exc)) from exc
    prefix = schedule_prefix(get_settings())
    click.echo(f"{'OWNER':<8} {'SCHEDULE ID':<48} {'CRON':<20} {'PAUSED':<7} "
               f"{'NEXT RUN':<26} {'LAST RUN':<26} LAST STATES")
    for s in sorted(remote, key=lambda s: s.schedule_id):
        info = s.summary()
        owner = "owned" if s.schedule_id.startswith(prefix) else "foreign"
        states = ",".join(sorted(set(s.last_states.values()))) or "-"
        click.echo(f"{owner:<8} {s.schedule_id:<48} {s.cron:<20} {str(s.paused).lower():<7} "
                   f"{info['next_run'] or '-':<26} {info['last_run'] or '-':<26} {states}")


@group.command("trigger")
@click.argument("name")
def trigger(name: str) -> None:
    """Publish one delivery of job NAME through QStash now; print its message id."""
    require_config("APP_URL", "QSTASH_TOKEN", "QSTASH_URL")
    jobs = get_jobs()
    if name not in jobs:
        raise click.ClickException(f"unknown job {name!r}; one of {', '.join(sorted(jobs))}")
    app_url = get_settings().app_url
    assert app_url is not None  # require_config refused a missing APP_URL
    try:
        message_id = publish_trigger(get_qstash(), app_url=app_url, job=jobs[name])
    except QStashApiError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(message_id)


@group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def check(as_json: bool) -> None:
    """Print the health report (config, QStash, schedules, jobs); exit 1 unless all is ok."""
    report = qstash_health(current_app._get_current_object())  # type: ignore[attr-defined]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"status: {report['status']}")
        for problem in report["config"]["problems"]:
            click.echo(f"config {problem['severity']}: {problem['variable']}: "
                       f"{problem['problem']} ({problem['fix']})")
        q = report["qstash"]
        click.echo(f"qstash: reachable ({q['latency_ms']} ms)" if q["reachable"]
                   else f"qstash: unreachable: {q['error']}")
        s = report["schedules"]
        if s.get("error"):
            click.echo(f"schedules: {s['error']}")
        elif s["in_sync"] is not None:
            click.echo("schedules: in sync" if s["in_sync"] else
                       f"schedules: missing {s['missing']}, changed {s['changed']}, "
                       f"stale {s['stale']}")
            if s["paused"]:
                click.echo(f"schedules paused: {s['paused']}")
        for name, job in report["jobs"].items():
            last = job["last_run"]
            ran = f"{last['status']} at {last['started_at']}" if last else "never"
            click.echo(f"job {name}: last run {ran}; last success {job['last_success'] or 'never'}"
                       + ("; OVERDUE" if job["overdue"] else ""))
        for reason in report["reasons"]:
            click.echo(f"- {reason}")
    if report["status"] != "ok":
        raise SystemExit(1)
