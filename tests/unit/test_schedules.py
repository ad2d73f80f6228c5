from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from blueprints import BLUEPRINTS
from service.qstash.delivery import job_registry
from service.qstash.schedules import (
    DesiredSchedule,
    RemoteSchedule,
    ScheduleConfigError,
    apply_plan,
    canonical_header,
    cron_period,
    desired_schedules,
    firing_after,
    plan,
    validate_cron,
)
from service.settings import Settings

JOBS = job_registry(BLUEPRINTS)
PREFIX = "eleva-jobs.production."
BASE_ENV = {"APP_URL": "https://jobs.example.com", "APP_ENV": "production"}


def desired(**env: str) -> list[DesiredSchedule]:
    return desired_schedules(Settings.from_env({**BASE_ENV, **env}), JOBS)


def as_remote(d: DesiredSchedule, **changes: object) -> RemoteSchedule:
    """What QStash would report back for a schedule created from d."""
    remote = RemoteSchedule(
        schedule_id=d.schedule_id, destination=d.destination, cron=d.cron, body=d.body,
        headers=dict(d.headers), method=d.method, retries=d.retries, timeout=d.timeout,
        label=d.label, created_at=1_700_000_000_000,
    )
    return dataclasses.replace(remote, **changes)  # type: ignore[arg-type]


def test_desired_schedules_describe_each_job() -> None:
    found = {d.job: d for d in desired()}
    assert set(found) == {"process-tasks", "process-expert-transfers", "check-upcoming-payouts"}
    d = found["process-expert-transfers"]
    assert d.schedule_id == "eleva-jobs.production.process-expert-transfers"
    assert d.destination == "https://jobs.example.com/api/qstash"
    assert d.cron == "0 */2 * * *"
    assert d.body == '{"job":"process-expert-transfers"}'
    assert d.headers == {"X-Qstash-Target-Url": ("/api/cron/process-expert-transfers",),
                         "Content-Type": ("application/json",)}
    assert (d.method, d.retries, d.timeout, d.label) == ("POST", 3, 900, "eleva-jobs-production")
    assert found["process-tasks"].cron == "0 4 * * *"
    assert found["check-upcoming-payouts"].cron == "0 12 * * *"


def test_cron_override_and_disabled_job() -> None:
    found = {d.job: d for d in desired(JOB_PROCESS_TASKS_CRON="CRON_TZ=Europe/Lisbon  0 5 * * *",
                                       JOB_CHECK_UPCOMING_PAYOUTS_ENABLED="false")}
    assert found["process-tasks"].cron == "CRON_TZ=Europe/Lisbon 0 5 * * *"
    assert "check-upcoming-payouts" not in found
    assert "process-expert-transfers" in found


@pytest.mark.parametrize(("env", "message"), [
    ({"JOB_PROCESS_TASKS_CRON": "0 4 * *"}, "JOB_PROCESS_TASKS_CRON '0 4 \\* \\*' is invalid"),
    ({"JOB_PROCESS_TASKS_CRON": "0 25 * * *"}, "not a valid cron"),
    ({"JOB_PROCESS_TASKS_CRON": "CRON_TZ=Mars/Base 0 4 * * *"}, "unknown time zone"),
    ({"JOB_PROCESS_TASKS_CRON": "@daily"}, "expected 5 fields"),
    ({"JOB_PROCESS_TASKS_CRON": "0 0 4 * * *"}, "expected 5 fields"),
    ({"JOB_PROCES_TASKS_CRON": "0 4 * * *"}, "JOB_PROCES_TASKS_CRON matches no job"),
    ({"JOB_PROCESS_TASKS_ENABLED": "maybe"}, "use true or false"),
])
def test_invalid_overrides_fail_naming_the_job(env: dict[str, str], message: str) -> None:
    with pytest.raises(ScheduleConfigError, match=message):
        desired(**env)


def test_desired_schedules_need_app_url() -> None:
    with pytest.raises(ScheduleConfigError, match="APP_URL"):
        desired_schedules(Settings.from_env({}), JOBS)


@pytest.mark.parametrize(("cron", "ok"), [
    ("0 4 * * *", True), ("*/15 9-17 * * 1-5", True), ("CRON_TZ=America/New_York 0 4 * * *", True),
    ("0 4 * * * *", False), ("61 * * * *", False), ("TZ=UTC 0 4 * * *", False),
    ("CRON_TZ=Nowhere/Land 0 4 * * *", False), ("", False),
])
def test_validate_cron(cron: str, ok: bool) -> None:
    assert (validate_cron(cron) is None) is ok


def test_firing_after_follows_the_schedule_not_a_fixed_period() -> None:
    # What the health report counts overdue from (service/health.py).
    # Weekdays 09:00-17:00, hourly: after Friday's 17:00 run, the next two firings are Monday's
    # 09:00 and 10:00, so the job is not overdue over the night or the weekend.
    friday = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    assert firing_after("0 9-17 * * 1-5", friday, count=2) == datetime(2026, 11, 30, 10, 0,
                                                                       tzinfo=UTC)
    # Weekdays at 04:00: after Monday's run, overdue from Wednesday 04:15, not days later.
    monday = datetime(2026, 11, 30, 4, 0, 5, tzinfo=UTC)
    assert firing_after("0 4 * * 1-5", monday, count=2) == datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    assert firing_after("CRON_TZ=America/New_York 0 12 * * *", monday) == datetime(
        2026, 11, 30, 17, 0, tzinfo=UTC)


