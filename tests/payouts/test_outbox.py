from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from sqlalchemy import update

from service.db import utcnow
from service.extensions import KEY, get_engine, get_sessions, services
from service.notifications import DeliveryError, Notice
from service.payouts import outbox
from service.payouts.models import Notification
from service.payouts.upcoming import queue_upcoming_notices
from tests.helpers import (
    ADMIN_TOKEN,
    AppFactory,
    add_expert,
    add_transfer,
    free_port,
    load_transfer,
    outbox_rows,
    refusing,
)
from tests.notifications.helpers import HOST, RecordingHandler
from tests.payouts.helpers import run

MAIL_FROM = "Eleva Care <payouts@eleva.test>"


class Flaky:
    """A channel that fails as told, then delivers; it remembers what it delivered."""

    name = "flaky"

    def __init__(self, failures: list[DeliveryError | Exception]) -> None:
        self.failures = failures
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(notice)


def use_channel(app: Flask, channel: Any) -> None:
    app.extensions[KEY] = dataclasses.replace(services(app), notifier=channel)


def make_all_due(app: Flask) -> None:
    with get_sessions(app).begin() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow()))


def test_upcoming_notices_are_queued_once_for_rows_due_within_two_days(app: Flask) -> None:
    add_expert(app, first_name="Ana")
    add_expert(app, "exp_off", payouts_enabled=False)
    upcoming = add_transfer(app, due=timedelta(hours=36), amount=123450)
    late = add_transfer(app, due=timedelta(hours=12))  # registered less than a day ahead
    others = [
        add_transfer(app, due=timedelta(hours=-1)),  # already due: paid by the next run
        add_transfer(app, due=timedelta(hours=60)),
        add_transfer(app, due=timedelta(hours=36), requires_approval=True),
        add_transfer(app, due=timedelta(hours=36), expert_id="exp_off"),
        add_transfer(app, due=timedelta(hours=36), notified_at=utcnow()),
        add_transfer(app, due=timedelta(hours=36), status="CANCELLED"),
    ]

    result = run(app, "check-upcoming-payouts")

    assert result == {"considered": 2, "queued": 2, "delivered": 2, "delivery_retrying": 0,
                      "delivery_failed": 0}
    row = load_transfer(app, upcoming)
    late_notice, notice = outbox_rows(app)  # queued in order of due time
    assert late_notice.dedup_key == f"upcoming_payout:{late}"
    assert (notice.kind, notice.dedup_key, notice.status) == (
        "upcoming_payout", f"upcoming_payout:{upcoming}", "SENT")
    assert notice.payload == {"first_name": "Ana", "amount": 123450, "currency": "eur",
                              "scheduled_date": row.scheduled_transfer_at.date().isoformat()}
    assert row.notified_at is not None
    assert [load_transfer(app, i).notified_at is None for i in others] == [
        True, True, True, True, False, True]
    assert run(app, "check-upcoming-payouts")["queued"] == 0
    assert len(outbox_rows(app)) == 2


def test_a_row_between_two_days_windows_is_notified_once_before_it_is_due(app: Flask) -> None:
    # Day D's run starts at 12:00:00; day D+1's delivery fails once and QStash's retry runs at
    # 12:02:35. A row due at D+2 12:01:00 is neither one to two days after the first start nor
    # after the second.
    add_expert(app)
    row_id = add_transfer(app, due=timedelta(days=3))
    due = load_transfer(app, row_id).scheduled_transfer_at
    first_day = due - timedelta(days=2, minutes=1)
    engine = get_engine(app)

    def check(now: datetime) -> int:
        return queue_upcoming_notices(engine, now=now, deadline=time.monotonic() + 30).queued

    assert check(first_day) == 0
    assert check(first_day + timedelta(days=1, minutes=2, seconds=35)) == 1
    assert check(first_day + timedelta(days=2)) == 0  # once only
    [notice] = outbox_rows(app)
    assert notice.dedup_key == f"upcoming_payout:{row_id}"


def test_notified_at_is_set_only_together_with_the_notice(
    app: Flask
) -> None:
    add_expert(app)
    row_id = add_transfer(app, due=timedelta(hours=36))

    with refusing(app, "INSERT", "notifications"):  # the notice cannot be queued
        response = app.test_client().post("/api/cron/check-upcoming-payouts",
                                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 500
    assert load_transfer(app, row_id).notified_at is None
    assert run(app, "check-upcoming-payouts")["queued"] == 1
    assert load_transfer(app, row_id).notified_at is not None


@dataclasses.dataclass
class Smtp:
    port: int
    handler: RecordingHandler
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname=HOST, port=self.port,
                                     ready_timeout=5.0)
        self.controller.start()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    server = Smtp(port=free_port(), handler=RecordingHandler())
    yield server
    if server.controller is not None:
        server.controller.stop()


