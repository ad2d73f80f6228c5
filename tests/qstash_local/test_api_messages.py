from __future__ import annotations

import pytest
import requests
from qstash.errors import QStashError

from devtools.qstash_local import DEV_TOKEN

from .helpers import HOOK, Stack, publish


def test_publish_queues_a_message_with_its_options(qs: Stack) -> None:
    now = qs.clock()
    response = publish(
        qs.client,
        url=HOOK,
        body='{"a":1}',
        content_type="application/json",
        method="PATCH",
        headers={"x-tenant": "eleva"},
        retries=1,
        delay="2m",
        label="manual",
    )

    message = qs.client.message.get(response.message_id)

    assert response.message_id.startswith("msg_")
    assert response.deduplicated is False
    assert message.url == HOOK
    assert message.method == "PATCH"
    assert message.body == '{"a":1}'
    assert message.headers == {"X-Tenant": ["eleva"], "Content-Type": ["application/json"]}
    assert message.max_retries == 1
    assert message.not_before == int((now + 120) * 1000)
    assert message.created_at == int(now * 1000)
    assert message.label == "manual"


def test_not_before_wins_over_delay(qs: Stack) -> None:
    at = int(qs.clock()) + 3600

    response = publish(qs.client, url=HOOK, body="x", delay="10s", not_before=at)

    assert qs.local.messages[response.message_id].next_attempt_at == at


def test_publish_puts_destination_query_back_without_api_parameters(qs: Stack) -> None:
    response = requests.post(
        f"{qs.server.url}/v2/publish/{HOOK}?job=payouts&qstash_token={DEV_TOKEN}"
        "&upstash-retries=9&x=%20y",
        data=b"body",
        timeout=5,
    )

    message = qs.local.messages[response.json()["messageId"]]
    assert response.status_code == 200
    assert message.url == f"{HOOK}?job=payouts&x=%20y"
    assert message.max_retries == 9


def test_publish_deduplicates_by_id_for_ten_minutes(qs: Stack) -> None:
    first = publish(qs.client, url=HOOK, body="a", deduplication_id="run-1")
    qs.clock.advance(599)
    second = publish(qs.client, url=HOOK, body="b", deduplication_id="run-1")
    other = publish(qs.client, url=HOOK, body="a", deduplication_id="run-2")
    qs.clock.advance(2)
    after_window = publish(qs.client, url=HOOK, body="a", deduplication_id="run-1")

    assert second.message_id == first.message_id
    assert second.deduplicated is True
    assert other.message_id != first.message_id
    assert after_window.message_id not in (first.message_id, other.message_id)
    assert after_window.deduplicated is False
    assert len(qs.local.messages) == 3


def test_duplicate_publish_answers_202(qs: Stack) -> None:
    url = f"{qs.server.url}/v2/publish/{HOOK}"
    headers = {"Authorization": f"Bearer {DEV_TOKEN}", "Upstash-Deduplication-Id": "d"}

    first = requests.post(url, headers=headers, timeout=5)
    second = requests.post(url, headers=headers, timeout=5)

    assert first.status_code == 200
    assert first.json() == {"messageId": first.json()["messageId"]}
    assert second.status_code == 202
    assert second.json() == {"messageId": first.json()["messageId"], "deduplicated": True}


def test_content_based_deduplication_accepts_python_true(qs: Stack) -> None:
    # The SDK sends str(True), i.e. "True".
    first = publish(qs.client, url=HOOK, body="same", content_based_deduplication=True)
    again = publish(qs.client, url=HOOK, body="same", content_based_deduplication=True)
    different = publish(qs.client, url=HOOK, body="other", content_based_deduplication=True)
    disabled = publish(qs.client, url=HOOK, body="same", content_based_deduplication=False)

    assert again.deduplicated is True
    assert again.message_id == first.message_id
    assert different.deduplicated is False
    assert disabled.deduplicated is False
    assert len(qs.local.messages) == 3


def test_message_cancel(qs: Stack) -> None:
    kept = publish(qs.client, url=HOOK, body="keep", delay="1h")
    cancelled = publish(qs.client, url=HOOK, body="drop", delay="1h")

    qs.client.message.cancel(cancelled.message_id)

    assert list(qs.local.messages) == [kept.message_id]
    with pytest.raises(QStashError, match="status: 404"):
        qs.client.message.get(cancelled.message_id)
    with pytest.raises(QStashError, match="status: 404"):
        qs.client.message.cancel(cancelled.message_id)


def test_cancel_with_empty_id_cancels_nothing(qs: Stack) -> None:
    publish(qs.client, url=HOOK, body="keep", delay="1h")

    response = requests.delete(
        f"{qs.server.url}/v2/messages/",
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    )

    assert response.status_code == 400
    assert len(qs.local.messages) == 1


def test_bulk_cancel(qs: Stack) -> None:
    ids = [publish(qs.client, url=HOOK, body=str(i)).message_id for i in range(3)]

    some = qs.client.message.cancel_many([ids[0], "msg_unknown"])
    rest = qs.client.message.cancel_all()

    assert (some, rest) == (1, 2)
    assert qs.local.messages == {}
