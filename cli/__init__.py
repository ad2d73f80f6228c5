from __future__ import annotations

from flask import Flask

from . import console, db, jobs, payouts, qstash


def init_app(app: Flask) -> None:
    """Attach every command group to the app's `flask` command."""
    for group in (db.group, jobs.group, qstash.group, payouts.group, console.group):
        app.cli.add_command(group)
