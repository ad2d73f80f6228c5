from __future__ import annotations

import time

import pytest
from qstash import Receiver as SignatureReceiver
from qstash.schedule import ScheduleState

from devtools.qstash_local import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_NEXT_SIGNING_KEY,
    LocalQStash,
    LocalQStashConfig,
)

from .helpers import FakeClock, Receiver, Reply, Stack, fire_next_slot, publish, ts


def test_schedule_success_is_recorded_in_last_states(qs: Stack, receiver: Receiver) -> None:
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="ok")

    fire_next_slot(qs, "ok")

    schedule = qs.client.schedule.get("ok")
    message_id = receiver.requests[0].headers["Upstash-Message-Id"]
    assert schedule.last_schedule_states == {message_id: ScheduleState.SUCCESS}
    assert schedule.last_schedule_time == int(qs.clock() * 1000)


def test_each_firing_is_a_new_message(qs: Stack, receiver: Receiver) -> None:
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="m")

    fire_next_slot(qs, "m")
    fire_next_slot(qs, "m")

    ids = [r.headers["Upstash-Message-Id"] for r in receiver.requests]
    assert len(ids) == 2
    assert ids[0] != ids[1]
    assert list(qs.local.schedules["m"].last_schedule_states) == [ids[1]]


def test_cron_fires_on_its_minute_once_per_slot(qs: Stack, receiver: Receiver) -> None:
    qs.clock.set(ts("2030-01-01T12:03:30"))
    qs.client.schedule.create(destination=receiver.hook, cron="*/5 * * * *", schedule_id="c")
    ticks = {}

    for moment in [
        "2030-01-01T12:04:00",
        "2030-01-01T12:04:59.999",
        "2030-01-01T12:05:00",
        "2030-01-01T12:05:00.5",
        "2030-01-01T12:05:59",
        "2030-01-01T12:09:59",
        "2030-01-01T12:10:00",
    ]:
        qs.clock.set(ts(moment))
        ticks[moment[11:]] = qs.local.tick()

    assert ticks == {
        "12:04:00": 0,
        "12:04:59.999": 0,
        "12:05:00": 1,
        "12:05:00.5": 0,
        "12:05:59": 0,
        "12:09:59": 0,
        "12:10:00": 1,
    }
    assert len(receiver.requests) == 2
    assert qs.client.schedule.get("c").next_schedule_time == int(ts("2030-01-01T12:15:00") * 1000)


def test_missed_slots_collapse_into_one_firing(qs: Stack, receiver: Receiver) -> None:
    qs.clock.set(ts("2030-01-01T12:00:30"))
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="j")

    qs.clock.set(ts("2030-01-01T13:00:30"))
    attempts = qs.local.tick()

    assert attempts == 1
    assert qs.local.schedules["j"].next_schedule_time == ts("2030-01-01T13:01:00")


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        # New York is UTC-5 in winter and UTC-4 in summer.
        ("2030-01-15T00:00:00", "2030-01-15T09:00:00"),
        ("2030-07-15T00:00:00", "2030-07-15T08:00:00"),
    ],
)
def test_cron_tz_is_evaluated_in_its_zone(
    qs: Stack, receiver: Receiver, created: str, expected: str
) -> None:
    qs.clock.set(ts(created))
    qs.client.schedule.create(
        destination=receiver.hook, cron="CRON_TZ=America/New_York 0 4 * * *", schedule_id="tz"
    )

    qs.clock.set(ts(expected) - 1)
    before = qs.local.tick()
    qs.clock.set(ts(expected))
    at = qs.local.tick()

    assert (before, at) == (0, 1)
    assert qs.client.schedule.get("tz").next_schedule_time == int((ts(expected) + 86400) * 1000)


def test_utc_is_the_default_zone(qs: Stack) -> None:
    qs.clock.set(ts("2030-01-15T00:00:00"))

    qs.client.schedule.create(destination="http://127.0.0.1:1/h", cron="0 4 * * *")

    (schedule,) = qs.local.schedules.values()
    assert schedule.next_schedule_time == ts("2030-01-15T04:00:00")


def test_paused_schedule_skips_its_slots(qs: Stack, receiver: Receiver) -> None:
    qs.clock.set(ts("2030-01-01T12:00:30"))
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="p")
    qs.client.schedule.pause("p")

    qs.clock.set(ts("2030-01-01T12:01:00"))
    while_paused = qs.local.tick()
    qs.client.schedule.resume("p")
    still_same_slot = qs.local.tick()
    qs.clock.set(ts("2030-01-01T12:02:00"))
    resumed = qs.local.tick()

    assert (while_paused, still_same_slot, resumed) == (0, 0, 1)
    assert len(receiver.requests) == 1


def test_schedule_delay_postpones_each_delivery(qs: Stack, receiver: Receiver) -> None:
    qs.clock.set(ts("2030-01-01T12:00:30"))
    qs.client.schedule.create(
        destination=receiver.hook, cron="* * * * *", delay="30s", schedule_id="d"
    )

    qs.clock.set(ts("2030-01-01T12:01:00"))
    at_slot = qs.local.tick()
    pending = {m.schedule_id for m in qs.local.messages.values()}
    qs.clock.set(ts("2030-01-01T12:01:29"))
    early = qs.local.tick()
    qs.clock.set(ts("2030-01-01T12:01:30"))
    delayed = qs.local.tick()

    assert (at_slot, early, delayed) == (0, 0, 1)
    assert pending == {"d"}


def test_deleted_schedule_stops_firing(qs: Stack, receiver: Receiver) -> None:
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="x")
    slot = qs.local.schedules["x"].next_schedule_time
    qs.client.schedule.delete("x")

    qs.clock.set(slot + 3600)

    assert qs.local.tick() == 0
    assert receiver.requests == []


def test_cancelled_message_is_not_delivered(qs: Stack, receiver: Receiver) -> None:
    published = publish(qs.client, url=receiver.hook, body="x", delay="10s")
    qs.client.message.cancel(published.message_id)

    qs.clock.advance(60)

    assert qs.local.tick() == 0
    assert receiver.requests == []


def test_background_thread_delivers_on_the_wall_clock(receiver: Receiver) -> None:
    local = LocalQStash(LocalQStashConfig(backoff_scale=0.001))
    receiver.reply(Reply(status=500))
    published = local.publish(receiver.hook, body=b"bg")

    local.start(interval=0.01)
    try:
        deadline = time.monotonic() + 5
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        local.stop()

    assert [r.headers["Upstash-Retried"] for r in receiver.requests] == ["0", "1"]
    assert published.message_id not in local.messages
    SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=receiver.requests[1].headers["Upstash-Signature"], body="bg", url=receiver.hook
    )


def test_start_twice_is_refused_and_stop_is_idempotent() -> None:
    local = LocalQStash(clock=FakeClock(0.0))

    local.start(interval=0.01)
    try:
        with pytest.raises(RuntimeError):
            local.start()
    finally:
        local.stop()
    local.stop()

    local.start(interval=0.01)
    local.stop()