def test_cron_period() -> None:
    now = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    assert cron_period("0 */2 * * *", now=now) == timedelta(hours=2)
    assert cron_period("0 12 * * *", now=now) == timedelta(days=1)
    assert cron_period("0 9 * * 1-5", now=now) == timedelta(days=3)  # over the weekend


def test_header_names_are_canonicalised_like_qstash() -> None:
    assert canonical_header("x-qstash-target-url") == "X-Qstash-Target-Url"
    assert canonical_header("CONTENT-TYPE") == "Content-Type"


def test_empty_account_creates_everything() -> None:
    result = plan(desired(), [], prefix=PREFIX)
    assert sorted(i.job or "" for i in result.of("create")) == sorted(JOBS)
    assert not result.empty


def test_identical_schedules_are_unchanged() -> None:
    want = desired()
    result = plan(want, [as_remote(d) for d in want], prefix=PREFIX)
    assert result.empty
    assert len(result.of("unchanged")) == 3


@pytest.mark.parametrize(("field", "value"), [
    ("destination", "https://old.example.com/api/qstash"),
    ("cron", "0 5 * * *"),
    ("body", '{"job":"other"}'),
    ("body", None),
    ("method", "GET"),
    ("retries", 5),
    ("timeout", 30),
    ("timeout", None),
    ("label", "someone-else"),
    ("headers", {"X-Qstash-Target-Url": ("/api/cron/other",),
                 "Content-Type": ("application/json",)}),
    ("headers", {"X-Qstash-Target-Url": ("/api/cron/process-tasks",)}),
    ("headers", {"X-Qstash-Target-Url": ("/api/cron/process-tasks",),
                 "Content-Type": ("text/plain",)}),
])
def test_each_field_difference_is_an_update(field: str, value: object) -> None:
    [want] = [d for d in desired() if d.job == "process-tasks"]
    result = plan([want], [as_remote(want, **{field: value})], prefix=PREFIX)
    [item] = result.items
    assert item.action == "update"
    assert [c.field for c in item.changes] == [field]
    assert item.changes[0].desired == (dict(want.headers) if field == "headers"
                                       else getattr(want, field))


def test_normalised_representations_are_not_drift() -> None:
    [want] = [d for d in desired() if d.job == "process-tasks"]
    remote = as_remote(want, timeout=want.timeout * 1000, label=None, cron="0 4 * * *",
                       headers={"Content-Type": ("application/json",),
                                "X-Qstash-Target-Url": ("/api/cron/process-tasks",)})
    assert plan([want], [remote], prefix=PREFIX).empty


def test_stale_owned_schedules_are_deleted_and_foreign_ones_untouched() -> None:
    want = desired(JOB_CHECK_UPCOMING_PAYOUTS_ENABLED="false")
    remote = [as_remote(d) for d in desired()]  # still holds the disabled job's schedule
    gone = dataclasses.replace(remote[0], schedule_id=PREFIX + "retired-job")
    foreign = [
        dataclasses.replace(remote[0], schedule_id="eleva-jobs.staging.process-tasks"),
        dataclasses.replace(remote[0], schedule_id="other-app.production.process-tasks"),
        dataclasses.replace(remote[0], schedule_id="eleva-jobs.production2.process-tasks"),
        dataclasses.replace(remote[0], schedule_id="scd_random"),
    ]
    result = plan(want, [*remote, gone, *foreign], prefix=PREFIX)
    assert sorted(i.schedule_id for i in result.of("delete")) == [
        PREFIX + "check-upcoming-payouts", PREFIX + "retired-job"]
    assert sorted(s.schedule_id for s in result.foreign) == sorted(f.schedule_id for f in foreign)
    assert len(result.of("unchanged")) == 2


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def list_schedules(self) -> list[RemoteSchedule]:
        raise AssertionError("apply_plan must not list")

    def upsert_schedule(self, schedule: DesiredSchedule) -> str:
        self.calls.append(("upsert", schedule.schedule_id))
        return schedule.schedule_id

    def delete_schedule(self, schedule_id: str) -> None:
        self.calls.append(("delete", schedule_id))


def test_apply_deletes_then_upserts_and_skips_unchanged() -> None:
    # Stale schedules go first, so that an account at its quota has room for the new ones.
    want = desired()
    remote = [as_remote(want[0]), as_remote(want[1], cron="1 1 * * *"),
              as_remote(want[0], schedule_id=PREFIX + "old")]
    client = RecordingClient()
    apply_plan(client, plan(want, remote, prefix=PREFIX))
    assert client.calls == [("delete", PREFIX + "old"), ("upsert", want[1].schedule_id),
                            ("upsert", want[2].schedule_id)]
