from __future__ import annotations

import click
from flask.cli import AppGroup

from service.extensions import get_sessions, get_settings
from service.payouts import demo

group = AppGroup("demo", help="Sample data for local runs.")


@group.command("seed")
@click.option("--if-empty", is_flag=True, help="Do nothing if the database has any expert.")
@click.option("--reset", is_flag=True, help="Replace the demo rows if they exist.")
def seed(if_empty: bool, reset: bool) -> None:
    """Add sample experts and transfers in every state (never in production)."""
    settings = get_settings()
    if settings.app_env == "production":
        raise click.ClickException("refusing to seed demo data when APP_ENV=production")
    sessions = get_sessions()
    if if_empty and demo.has_any_data(sessions):
        click.echo("the database already has experts; nothing seeded")
        return
    if reset:
        demo.remove_demo_data(sessions)
    try:
        report = demo.seed_demo(sessions, settings.payout_delay_days)
    except demo.DemoDataPresent:
        raise click.ClickException("demo data is already present; use --reset to replace it")\
            from None
    states = ", ".join(f"{status} {count}" for status, count in sorted(report.transfers.items()))
    click.echo(f"seeded {report.experts} experts and {sum(report.transfers.values())} "
               f"transfers ({states})")
