from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..runs.jobs import Job
from .protocol import RECEIVER_PATH, TARGET_HEADER

CONTENT_TYPE = "application/json"


@dataclass(frozen=True, kw_only=True)
class JobMessage:
    """What QStash is asked to deliver for one job: to the receiver, naming the job twice."""

    job: str
    url: str
    body: str
    headers: Mapping[str, str]  # forwarded to the receiver with each delivery
    retries: int
    timeout: int  # seconds
    deduplication_id: str | None = None
    delay: int | None = None  # seconds


class Publisher(Protocol):
    def publish(self, message: JobMessage) -> str: ...


def job_message(
    job: Job,
    app_url: str,
    *,
    extra: Mapping[str, Any] | None = None,
    deduplication_id: str | None = None,
    delay: int | None = None,
) -> JobMessage:
    """Build the message that delivers `job` through the receiver of the app at `app_url`.

    The body names the job as the target header does (the header is not signed, the body is);
    `extra` adds fields to the body but cannot rename the job.
    """
    return JobMessage(
        job=job.name,
        url=app_url + RECEIVER_PATH,
        body=json.dumps({"job": job.name, **{key: value for key, value in (extra or {}).items()
                                             if key != "job"}}, separators=(",", ":")),
        headers={TARGET_HEADER: job.path},
        retries=job.retries,
        timeout=job.timeout,
        deduplication_id=deduplication_id,
        delay=delay,
    )


def publish_trigger(publisher: Publisher, *, app_url: str, job: Job) -> str:
    """Publish one delivery of a job now, as its schedule would, marked manual; return its id."""
    return publisher.publish(job_message(
        job, app_url, extra={"trigger": "manual", "at": datetime.now(UTC).isoformat()}))
