from __future__ import annotations

import json
from datetime import UTC, datetime

from .jobs import RECEIVER_PATH, TARGET_HEADER, Job
from .qstash_api import QStashApi


def publish_trigger(api: QStashApi, *, app_url: str, job: Job) -> str:
    """Publish one delivery of a job through QStash now, as its schedule would; return its id."""
    return api.publish(
        url=f"{app_url}{RECEIVER_PATH}",
        body=json.dumps({"job": job.name, "trigger": "manual",
                         "at": datetime.now(UTC).isoformat()}, separators=(",", ":")),
        headers={TARGET_HEADER: job.path},
        retries=job.retries,
        timeout=job.timeout,
    )
