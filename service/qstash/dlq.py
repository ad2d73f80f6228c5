from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from .api import QStashApi

# QStash lists at most this many dead letters per page.
PAGE_SIZE = 100
# Pages read before giving up: a destination with thousands of dead letters has bigger problems.
MAX_PAGES = 20
MAX_SHOWN_BODY = 2000


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A message QStash gave up on, with the last answer its destination gave."""

    dlq_id: str
    message_id: str
    url: str
    target: str | None  # the job path the message was for (X-Qstash-Target-Url)
    schedule_id: str | None
    created_at: datetime
    max_retries: int
    response_status: int
    response_body: str | None


def dead_letter_from_sdk(message: Any) -> DeadLetter:
    """Normalise a qstash SDK `DlqMessage` into a DeadLetter."""
    headers = {name.lower(): values for name, values in (message.headers or {}).items()}
    target = headers.get("x-qstash-target-url") or headers.get(
        "upstash-forward-x-qstash-target-url")
    body = message.response_body
    if body is None and message.response_body_base64:
        try:
            body = base64.b64decode(message.response_body_base64).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            body = None
    return DeadLetter(
        dlq_id=message.dlq_id,
        message_id=message.message_id,
        url=message.url,
        target=(target[0] if isinstance(target, list) else target) if target else None,
        schedule_id=message.schedule_id,
        created_at=datetime.fromtimestamp((message.created_at or 0) / 1000, UTC),
        max_retries=message.max_retries,
        response_status=message.response_status,
        response_body=body[:MAX_SHOWN_BODY] if body else None,
    )


def list_dead_letters(api: QStashApi, *, destination: str) -> list[DeadLetter]:
    """Return the dead letters of one destination (this service's receiver), newest first."""
    found: list[DeadLetter] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = api._call("list dead letters", partial(
            api.client.dlq.list, cursor=cursor, count=PAGE_SIZE, filter={"url": destination}))
        # The filter is the server's; checking again keeps another app's letters out for sure.
        found.extend(dead_letter_from_sdk(m) for m in page.messages if m.url == destination)
        cursor = page.cursor
        if not cursor:
            break
    return sorted(found, key=lambda letter: letter.created_at, reverse=True)


def retry_dead_letters(api: QStashApi, dlq_ids: list[str]) -> list[str]:
    """Publish the dead letters again (QStash removes them from the DLQ); return new message ids.

    The SDK has no call for it; this is `POST /v2/dlq/retry` as QStash defines it, with the ids
    as `dlqIds` in the query and, for servers that read them there, in a JSON body.
    """
    if not dlq_ids:
        return []
    response = api._call("retry dead letters", lambda: api.client.http.request(
        path="/v2/dlq/retry", method="POST", params={"dlqIds": dlq_ids},  # type: ignore[dict-item]
        headers={"Content-Type": "application/json"},
        body=json.dumps({"dlqIds": dlq_ids}),
    ))
    answers = response.get("responses", []) if isinstance(response, dict) else []
    return [str(answer["messageId"]) for answer in answers if isinstance(answer, dict)
            and answer.get("messageId")]


def delete_dead_letters(api: QStashApi, dlq_ids: list[str]) -> int:
    """Remove dead letters from the DLQ; return how many there were."""
    if not dlq_ids:
        return 0
    return int(api._call("delete dead letters", lambda: api.client.dlq.delete_many(dlq_ids)))
