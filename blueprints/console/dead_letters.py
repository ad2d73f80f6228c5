from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from flask import abort, flash, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from blueprints.console.base import bp, clean, log, remember, render_page
from service.errors import ConfigurationError
from service.extensions import get_jobs, get_qstash, get_settings
from service.qstash.api import QStashApi, QStashApiError
from service.qstash.dlq import delete_dead_letters, list_dead_letters, retry_dead_letters
from service.qstash.protocol import RECEIVER_PATH

T = TypeVar("T")


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
    return render_page("console/dead_letters.html", letters=letters, error=error, jobs=jobs)


def _chosen_letters() -> list[str]:
    if request.form.get("all") == "1":
        return [letter.dlq_id for letter in list_dead_letters(get_qstash(),
                                                              destination=_destination())]
    dlq_id = request.form.get("dlq_id", "")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", dlq_id):
        abort(404, "no such dead letter")
    return [dlq_id]


def _on_chosen_letters(action: Callable[[QStashApi, list[str]], T]) -> T:
    """Apply action to the chosen dead letters; a single one QStash does not know is a 404."""
    ids = _chosen_letters()
    done = action(get_qstash(), ids)
    if len(ids) == 1 and not done and request.form.get("all") != "1":
        abort(404, f"no dead letter {ids[0]}")
    return done


@bp.post("/dead-letters/retry")
def retry_letters() -> BaseResponse:
    """Publish dead letters again through QStash, as `flask qstash dlq retry` does."""
    message_ids = _on_chosen_letters(retry_dead_letters)
    remember(*message_ids)
    log.info("console retried dead letters", extra={"event": {"count": len(message_ids)}})
    flash(f"Retried {len(message_ids)} dead letter(s).")
    if len(message_ids) == 1:
        return redirect(url_for("console.message", message_id=message_ids[0]), code=303)
    return redirect(url_for("console.dead_letters"), code=303)


@bp.post("/dead-letters/delete")
def delete_letters() -> BaseResponse:
    """Remove dead letters from QStash's DLQ, as `flask qstash dlq delete` does."""
    deleted = _on_chosen_letters(delete_dead_letters)
    log.info("console deleted dead letters", extra={"event": {"count": deleted}})
    flash(f"Deleted {deleted} dead letter(s).")
    return redirect(url_for("console.dead_letters"), code=303)
