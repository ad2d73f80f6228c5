from __future__ import annotations

import math
import socket

import pytest
import requests
from qstash.schedule import ScheduleState

from .helpers import Receiver, Reply, Stack, fire_next_slot, publish


def failed_attempt_delays(qs: Stack, message_id: str, attempts: int) -> list[float]:
    """Fail the message's next attempts one by one; return the wait scheduled after each."""
    delays = []
    for _ in range(attempts):
        before = qs.clock()
        assert qs.local.tick() == 1
        message = qs.local.messages[message_id]
        delays.append(message.next_attempt_at - before)
        qs.clock.set(message.next_attempt_at)
    return delays


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
    delays = failed_attempt_delays(qs, published.message_id, 3)
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
    delays = failed_attempt_delays(qs, published.message_id, 6)

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
    delays = failed_attempt_delays(qs, published.message_id, 2)

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
