from __future__ import annotations

import json
import re
import time

from flask.testing import FlaskClient

from devtools.qstash_local import LocalQStash
from devtools.qstash_local.delivery import DeliveryResponse
from tests.helpers import RECEIVER_URL

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: FlaskClient, path: str = "/admin/sign-in") -> str:
    """Return the CSRF token a console page's forms carry."""
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def add_dead_letter(local: LocalQStash, *, job: str = "process-tasks",
                    answer: bytes = b'{"error":"job_failed"}', status: int = 500,
                    url: str = RECEIVER_URL) -> str:
    """Put a message for a job into the local QStash's DLQ, as after its last failed attempt."""
    published = local.publish(url, body=json.dumps({"job": job}).encode(), headers={
        "Upstash-Forward-X-Qstash-Target-Url": f"/api/cron/{job}", "Upstash-Retries": "0",
        "Content-Type": "application/json"})
    with local._lock:
        message = local.messages.pop(published.message_id)
        local._move_to_dlq(message, DeliveryResponse(status=status, headers={}, body=answer),
                           time.time())
    return next(i for i, e in local.dlq.items() if e.message.message_id == published.message_id)
