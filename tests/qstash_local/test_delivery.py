from __future__ import annotations

import base64
import hashlib
import math
import socket
import time
from datetime import UTC, datetime

import jwt
import pytest
import requests
from qstash import Receiver as SignatureReceiver
from qstash.errors import SignatureError
from qstash.receiver import verify_with_key
from qstash.schedule import ScheduleState

from devtools.qstash_local import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_NEXT_SIGNING_KEY,
    LocalQStash,
    LocalQStashConfig,
)

from .helpers import FakeClock, Receiver, Reply, Stack, publish


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def padded_hash(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()


def fire_next_slot(stack: Stack, schedule_id: str) -> int:
    stack.clock.set(stack.local.schedules[schedule_id].next_schedule_time)
    return stack.local.tick()


def test_fired_schedule_is_delivered_with_qstash_headers(qs: Stack, receiver: Receiver) -> None:
    body = b'{"hello":"world"}'
    qs.client.schedule.create(
        destination=receiver.hook,
        cron="* * * * *",
        body=body,
        content_type="application/json",
        method="PUT",
        headers={"x-qstash-target-url": "payouts", "Authorization": "Bearer job"},
        schedule_id="payouts",
    )

    attempts = fire_next_slot(qs, "payouts")

    assert attempts == 1
    (got,) = receiver.requests
    (message_id,) = qs.client.schedule.get("payouts").last_schedule_states or {}
    assert got.method == "PUT"
    assert got.path == "/hook"
    assert got.body == body
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Qstash-Target-Url"] == "payouts"
    assert got.headers["Authorization"] == "Bearer job"
    assert got.headers["Upstash-Message-Id"] == message_id
    assert message_id.startswith("msg_")
    assert got.headers["Upstash-Retried"] == "0"
    assert got.headers["Upstash-Schedule-Id"] == "payouts"
    assert got.headers["Upstash-Caller-Ip"] == "127.0.0.1"
    assert got.headers["User-Agent"] == "Upstash-QStash"


def test_delivery_signature_verifies_with_sdk_and_pyjwt(qs: Stack, receiver: Receiver) -> None:
    body = b'{"hello":"world"}'
    qs.client.schedule.create(
        destination=receiver.hook, cron="* * * * *", body=body, schedule_id="signed"
    )
    fire_next_slot(qs, "signed")

    (got,) = receiver.requests
    token = got.headers["Upstash-Signature"]
    SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=token, body=got.body.decode(), url=receiver.hook
    )
    verify_with_key(DEV_CURRENT_SIGNING_KEY, signature=token, body=got.body.decode())
    with pytest.raises(SignatureError):
        verify_with_key(DEV_NEXT_SIGNING_KEY, signature=token, body=got.body.decode())
    claims = jwt.decode(
        token,
        DEV_CURRENT_SIGNING_KEY,
        algorithms=["HS256"],
        issuer="Upstash",
        options={"require": ["iss", "sub", "exp", "nbf", "iat", "jti", "body"]},
    )
    issued = int(qs.clock())
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert claims["sub"] == receiver.hook
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (issued, issued, issued + 300)
    assert isinstance(claims["jti"], str)
    assert claims["jti"].startswith("jwt_")
    assert claims["body"] == padded_hash(body)
    assert claims["body"] == "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="
    assert "aud" not in claims


def test_signature_covers_the_exact_destination_including_query(
    qs: Stack, receiver: Receiver
) -> None:
    destination = f"{receiver.hook}?job=payouts"
    publish(qs.client, url=destination, body="x")

    qs.local.tick()

    (got,) = receiver.requests
    assert got.query == "job=payouts"
    verifier = SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    verifier.verify(signature=got.headers["Upstash-Signature"], body="x", url=destination)
    with pytest.raises(SignatureError):
        verifier.verify(signature=got.headers["Upstash-Signature"], body="x", url=receiver.hook)


def test_sign_with_next_verifies_with_the_next_key_only(make_stack, receiver: Receiver) -> None:
    stack = make_stack(sign_with="next")
    publish(stack.client, url=receiver.hook, body="rotated")

    stack.local.tick()

    token = receiver.requests[0].headers["Upstash-Signature"]
    verify_with_key(DEV_NEXT_SIGNING_KEY, signature=token, body="rotated", url=receiver.hook)
    with pytest.raises(SignatureError):
        verify_with_key(DEV_CURRENT_SIGNING_KEY, signature=token, body="rotated")
    # A receiver holding (current, next) accepts it through its fallback to next.
    SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
        signature=token, body="rotated", url=receiver.hook
    )
    with pytest.raises(SignatureError):
        SignatureReceiver(DEV_CURRENT_SIGNING_KEY, DEV_CURRENT_SIGNING_KEY).verify(
            signature=token, body="rotated", url=receiver.hook
        )


