from __future__ import annotations

from typing import Any

import requests
from qstash.log import LogState

from devtools.qstash_local import DEV_TOKEN

from .helpers import Receiver, Reply, Stack, publish


def events(stack: Stack, query: str = "") -> dict[str, Any]:
    response = requests.get(
        f"{stack.server.url}/v2/events?{query}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def test_a_message_life_is_logged_newest_first(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(status=500, body=b"boom"))
    published = publish(qs.client, url=receiver.hook, body="x", retries=1, label="billing")
    qs.local.tick()
    qs.clock.set(qs.local.messages[published.message_id].next_attempt_at)
    qs.local.tick()

    listed = events(qs, f"messageId={published.message_id}")["events"]

    assert [e["state"] for e in reversed(listed)] == [
        "CREATED",
        "ACTIVE",
        "ERROR",
        "RETRY",
        "ACTIVE",
        "DELIVERED",
    ]
    error = listed[3]
    assert error["responseStatus"] == 500
    assert error["responseBody"] == "Ym9vbQ=="  # base64 of the response body
    assert listed[0]["url"] == receiver.hook
    assert listed[0]["labels"] == ["billing"]
    assert listed[0]["timeout"] == 900_000
    assert listed[2]["nextDeliveryTime"] >= listed[2]["time"]


def test_python_sdk_lists_logs_with_filters(qs: Stack, receiver: Receiver) -> None:
    kept = publish(qs.client, url=receiver.hook, body="a", delay="1h")
    cancelled = publish(qs.client, url=receiver.hook, body="b", delay="1h")
    qs.client.message.cancel(cancelled.message_id)

    everything = qs.client.log.list()
    by_state = qs.client.log.list(filter={"state": LogState.CANCELED})
    by_ids = qs.client.log.list(filter={"message_ids": [kept.message_id]})

    assert [(log.message_id, log.state) for log in everything.logs] == [
        (cancelled.message_id, LogState.CANCELED),
        (cancelled.message_id, LogState.CREATED),
        (kept.message_id, LogState.CREATED),
    ]
    assert everything.cursor is None
    assert [log.message_id for log in by_state.logs] == [cancelled.message_id]
    assert [log.state for log in by_ids.logs] == [LogState.CREATED]


def test_logs_page_backwards_with_a_cursor(qs: Stack) -> None:
    for i in range(5):
        publish(qs.client, url="http://127.0.0.1:5000/hook", body=str(i), delay="1h")

    first = events(qs, "count=2")
    second = events(qs, f"count=2&cursor={first['cursor']}")
    third = events(qs, f"count=2&cursor={second['cursor']}")
    in_progress = events(qs, "state=IN_PROGRESS")["events"]
    logs = requests.get(
        f"{qs.server.url}/v2/logs", params={"qstash_token": DEV_TOKEN}, timeout=5
    ).json()

    bodies = [e["body"] for page in (first, second, third) for e in page["events"]]
    assert bodies == ["NA==", "Mw==", "Mg==", "MQ==", "MA=="]  # "4" ... "0", base64
    assert "cursor" not in third
    assert in_progress == []
    assert len(logs["logs"]) == 5


def test_schedules_messages_and_dlq_carry_caller_ip_spelled_callerIP(
    qs: Stack, receiver: Receiver
) -> None:
    # A live GET /v2/schedules/{id} (upstash/docs#546) answers "callerIP", which qstash-py
    # reads; the OpenAPI file's "callerIp" is not what the service returns.
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="ip")
    receiver.reply(Reply(status=500))
    published = publish(qs.client, url=receiver.hook, body="x", retries=0)
    message = requests.get(
        f"{qs.server.url}/v2/messages/{published.message_id}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    ).json()
    qs.local.tick()

    schedule = qs.local.get_schedule("ip")
    (entry,) = qs.local.list_dlq()[0]
    for data in (schedule, message, entry):
        assert data["callerIP"] == "127.0.0.1"
        assert "callerIp" not in data
    assert qs.client.schedule.get("ip").caller_ip == "127.0.0.1"
    assert qs.client.dlq.list().messages[0].caller_ip == "127.0.0.1"
