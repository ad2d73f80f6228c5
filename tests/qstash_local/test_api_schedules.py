from __future__ import annotations

import pytest
import requests
from qstash.errors import QStashError

from devtools.qstash_local import DEV_TOKEN

from .helpers import HOOK, Stack, ts


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
