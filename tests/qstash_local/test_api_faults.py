from __future__ import annotations

import pytest
import requests
from qstash.errors import QStashError, RateLimitExceededError

from devtools.qstash_local import DEV_TOKEN, LocalQStash

from .helpers import HOOK, Stack, publish


def test_injected_rate_limit_is_seen_by_the_sdk_then_clears(qs: Stack) -> None:
    qs.local.inject_api_failure(
        status=429,
        method="GET",
        path_prefix="/v2/schedules",
        headers={"Burst-RateLimit-Limit": "1", "Burst-RateLimit-Reset": "1700000001"},
    )

    publish(qs.client, url=HOOK, body="unaffected")
    with pytest.raises(RateLimitExceededError) as caught:
        qs.client.schedule.list()
    after = qs.client.schedule.list()

    assert caught.value.reset == "1700000001"
    assert caught.value.limit == "1"
    assert after == []
    assert [c for c in qs.local.api_calls if c[1] == "/v2/schedules"] == [
        ("GET", "/v2/schedules"),
        ("GET", "/v2/schedules"),
    ]


def test_injected_server_errors_repeat_the_given_number_of_times(qs: Stack) -> None:
    qs.local.inject_api_failure(status=500, times=2, body='{"error":"boom"}')

    errors = []
    for _ in range(2):
        with pytest.raises(QStashError) as caught:
            qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="s")
        errors.append(str(caught.value))
    schedule_id = qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="s")

    assert errors == ['Request failed with status: 500, body: {"error":"boom"}'] * 2
    assert schedule_id == "s"
    assert len(qs.local.api_calls) == 3


def test_injected_failure_is_answered_before_authentication(qs: Stack) -> None:
    qs.local.inject_api_failure(status=503)

    response = requests.get(f"{qs.server.url}/v2/keys", timeout=5)

    assert response.status_code == 503
    assert "error" in response.json()


def test_api_calls_records_every_request_in_order(qs: Stack) -> None:
    qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="a")
    qs.client.schedule.list()
    qs.client.schedule.delete("a")
    requests.get(f"{qs.server.url}/v2/nowhere", timeout=5)

    assert qs.local.api_calls == [
        ("POST", f"/v2/schedules/{HOOK}"),
        ("GET", "/v2/schedules"),
        ("DELETE", "/v2/schedules/a"),
        ("GET", "/v2/nowhere"),
    ]


def test_unknown_routes_answer_json_errors(qs: Stack) -> None:
    auth = {"Authorization": f"Bearer {DEV_TOKEN}"}

    missing = requests.get(f"{qs.server.url}/v2/nowhere", headers=auth, timeout=5)
    wrong_method = requests.put(f"{qs.server.url}/v2/keys", headers=auth, timeout=5)

    assert missing.status_code == 404
    assert set(missing.json()) == {"error"}
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"error"}


def test_unsupported_features_are_refused_rather_than_ignored(qs: Stack) -> None:
    with pytest.raises(QStashError, match=r"status: 400, body: .*Upstash-Callback"):
        publish(qs.client, url=HOOK, body="x", callback="http://127.0.0.1:1/cb")

    assert qs.local.messages == {}


def test_publish_convenience_uses_the_same_rules(qs: Stack) -> None:
    local = LocalQStash(clock=qs.clock)

    result = local.publish(HOOK, body=b"x", headers={"Upstash-Retries": "0"})
    duplicate = local.publish(HOOK, headers={"Upstash-Deduplication-Id": "z"})
    again = local.publish(HOOK, headers={"Upstash-Deduplication-Id": "z"})

    assert local.messages[result.message_id].max_retries == 0
    assert again.deduplicated is True
    assert again.message_id == duplicate.message_id
    assert local.api_calls == []


def test_destination_is_kept_exactly_as_sent(qs: Stack) -> None:
    response = requests.post(
        f"{qs.server.url}/v2/publish/{HOOK}/a%20b%2Fc/",
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    )

    message = qs.local.messages[response.json()["messageId"]]
    assert message.url == f"{HOOK}/a%20b%2Fc/"


def test_flow_control_is_refused_like_queues_and_callbacks(qs: Stack) -> None:
    with pytest.raises(QStashError, match="status: 400.*Flow-Control"):
        publish(
            qs.client,
            url=HOOK,
            body="x",
            flow_control={"key": "k", "parallelism": 1},
        )
    with pytest.raises(QStashError, match="status: 400.*Flow-Control"):
        qs.client.schedule.create(
            destination=HOOK, cron="* * * * *", flow_control={"key": "k", "rate": 1}
        )

    assert qs.local.messages == {}
    assert qs.local.schedules == {}