def test_binary_body_is_delivered_byte_for_byte(qs: Stack, receiver: Receiver) -> None:
    body = b"\xff\x00\x10binary\r\n"
    publish(qs.client, url=receiver.hook, body=body, content_type="application/x-raw")

    qs.local.tick()

    (got,) = receiver.requests
    claims = jwt.decode(
        got.headers["Upstash-Signature"], DEV_CURRENT_SIGNING_KEY, algorithms=["HS256"]
    )
    assert got.body == body
    assert got.headers["Content-Type"] == "application/x-raw"
    assert claims["body"] == padded_hash(body)
    assert "Upstash-Schedule-Id" not in got.headers


def test_failure_is_retried_with_backoff_and_retried_header(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(status=500, body=b"down"))
    published = publish(qs.client, url=receiver.hook, body="payload")
    start = qs.clock()

    first = qs.local.tick()
    too_early = [qs.local.tick()]
    qs.clock.advance(12.1)
    too_early.append(qs.local.tick())
    qs.clock.advance(0.1)
    second = qs.local.tick()

    assert (first, second) == (1, 1)
    assert too_early == [0, 0]
    assert [r.headers["Upstash-Retried"] for r in receiver.requests] == ["0", "1"]
    ids = {r.headers["Upstash-Message-Id"] for r in receiver.requests}
    assert ids == {published.message_id}
    assert (
        receiver.requests[0].headers["Upstash-Signature"]
        != (receiver.requests[1].headers["Upstash-Signature"])
    )
    assert [r.body for r in receiver.requests] == [b"payload", b"payload"]
    assert qs.local.messages == {}
    assert qs.local.dlq == {}
    assert [(a.retried, a.status) for a in qs.local.attempts] == [(0, 500), (1, 200)]
    assert qs.local.attempts[1].at == pytest.approx(start + 12.2)


