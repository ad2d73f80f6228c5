from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from service.errors import AppError
from service.extensions import get_engine, get_jobs
from service.jobs import Delivery, run_job

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
    """Run job NAME now, through the same runner and ledger as a QStash delivery."""
    jobs = get_jobs()
    if name not in jobs:
        raise click.ClickException(f"unknown job {name!r}; one of {', '.join(sorted(jobs))}")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        outcome = run_job(app, get_engine(), jobs[name], Delivery(trigger="cli"))
    except AppError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc
    click.echo(json.dumps(outcome.to_dict(), indent=2))
    if outcome.status != "succeeded":
        raise click.ClickException(f"run {outcome.run_id} {outcome.status}: {outcome.reason}")
