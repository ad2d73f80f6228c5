from __future__ import annotations

import pytest
import requests
from qstash import QStash
from qstash.errors import QStashError

from devtools.qstash_local import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

from .helpers import HOOK, Stack, publish


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"delay": "5x"}, "Upstash-Delay"),
        ({"delay": "10"}, "Upstash-Delay"),
        ({"timeout": "soon"}, "Upstash-Timeout"),
        ({"method": "FETCH"}, "Upstash-Method"),
        ({"retry_delay": "import os"}, "Upstash-Retry-Delay"),
        ({"retry_delay": "__import__('os')"}, "Upstash-Retry-Delay"),
    ],
)
def test_malformed_publish_options_are_refused(
    qs: Stack, options: dict[str, str], fragment: str
) -> None:
    with pytest.raises(QStashError, match=f"status: 400, body: .*{fragment}"):
        publish(qs.client, url=HOOK, body="x", **options)

    assert qs.local.messages == {}


@pytest.mark.parametrize("retries", ["three", "-1", "1.5"])
def test_non_integer_retries_are_refused(qs: Stack, retries: str) -> None:
    response = requests.post(
        f"{qs.server.url}/v2/publish/{HOOK}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}", "Upstash-Retries": retries},
        timeout=5,
    )

    assert response.status_code == 400
    assert "Upstash-Retries" in response.json()["error"]


@pytest.mark.parametrize("path", ["/v2/publish/", "/v2/schedules/", "/v2/publish/not-a-url"])
def test_missing_destination_is_refused(qs: Stack, path: str) -> None:
    response = requests.post(
        f"{qs.server.url}{path}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}", "Upstash-Cron": "0 * * * *"},
        timeout=5,
    )

    assert response.status_code == 400
    assert "destination" in response.json()["error"]
    assert qs.local.schedules == {}


@pytest.mark.parametrize(
    "destination",
    ["https://example.com/hook", "http://10.0.0.8/hook", "http://localhost.example.com/hook"],
)
def test_remote_destinations_are_refused_by_default(qs: Stack, destination: str) -> None:
    with pytest.raises(QStashError, match=r"status: 400, body: .*loopback"):
        publish(qs.client, url=destination, body="x")
    with pytest.raises(QStashError, match=r"status: 400, body: .*loopback"):
        qs.client.schedule.create(destination=destination, cron="0 * * * *")

    assert qs.local.messages == {}
    assert qs.local.schedules == {}


def test_remote_destinations_can_be_allowed(make_stack) -> None:
    stack = make_stack(allow_remote_destinations=True)

    schedule_id = stack.client.schedule.create(
        destination="https://example.com/hook", cron="0 * * * *"
    )

    assert stack.local.schedules[schedule_id].destination == "https://example.com/hook"


@pytest.mark.parametrize(
    "destination", ["http://localhost:8000/h", "http://127.0.0.2/h", "http://[::1]:9/h"]
)
def test_loopback_destinations_are_accepted(qs: Stack, destination: str) -> None:
    response = publish(qs.client, url=destination, body="x")

    assert qs.local.messages[response.message_id].url == destination


def test_schedule_quota_counts_distinct_ids(make_stack) -> None:
    stack = make_stack(schedule_quota=2)
    stack.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="a")
    stack.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="b")

    with pytest.raises(QStashError, match="status: 412"):
        stack.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="c")
    stack.client.schedule.create(destination=HOOK, cron="5 * * * *", schedule_id="a")

    assert sorted(stack.local.schedules) == ["a", "b"]
    assert stack.local.schedules["a"].cron.text == "5 * * * *"


def test_bad_token_is_refused(qs: Stack) -> None:
    intruder = QStash("not-the-token", base_url=qs.server.url, retry=False)
    try:
        with pytest.raises(QStashError, match=r"status: 401, body: .*\"error\""):
            intruder.schedule.list()
        with pytest.raises(QStashError, match="status: 401"):
            intruder.message.publish(url=HOOK, body="x")
    finally:
        intruder.http._client.close()

    assert qs.local.messages == {}


def test_token_is_required_and_accepted_as_query_parameter(qs: Stack) -> None:
    anonymous = requests.get(f"{qs.server.url}/v2/keys", timeout=5)
    by_query = requests.get(f"{qs.server.url}/v2/keys?qstash_token={DEV_TOKEN}", timeout=5)

    assert anonymous.status_code == 401
    assert set(anonymous.json()) == {"error"}
    assert by_query.status_code == 200
    assert by_query.json() == {"current": DEV_CURRENT_SIGNING_KEY, "next": DEV_NEXT_SIGNING_KEY}


def test_signing_keys(qs: Stack, make_stack) -> None:
    custom = make_stack(token="t0k", current_signing_key="sig_a", next_signing_key="sig_b")
    custom_client = QStash("t0k", base_url=custom.server.url, retry=False)
    try:
        custom_keys = custom_client.signing_key.get()
    finally:
        custom_client.http._client.close()

    keys = qs.client.signing_key.get()

    assert (keys.current, keys.next) == (DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    assert (custom_keys.current, custom_keys.next) == ("sig_a", "sig_b")


def test_key_rotation_moves_next_to_current(qs: Stack) -> None:
    rotated = qs.client.signing_key.rotate()

    assert rotated.current == DEV_NEXT_SIGNING_KEY
    assert rotated.next.startswith("sig_")
    assert rotated.next not in (DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    assert qs.local.keys == (rotated.current, rotated.next)
