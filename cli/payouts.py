from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from service.extensions import get_sessions, get_settings
from service.payouts import registry
from service.payouts.errors import InvalidInput, PayoutError
from service.payouts.importer import (
    EXTENSIONS,
    Format,
    ImportRejected,
    detect_format,
    import_experts,
    import_transfers,
    read_records,
)
from service.payouts.models import Notification, PaymentTransfer
from service.payouts.rules import TRANSFER_STATUSES

group = AppGroup("payouts", help="Register, inspect and approve expert transfers.")
MAX_ERRORS_SHOWN = 50


@group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="File format (default: from the extension: .csv, .jsonl, .ndjson).")
@click.option("--kind", type=click.Choice(["transfers", "experts"]), default="transfers",
              show_default=True, help="What the file holds.")
def import_file(file: Path, fmt: Format | None, kind: str) -> None:
    """Register the transfers (or experts) in FILE, all or nothing.

    Every row is validated first; if any is invalid, each problem is listed with its line
    number and nothing is imported. Transfers identical to registered ones are skipped.
    """
    fmt = fmt or detect_format(file)
    if fmt is None:
        raise click.ClickException(
            f"cannot tell the format of {file.name}; use --format or one of the extensions "
            + ", ".join(sorted(EXTENSIONS)))
    records = _read(file, fmt)
    try:
        if kind == "experts":
            report = import_experts(get_sessions(), records, from_text=fmt == "csv")
        else:
            settings = get_settings()
            report = import_transfers(get_sessions(), records, settings.payout_delay_days,
                                      env=settings.app_env, from_text=fmt == "csv")
    except ImportRejected as exc:
        for error in exc.errors[:MAX_ERRORS_SHOWN]:
            click.echo(str(error), err=True)
        hidden = len(exc.errors) - MAX_ERRORS_SHOWN
        if hidden > 0:
            click.echo(f"... and {hidden} more", err=True)
        raise click.ClickException(
            f"{len(exc.errors)} problem(s) in {file.name}; nothing was imported") from None
    noun = "expert(s)" if kind == "experts" else "transfer(s)"
    verb = "updated" if kind == "experts" else "already registered"
    click.echo(f"imported {report.created} new {noun}; {report.unchanged} {verb}")


def _read(file: Path, fmt: Format) -> Iterator[tuple[int, Any]]:
    # Only the reading is guarded: an error raised while the records are registered does not
    # pass through this generator. The importers read every row before writing any.
    line = 0
    try:
        for line, record in read_records(file, fmt):
            yield line, record
    # The reader cannot go on past such a record.
    except UnicodeDecodeError:
        raise click.ClickException(f"{file.name} is not UTF-8 text") from None
    except csv.Error as exc:  # a field over the csv module's size limit
        where = f"the record after line {line}" if line else "the first record"
        raise click.ClickException(
            f"{file.name}: cannot read {where} ({exc}); nothing was imported") from None


@group.command("approve")
@click.argument("transfer_id", type=int)
@click.option("--by", "approved_by", required=True, help="Who approves (recorded).")
def approve(transfer_id: int, approved_by: str) -> None:
    """Approve transfer TRANSFER_ID; it is paid on the next run, whatever its date."""
    try:
        row = registry.approve_transfer(get_sessions(), transfer_id, approved_by)
    except PayoutError as exc:
        fields = exc.fields if isinstance(exc, InvalidInput) else {}
        details = "".join(f"; {name}: {problem}" for name, problem in fields.items())
        raise click.ClickException(f"{exc.code}: {exc.message}{details}") from None
    click.echo(f"transfer {row['id']} approved by {row['approved_by']} at {row['approved_at']}")


@group.command("summary")
def summary() -> None:
    """Count transfers by status and notifications by status."""
    with get_sessions()() as session:
        transfers = Counter({status: count for status, count in session.execute(
            select(PaymentTransfer.status, func.count()).group_by(PaymentTransfer.status))})
        notices = Counter({status: count for status, count in session.execute(
            select(Notification.status, func.count()).group_by(Notification.status))})
    click.echo("transfers:     " + "  ".join(f"{s}={transfers[s]}" for s in TRANSFER_STATUSES))
    click.echo("notifications: " + "  ".join(
        f"{s}={notices[s]}" for s in ("PENDING", "SENDING", "SENT", "FAILED")))
