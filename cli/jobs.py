from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from service.errors import AppError
from service.extensions import get_engine, get_jobs, get_settings
from service.runs.jobs import Delivery
from service.runs.runner import run_job

group = AppGroup("jobs", help="Inspect and run the scheduled jobs.")


@group.command("list")
def list_jobs() -> None:
    """List the jobs this service declares."""
    for job in get_jobs().values():
        click.echo(f"{job.name:<28} {job.cron:<16} {job.path:<36} "
                   f"retries={job.retries} timeout={job.timeout}s overlap={job.overlap}")
        click.echo(f"{'':<28} {job.description}")


@group.command("run")
@click.argument("name")
def run(name: str) -> None:
    """Run job NAME now, through the same runner and run record as a QStash delivery."""
    jobs = get_jobs()
    if name not in jobs:
        raise click.ClickException(f"unknown job {name!r}; one of {', '.join(sorted(jobs))}")
    try:
        outcome = run_job(get_engine(), jobs[name], Delivery(trigger="cli"),
                          scrub=get_settings().scrub)
    except AppError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc
    click.echo(json.dumps(outcome.to_dict(), indent=2))
    if outcome.status != "succeeded":
        raise click.ClickException(f"run {outcome.run_id} {outcome.status}: {outcome.reason}")
