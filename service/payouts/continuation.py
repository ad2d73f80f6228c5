from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from service.qstash.api import QStashApiError
from service.qstash.messages import Publisher, job_message
from service.runs.jobs import Job

log = logging.getLogger("eleva.payouts")

CONTINUATION_DELAY_SECONDS = 5
ContinuationStatus = Literal["not_needed", "published", "not_configured", "failed"]


@dataclass(frozen=True, kw_only=True)
class Continuation:
    status: ContinuationStatus
    message_id: str | None = None


def deduplication_id(run_id: str) -> str:
    """One continuation per run, however often publishing is retried."""
    return f"continuation-{run_id}"


def publish_continuation(
    publisher: Publisher | None, *, app_url: str | None, job: Job, run_id: str
) -> Continuation:
    """Ask QStash to deliver this job again shortly, so the backlog drains without the schedule.

    Publishing never fails the run: without QStash settings it reports `not_configured`, and
    a QStash error is logged and reported as `failed` (the next scheduled run continues).
    """
    if publisher is None or app_url is None:
        log.warning("work remains but no continuation was published: set APP_URL and "
                    "QSTASH_TOKEN to let a run hand over to the next one")
        return Continuation(status="not_configured")
    message = job_message(
        job, app_url, extra={"continuation_of": run_id},
        deduplication_id=deduplication_id(run_id),
        # Give this run time to record its outcome and release the job lease first.
        delay=CONTINUATION_DELAY_SECONDS,
    )
    try:
        message_id = publisher.publish(message)
    except QStashApiError as exc:
        log.error("publishing the continuation failed (%s); the next scheduled run goes on",
                  exc.code)
        return Continuation(status="failed")
    log.info("continuation published", extra={"event": {"continuation_message_id": message_id}})
    return Continuation(status="published", message_id=message_id)
