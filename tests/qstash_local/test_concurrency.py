from __future__ import annotations

import time

import pytest
import requests

from devtools.qstash_local import LocalQStash, LocalQStashConfig

from .helpers import Receiver, Reply, Stack, publish


def test_due_deliveries_overlap(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(sleep=0.5), Reply(sleep=0.5))
    publish(qs.client, url=receiver.hook, body="a")
    publish(qs.client, url=receiver.hook, body="b")

    attempts = qs.local.tick()

    assert attempts == 2
    assert receiver.max_active == 2
    assert qs.local.messages == {}


def test_concurrency_bounds_the_deliveries_in_flight(make_stack, receiver: Receiver) -> None:
    stack = make_stack(concurrency=2)
    receiver.reply(*[Reply(sleep=0.3)] * 3)
    for body in "abc":
        publish(stack.client, url=receiver.hook, body=body)

    first = stack.local.tick(wait=False)
    while_busy = stack.local.tick(wait=False)
    busy = stack.local.in_flight()
    deadline = time.monotonic() + 5
    while stack.local.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    rest = stack.local.tick()

    assert (first, while_busy, busy, rest) == (2, 0, 2, 1)
    assert receiver.max_active == 2
    assert len(receiver.requests) == 3


def test_one_at_a_time_when_concurrency_is_one(make_stack, receiver: Receiver) -> None:
    stack = make_stack(concurrency=1)
    for body in "ab":
        publish(stack.client, url=receiver.hook, body=body)

    assert stack.local.tick() == 1
    assert stack.local.tick() == 1
    assert receiver.max_active == 1


def test_a_message_in_flight_is_not_delivered_twice(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(sleep=0.3))
    published = publish(qs.client, url=receiver.hook, body="once")

    assert qs.local.tick(wait=False) == 1
    assert qs.local.tick(wait=False) == 0
    assert qs.client.message.get(published.message_id).message_id == published.message_id
    qs.local.tick()  # waits for nothing new; the first delivery settles on its own
    deadline = time.monotonic() + 5
    while qs.local.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert len(receiver.requests) == 1
    assert published.message_id not in qs.local.messages


def test_a_slow_destination_does_not_hold_up_the_others(receiver: Receiver) -> None:
    local = LocalQStash(LocalQStashConfig())
    receiver.reply(Reply(sleep=3.0))
    local.publish(receiver.hook, body=b"slow")
    local.start(interval=0.01)
    try:
        deadline = time.monotonic() + 5
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        fast_published = time.monotonic()
        local.publish(f"{receiver.url}/fast", body=b"fast")
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        fast_seen = time.monotonic()
    finally:
        local.stop()

    assert [r.path for r in receiver.requests] == ["/hook", "/fast"]
    assert fast_seen - fast_published < 2.0
    assert [a.status for a in local.attempts] == [200, 200]
    assert local.messages == {}


def test_a_job_within_its_upstash_timeout_finishes(qs: Stack, receiver: Receiver) -> None:
    receiver.reply(Reply(sleep=0.3))
    publish(qs.client, url=receiver.hook, body="x", timeout="1s", retries=0)

    qs.local.tick()

    (attempt,) = qs.local.attempts
    assert attempt.status == 200


def test_upstash_timeout_beyond_the_plan_limit_is_cut_to_it(
    qs: Stack, receiver: Receiver, mocker
) -> None:
    spy = mocker.spy(requests.Session, "request")
    publish(qs.client, url=receiver.hook, body="x", timeout="20m")

    qs.local.tick()

    # The free plan allows 15 minutes.
    assert spy.call_args.kwargs["timeout"] == 900.0


@pytest.mark.parametrize("concurrency", [0, -1])
def test_concurrency_must_be_positive(concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LocalQStashConfig(concurrency=concurrency)


def test_plans_set_the_limits() -> None:
    free = LocalQStashConfig()
    payg = free.with_plan("payg")

    assert (free.delivery_timeout, free.max_message_size, free.max_delay, free.schedule_quota) == (
        900.0,
        1024 * 1024,
        7 * 86400,
        10,
    )
    assert (payg.delivery_timeout, payg.max_message_size, payg.max_delay, payg.schedule_quota) == (
        7200.0,
        10 * 1024 * 1024,
        365 * 86400,
        1000,
    )
    with pytest.raises(ValueError, match="plan"):
        free.with_plan("pro")  # type: ignore[arg-type]


def test_stop_does_not_wait_for_a_long_job_beyond_its_grace(receiver: Receiver) -> None:
    local = LocalQStash(LocalQStashConfig())
    receiver.reply(Reply(sleep=3.0))
    local.publish(receiver.hook, body=b"long")
    local.start(interval=0.01)
    deadline = time.monotonic() + 5
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)

    stopping = time.monotonic()
    local.stop(grace=0.2)

    assert time.monotonic() - stopping < 1.5
    assert local.in_flight() == 1
