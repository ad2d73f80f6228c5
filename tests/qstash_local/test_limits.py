from __future__ import annotations

import pytest
from qstash.errors import QStashError

from devtools.qstash_local import LocalQStashConfig

from .helpers import HOOK, Stack, publish

MB = 1024 * 1024


def test_a_message_over_the_free_plan_size_is_refused(qs: Stack) -> None:
    publish(qs.client, url=HOOK, body="x" * MB)

    with pytest.raises(QStashError, match="status: 413"):
        publish(qs.client, url=HOOK, body="x" * (MB + 1))
    with pytest.raises(QStashError, match="status: 413"):
        qs.client.schedule.create(destination=HOOK, cron="* * * * *", body="x" * (11 * MB))

    assert len(qs.local.messages) == 1
    assert qs.local.schedules == {}


def test_a_raised_size_limit_accepts_more(make_stack) -> None:
    stack = make_stack(max_message_size=11 * MB)

    publish(stack.client, url=HOOK, body="x" * (11 * MB))

    assert len(stack.local.messages) == 1


@pytest.mark.parametrize("delay", ["8d", "400d", "169h"])
def test_a_delay_over_seven_days_is_refused(qs: Stack, delay: str) -> None:
    with pytest.raises(QStashError, match="status: 400.*maximum delay"):
        publish(qs.client, url=HOOK, body="x", delay=delay)
    with pytest.raises(QStashError, match="status: 400.*maximum delay"):
        qs.client.schedule.create(destination=HOOK, cron="* * * * *", delay=delay)

    assert qs.local.messages == {}
    assert qs.local.schedules == {}


def test_not_before_counts_as_a_delay(qs: Stack) -> None:
    now = int(qs.clock())
    publish(qs.client, url=HOOK, body="ok", not_before=now + 7 * 86400)

    with pytest.raises(QStashError, match="status: 400"):
        publish(qs.client, url=HOOK, body="late", not_before=now + 7 * 86400 + 60)

    assert len(qs.local.messages) == 1


def test_pay_as_you_go_allows_a_year(make_stack) -> None:
    payg = LocalQStashConfig().with_plan("payg")
    stack = make_stack(max_delay=payg.max_delay)

    publish(stack.client, url=HOOK, body="x", delay="365d")
    with pytest.raises(QStashError, match="status: 400"):
        publish(stack.client, url=HOOK, body="x", delay="400d")


def test_the_eleventh_schedule_is_refused_with_412(qs: Stack) -> None:
    for i in range(10):
        qs.client.schedule.create(destination=HOOK, cron="* * * * *", schedule_id=f"s{i}")

    with pytest.raises(QStashError, match="status: 412"):
        qs.client.schedule.create(destination=HOOK, cron="* * * * *", schedule_id="s10")
    # Updating an existing schedule is not a new one.
    qs.client.schedule.create(destination=HOOK, cron="0 * * * *", schedule_id="s3")

    assert len(qs.client.schedule.list()) == 10
