from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click
from flask.cli import AppGroup

from service.extensions import get_config_report, get_qstash, get_settings
from service.qstash.api import QStashApi, QStashApiError
from service.qstash.dlq import delete_dead_letters, list_dead_letters, retry_dead_letters
from service.qstash.protocol import RECEIVER_PATH

T = TypeVar("T")

group = AppGroup("dlq", help="List, retry and delete this service's dead letters in QStash.")


def _require_config() -> None:
    blocking = get_config_report().errors_for("APP_URL", "QSTASH_TOKEN", "QSTASH_URL")
    if blocking:
        raise click.ClickException("QStash is not configured: "
                                   + "; ".join(str(p) for p in blocking))


def destination() -> str:
    """Return the URL QStash delivers this service's messages to."""
    return f"{get_settings().app_url}{RECEIVER_PATH}"


def _ids(dlq_ids: tuple[str, ...], every: bool) -> list[str]:
    if every == bool(dlq_ids):
        raise click.UsageError("name DLQ ids, or pass --all (not both)")
    if every:
        return [letter.dlq_id for letter in list_dead_letters(get_qstash(),
                                                              destination=destination())]
    return list(dlq_ids)


def _apply(action: Callable[[QStashApi, list[str]], T], dlq_ids: tuple[str, ...],
           every: bool) -> tuple[list[str], T]:
    """Apply action to the named (or all) dead letters; return the ids and what it returned."""
    _require_config()
    try:
        ids = _ids(dlq_ids, every)
        return ids, action(get_qstash(), ids)
    except QStashApiError as exc:
        raise click.ClickException(str(exc)) from exc


@group.command("list")
def list_letters() -> None:
    """List the dead letters of this service, newest first, with the answer it gave."""
    _require_config()
    try:
        letters = list_dead_letters(get_qstash(), destination=destination())
    except QStashApiError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'DLQ ID':<28} {'MESSAGE ID':<40} {'TARGET':<40} {'FAILED AT':<26} ANSWER")
    for letter in letters:
        answer = f"{letter.response_status} {(letter.response_body or '')[:60]}".strip()
        click.echo(f"{letter.dlq_id:<28} {letter.message_id:<40} {letter.target or '-':<40} "
                   f"{letter.created_at.isoformat():<26} {answer}")
    click.echo(f"{len(letters)} dead letter(s)")


@group.command("retry")
@click.argument("dlq_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Retry every dead letter of this service.")
def retry(dlq_ids: tuple[str, ...], every: bool) -> None:
    """Publish dead letters again through QStash; print the new message ids."""
    ids, message_ids = _apply(retry_dead_letters, dlq_ids, every)
    for message_id in message_ids:
        click.echo(message_id)
    click.echo(f"retried {len(message_ids)} of {len(ids)} dead letter(s)", err=True)


@group.command("delete")
@click.argument("dlq_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Delete every dead letter of this service.")
def delete(dlq_ids: tuple[str, ...], every: bool) -> None:
    """Remove dead letters from QStash's DLQ without delivering them."""
    ids, deleted = _apply(delete_dead_letters, dlq_ids, every)
    click.echo(f"deleted {deleted} of {len(ids)} dead letter(s)")
