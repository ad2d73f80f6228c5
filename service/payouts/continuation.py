from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

from service.extensions import get_settings, services
from service.jobs import RECEIVER_PATH, TARGET_HEADER, JobContext
from service.qstash_api import QStashApiError

log = logging.getLogger("eleva.payouts")

CONTINUATION_DELAY_SECONDS = 5
ContinuationStatus = Literal["not_needed", "published", "not_configured", "failed"]


@dataclass(frozen=True, kw_only=True)
class Continuation:
    status: ContinuationStatus
    message_id: str | None = None


def continuation_body(ctx: JobContext) -> str:
    return json.dumps({"job": ctx.job.name, "continuation_of": ctx.run_id},
                      separators=(",", ":"))


def deduplication_id(ctx: JobContext) -> str:
    """One continuation per run, however often publishing is retried."""
    return f"continuation-{ctx.run_id}"


def publish_continuation(ctx: JobContext) -> Continuation:
    """Ask QStash to deliver this job again shortly, so the backlog drains without the schedule.

    Publishing never fails the run: without QStash settings it reports `not_configured`, and
    a QStash error is logged and reported as `failed` (the next scheduled run continues).
    """
    settings = get_settings(ctx.app)
    api = services(ctx.app).qstash
    if api is None or settings.app_url is None:
        log.warning("work remains but no continuation was published: set APP_URL and "
                    "QSTASH_TOKEN to let a run hand over to the next one")
        return Continuation(status="not_configured")
    try:
        message_id = api.publish(
            url=settings.app_url + RECEIVER_PATH,
            body=continuation_body(ctx),
            headers={TARGET_HEADER: ctx.job.path},
            retries=ctx.job.retries,
            timeout=ctx.job.timeout,
            deduplication_id=deduplication_id(ctx),
            # Give this run time to record its outcome and release the job lease first.
            delay=CONTINUATION_DELAY_SECONDS,
        )
    except QStashApiError as exc:
        log.error("publishing the continuation failed (%s); the next scheduled run goes on",
                  exc.code)
        return Continuation(status="failed")
    log.info("continuation published", extra={"event": {"continuation_message_id": message_id}})
    return Continuation(status="published", message_id=message_id)