def test_retries_follow_documented_backoff_then_land_in_dlq(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(*[Reply(status=503, body=b"unavailable")] * 4)
    published = publish(qs.client, url=receiver.hook, body="x", retries=3)
    delays = []

    for _ in range(3):
        before = qs.clock()
        assert qs.local.tick() == 1
        message = qs.local.messages[published.message_id]
        delays.append(message.next_attempt_at - before)
        qs.clock.set(message.next_attempt_at)
    assert qs.local.tick() == 1
    qs.clock.advance(86400 * 2)
    after_dlq = qs.local.tick()

    assert delays == pytest.approx([math.exp(2.5), math.exp(5.0), math.exp(7.5)])
    assert after_dlq == 0
    assert len(receiver.requests) == 4
    assert qs.local.messages == {}
    listed = qs.client.dlq.list()
    (entry,) = listed.messages
    assert entry.message_id == published.message_id
    assert entry.url == receiver.hook
    assert entry.max_retries == 3
    assert entry.response_status == 503
    assert entry.response_body == "unavailable"
    assert entry.body == "x"
    assert entry.dlq_id in qs.local.dlq

    qs.client.dlq.delete(entry.dlq_id)

    assert qs.client.dlq.list().messages == []


def test_backoff_caps_at_one_day(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(*[Reply(status=500)] * 6)
    published = publish(qs.client, url=receiver.hook, body="x", retries=6)
    delays = []

    for _ in range(6):
        before = qs.clock()
        qs.local.tick()
        message = qs.local.messages[published.message_id]
        delays.append(message.next_attempt_at - before)
        qs.clock.set(message.next_attempt_at)

    assert delays[4:] == [86400.0, 86400.0]


def test_backoff_scale_shortens_retries(make_stack, receiver: Receiver) -> None:
    stack = make_stack(backoff_scale=0.01)
    receiver.reply(Reply(status=500))
    published = publish(stack.client, url=receiver.hook, body="x")

    stack.local.tick()

    delay = stack.local.messages[published.message_id].next_attempt_at - stack.clock()
    assert delay == pytest.approx(math.exp(2.5) * 0.01)


def test_retry_after_header_replaces_backoff(make_stack, receiver: Receiver) -> None:
    stack = make_stack(backoff_scale=0.01)
    receiver.reply(
        Reply(status=429, headers={"Retry-After": "40"}),
        Reply(status=429, headers={"Retry-After": "90000"}),
    )
    published = publish(stack.client, url=receiver.hook, body="x")

    stack.local.tick()
    message = stack.local.messages[published.message_id]
    honoured = message.next_attempt_at - stack.clock()
    stack.clock.set(message.next_attempt_at)
    stack.local.tick()
    beyond_a_day = message.next_attempt_at - stack.clock()

    assert honoured == pytest.approx(40)
    assert beyond_a_day == pytest.approx(math.exp(5.0) * 0.01)


def test_retry_delay_expression_is_used_in_milliseconds(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(status=500), Reply(status=500))
    published = publish(qs.client, url=receiver.hook, body="x", retry_delay="1000 * (1 + retried)")
    delays = []

    for _ in range(2):
        before = qs.clock()
        qs.local.tick()
        message = qs.local.messages[published.message_id]
        delays.append(message.next_attempt_at - before)
        qs.clock.set(message.next_attempt_at)

    assert delays == pytest.approx([1.0, 2.0])
    assert qs.client.message.get(published.message_id).retry_delay_expression == (
        "1000 * (1 + retried)"
    )


def test_non_retryable_489_goes_straight_to_dlq(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(
        Reply(status=489, headers={"Upstash-NonRetryable-Error": "true"}, body=b"bad input")
    )
    qs.client.schedule.create(destination=receiver.hook, cron="* * * * *", schedule_id="s")

    fire_next_slot(qs, "s")
    qs.client.schedule.pause("s")  # only the fired message may reach the receiver from now on
    qs.clock.advance(3600)
    later = qs.local.tick()

    assert len(receiver.requests) == 1
    assert later == 0
    (entry,) = qs.local.dlq.values()
    assert entry.response_status == 489
    assert entry.response_body == b"bad input"
    assert entry.response_headers["Upstash-NonRetryable-Error"] == ["true"]
    assert qs.client.schedule.get("s").last_schedule_states == {
        entry.message.message_id: ScheduleState.FAIL
    }
    (listed,) = qs.client.dlq.list(filter={"schedule_id": "s"}).messages
    assert listed.schedule_id == "s"
    assert listed.response_headers is not None
    assert listed.response_headers["Upstash-NonRetryable-Error"] == ["true"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=489),
        Reply(status=489, headers={"Upstash-NonRetryable-Error": "false"}),
        Reply(status=500, headers={"Upstash-NonRetryable-Error": "true"}),
    ],
)
def test_only_489_with_the_header_stops_retries(
    qs: Stack, receiver: Receiver, reply: Reply
) -> None:
    receiver.reply(reply)
    published = publish(qs.client, url=receiver.hook, body="x")

    qs.local.tick()

    assert qs.local.messages[published.message_id].retried == 1
    assert qs.local.dlq == {}


def test_redirect_is_a_failed_delivery(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(status=302, headers={"Location": "/elsewhere"}))
    published = publish(qs.client, url=receiver.hook, body="x", retries=0)

    qs.local.tick()

    assert [r.path for r in receiver.requests] == ["/hook"]
    assert qs.local.dlq[next(iter(qs.local.dlq))].response_status == 302
    assert published.message_id not in qs.local.messages


def test_connection_error_is_a_failure(qs: Stack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    published = publish(qs.client, url=f"http://127.0.0.1:{closed_port}/hook", body="x")

    first = qs.local.tick()
    qs.clock.advance(13)
    qs.local.tick()

    assert first == 1
    assert [(a.status, a.error is not None) for a in qs.local.attempts] == [
        (None, True),
        (None, True),
    ]
    assert qs.local.messages[published.message_id].retried == 2


def test_timeout_is_a_failure(make_stack, receiver: Receiver) -> None:
    stack = make_stack(delivery_timeout=0.2)
    receiver.reply(Reply(sleep=0.6))
    published = publish(stack.client, url=receiver.hook, body="x", retries=0)

    stack.local.tick()

    (attempt,) = stack.local.attempts
    assert attempt.status is None
    assert attempt.error is not None
    (entry,) = stack.local.dlq.values()
    assert entry.message.message_id == published.message_id
    assert entry.response_status == 0


@pytest.mark.parametrize(
    ("upstash_timeout", "expected"),
    [(None, 900.0), ("5s", 5.0), ("2m", 120.0), ("1h", 900.0)],
)
def test_upstash_timeout_can_only_shorten_the_plan_limit(
    qs: Stack, receiver: Receiver, mocker, upstash_timeout: str | None, expected: float
) -> None:
    spy = mocker.spy(requests.Session, "request")
    publish(qs.client, url=receiver.hook, body="x", timeout=upstash_timeout)

    qs.local.tick()

    assert spy.call_args.kwargs["timeout"] == expected
    assert len(receiver.requests) == 1


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
