from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from qstash import QStash
from qstash.errors import QStashError, RateLimitExceededError

from devtools.qstash_local import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_NEXT_SIGNING_KEY,
    DEV_TOKEN,
    LocalQStash,
)

from .helpers import Stack, publish

HOOK = "http://127.0.0.1:5000/api/qstash/hook"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_schedule_create_stores_every_field_and_sdk_parses_it(qs: Stack) -> None:
    qs.clock.set(ts("2030-01-01T12:03:30"))
    schedule_id = qs.client.schedule.create(
        destination=HOOK,
        cron="*/5 * * * *",
        body='{"job":"payouts"}',
        content_type="application/json",
        method="PUT",
        headers={"x-qstash-target-url": "t", "Authorization": "Bearer abc"},
        retries=5,
        delay="30s",
        timeout=20,
        schedule_id="payouts.daily",
        label="payouts",
    )

    schedule = qs.client.schedule.get(schedule_id)

    assert schedule_id == "payouts.daily"
    assert schedule.schedule_id == "payouts.daily"
    assert schedule.destination == HOOK
    assert schedule.cron == "*/5 * * * *"
    assert schedule.method == "PUT"
    assert schedule.body == '{"job":"payouts"}'
    assert schedule.body_base64 is None
    assert schedule.headers == {
        "X-Qstash-Target-Url": ["t"],
        "Authorization": ["Bearer abc"],
        "Content-Type": ["application/json"],
    }
    assert schedule.retries == 5
    assert schedule.delay == 30
    assert schedule.timeout == 20
    assert schedule.label == "payouts"
    assert schedule.paused is False
    assert schedule.caller_ip == "127.0.0.1"
    assert schedule.created_at == int(ts("2030-01-01T12:03:30") * 1000)
    assert schedule.next_schedule_time == int(ts("2030-01-01T12:05:00") * 1000)
    assert schedule.last_schedule_time is None
    assert schedule.last_schedule_states == {}


def test_schedule_defaults_and_generated_id(qs: Stack) -> None:
    schedule_id = qs.client.schedule.create(destination=HOOK, cron="0 * * * *")

    schedule = qs.client.schedule.get(schedule_id)

    assert schedule_id.startswith("scd_")
    assert schedule.method == "POST"
    assert schedule.retries == 3
    assert schedule.body is None
    assert schedule.headers is None
    assert schedule.delay is None
    assert schedule.timeout is None


def test_schedule_upsert_keeps_id_and_replaces_all_fields(qs: Stack) -> None:
    created_at = qs.clock()
    qs.client.schedule.create(
        destination=HOOK,
        cron="0 4 * * *",
        body="first",
        content_type="text/plain",
        headers={"X-Old": "1"},
        retries=7,
        label="old",
        schedule_id="sync-me",
    )
    qs.clock.advance(60)

    returned = qs.client.schedule.create(
        destination=HOOK + "/v2", cron="*/10 * * * *", schedule_id="sync-me"
    )

    schedules = qs.client.schedule.list()
    assert returned == "sync-me"
    assert [s.schedule_id for s in schedules] == ["sync-me"]
    (schedule,) = schedules
    assert schedule.destination == HOOK + "/v2"
    assert schedule.cron == "*/10 * * * *"
    assert schedule.body is None
    assert schedule.headers is None
    assert schedule.retries == 3
    assert schedule.label is None
    assert schedule.created_at == int(created_at * 1000)


def test_schedule_list_returns_all(qs: Stack) -> None:
    qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="a")
    qs.client.schedule.create(destination=HOOK, cron="0 1 * * *", schedule_id="b")

    schedules = {s.schedule_id: s for s in qs.client.schedule.list()}

    assert set(schedules) == {"a", "b"}
    assert schedules["b"].cron == "0 1 * * *"


def test_schedule_cron_is_stored_trimmed(qs: Stack) -> None:
    # httpx refuses header values with surrounding spaces, so go through the WSGI app.
    response = qs.local.app.test_client().post(
        f"/v2/schedules/{HOOK}",
        headers={
            "Authorization": f"Bearer {DEV_TOKEN}",
            "Upstash-Cron": " CRON_TZ=Europe/Lisbon   */10 * * * * ",
            "Upstash-Schedule-Id": "trim",
        },
    )

    assert response.status_code == 200
    assert qs.client.schedule.get("trim").cron == "CRON_TZ=Europe/Lisbon   */10 * * * *"


def test_non_utf8_schedule_body_comes_back_base64(qs: Stack) -> None:
    qs.client.schedule.create(
        destination=HOOK, cron="0 * * * *", body=b"\xff\x00raw", schedule_id="bin"
    )

    schedule = qs.client.schedule.get("bin")

    assert schedule.body is None
    assert schedule.body_base64 == "/wByYXc="
    assert qs.local.schedules["bin"].body == b"\xff\x00raw"


def test_schedule_delete(qs: Stack) -> None:
    qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="gone")

    qs.client.schedule.delete("gone")

    assert qs.client.schedule.list() == []
    with pytest.raises(QStashError, match="status: 404"):
        qs.client.schedule.get("gone")
    with pytest.raises(QStashError, match="status: 404"):
        qs.client.schedule.delete("gone")


def test_schedule_pause_and_resume_accept_patch_and_post(qs: Stack) -> None:
    qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="p")

    qs.client.schedule.pause("p")
    paused = qs.client.schedule.get("p").paused
    qs.client.schedule.pause("p")
    still_paused = qs.client.schedule.get("p").paused
    qs.client.schedule.resume("p")
    resumed = qs.client.schedule.get("p").paused
    web = qs.local.app.test_client()
    auth = {"Authorization": f"Bearer {DEV_TOKEN}"}
    post_pause = web.post("/v2/schedules/p/pause", headers=auth)

    assert (paused, still_paused, resumed) == (True, True, False)
    assert post_pause.status_code == 200
    assert post_pause.data == b""
    assert qs.local.schedules["p"].paused is True
    assert ("PATCH", "/v2/schedules/p/pause") in qs.local.api_calls
    assert ("PATCH", "/v2/schedules/p/resume") in qs.local.api_calls
    with pytest.raises(QStashError, match="status: 404"):
        qs.client.schedule.pause("unknown")


@pytest.mark.parametrize(
    "cron",
    [
        "* * * *",
        "* * * * * *",
        "61 * * * *",
        "*/5 * * * MON-XYZ",
        "CRON_TZ=Mars/Olympus 0 4 * * *",
        "CRON_TZ=Europe/Lisbon",
        "@daily",
    ],
)
def test_invalid_cron_is_refused(qs: Stack, cron: str) -> None:
    with pytest.raises(QStashError, match=r"status: 400, body: .*invalid cron") as caught:
        qs.client.schedule.create(destination=HOOK, cron=cron, schedule_id="x")

    assert '"error"' in str(caught.value)
    assert qs.local.schedules == {}


@pytest.mark.parametrize("schedule_id", ["has space", "slash/inside", "semi;colon", "star*"])
def test_invalid_schedule_id_is_refused(qs: Stack, schedule_id: str) -> None:
    with pytest.raises(QStashError, match=r"status: 400, body: .*Upstash-Schedule-Id"):
        qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id=schedule_id)

    assert qs.local.schedules == {}


def test_missing_cron_is_refused(qs: Stack) -> None:
    response = requests.post(
        f"{qs.server.url}/v2/schedules/{HOOK}",
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    )

    assert response.status_code == 400
    assert response.json() == {"error": "Upstash-Cron header is required"}


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