def test_smtp_down_then_back_loses_nothing_and_sends_nothing_twice(
    make_app: AppFactory, env: dict[str, str], smtp: Smtp
) -> None:
    app = make_app({**env, "NOTIFIER": "smtp", "SMTP_URL": f"smtp://{HOST}:{smtp.port}",
                    "MAIL_FROM": MAIL_FROM, "SMTP_TIMEOUT": "2"})
    add_expert(app, "exp_1", email="ana@example.com", first_name="Ana")
    row_id = add_transfer(app, amount=123450)

    paid = run(app)  # the server is down
    assert paid["paid"] == 1
    assert paid["notifications"] == {"delivered": 0, "retrying": 1, "failed": 0}
    [notice] = outbox_rows(app)
    assert (notice.status, notice.attempts, notice.last_error_code) == (
        "PENDING", 1, "connection_failed")
    assert notice.sent_at is None
    wait = notice.next_attempt_at - utcnow()
    assert timedelta(seconds=50) < wait <= timedelta(minutes=1)
    # Not due yet: the daily maintenance does not hammer the server either.
    assert run(app, "process-tasks")["notifications_delivered"] == 0

    smtp.start()
    make_all_due(app)
    first = run(app, "process-tasks")
    second = run(app, "process-tasks")

    assert (first["notifications_delivered"], second["notifications_delivered"]) == (1, 0)
    [message] = smtp.handler.messages()
    assert message["To"] == "ana@example.com"
    assert message["From"] == MAIL_FROM
    assert message["Subject"]
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "€1,234.50" in text.get_content()
    assert "Hello Ana," in text.get_content()
    assert f"Reference: {row_id}" in text.get_content()
    assert "€1,234.50" in html.get_content()
    [notice] = outbox_rows(app)
    assert (notice.status, notice.attempts, notice.last_error_code) == ("SENT", 2, None)
    assert notice.sent_at is not None


def test_retryable_failures_retry_until_the_limit(make_app: AppFactory, env: dict[str, str]
                                                  ) -> None:
    app = make_app({**env, "NOTIFIER_MAX_ATTEMPTS": "3"})
    retry = DeliveryError("temporarily refused", code="temporary_rejection", retryable=True)
    channel = Flaky([retry, RuntimeError("surprise"), retry])
    use_channel(app, channel)
    add_expert(app)
    add_transfer(app)

    assert run(app)["notifications"] == {"delivered": 0, "retrying": 1, "failed": 0}
    [notice] = outbox_rows(app)
    first_wait = notice.next_attempt_at - utcnow()
    make_all_due(app)
    assert run(app, "process-tasks")["notifications_retrying"] == 1
    [notice] = outbox_rows(app)
    assert (notice.attempts, notice.last_error_code) == (2, "unexpected")
    # The wait doubles.
    assert notice.next_attempt_at - utcnow() > first_wait + timedelta(seconds=50)
    make_all_due(app)
    assert run(app, "process-tasks")["notifications_failed"] == 1
    [notice] = outbox_rows(app)
    assert (notice.status, notice.attempts) == ("FAILED", 3)
    make_all_due(app)
    assert run(app, "process-tasks")["notifications_delivered"] == 0
    assert channel.sent == []


def test_one_run_tries_each_notice_once_however_long_it_takes(app: Flask) -> None:
    # A mail server that fails every send: within one run, even with no backoff at all, a
    # notice is not tried again, so a slow outage cannot use up its attempts in minutes.
    refused = DeliveryError("temporarily refused", code="temporary_rejection", retryable=True)
    channel = Flaky([refused] * 100)
    add_expert(app)
    transfer_ids = [add_transfer(app) for _ in range(6)]
    with get_sessions(app).begin() as session:
        for transfer_id in transfer_ids:
            outbox.queue_notice(session.connection(), kind=outbox.PAYOUT_SENT,
                                transfer_id=transfer_id, recipient="ana@example.com",
                                payload={}, now=utcnow())

    report = outbox.deliver_pending(get_engine(app), channel, sender_id="run1", limit=100,
                                    deadline=time.monotonic() + 30, max_attempts=5,
                                    concurrency=2, backoff=timedelta(0))

    assert (report.attempted, report.retrying, report.failed) == (6, 6, 0)
    assert {(n.status, n.attempts) for n in outbox_rows(app)} == {("PENDING", 1)}
    assert len(channel.failures) == 100 - 6


def test_a_permanent_failure_is_not_retried(app: Flask) -> None:
    channel = Flaky([DeliveryError("no such user", code="permanent_rejection",
                                   retryable=False)])
    use_channel(app, channel)
    add_expert(app)
    add_transfer(app)
    assert run(app)["notifications"] == {"delivered": 0, "retrying": 0, "failed": 1}
    [notice] = outbox_rows(app)
    assert (notice.status, notice.last_error_code) == ("FAILED", "permanent_rejection")


def test_a_sender_that_died_mid_send_is_released_and_retried(app: Flask) -> None:
    channel = Flaky([])
    use_channel(app, channel)
    now = utcnow()
    with get_sessions(app).begin() as session:
        session.add(Notification(
            dedup_key="payout_sent:7", kind="payout_sent", recipient="ana@example.com",
            payload={"first_name": "Ana", "amount": 100, "currency": "eur",
                     "sent_date": "2025-01-01", "reference": "7"},
            status="SENDING", attempts=0, claimed_by="deadrun",
            claimed_at=now - timedelta(hours=1), next_attempt_at=now, created_at=now,
            updated_at=now))
    result = run(app, "process-tasks")
    assert (result["notifications_released"], result["notifications_delivered"]) == (1, 1)
    assert [n.dedup_key for n in channel.sent] == ["payout_sent:7"]


def test_each_run_sends_at_most_its_share(make_app: AppFactory, env: dict[str, str]) -> None:
    app = make_app({**env, "NOTIFIER_MAX_PER_RUN": "2"})
    channel = Flaky([])
    use_channel(app, channel)
    add_expert(app)
    for _ in range(5):
        add_transfer(app)
    assert run(app)["notifications"]["delivered"] == 2
    assert outbox.pending_count(services(app).engine) == 3
    assert run(app, "process-tasks")["notifications_delivered"] == 2
    assert run(app, "process-tasks")["notifications_delivered"] == 1
    assert len({n.dedup_key for n in channel.sent}) == 5
