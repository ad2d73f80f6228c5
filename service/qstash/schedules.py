from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..runs.jobs import Job
from ..settings import Settings
from .messages import CONTENT_TYPE, job_message
from .protocol import TARGET_HEADER

SCHEDULE_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
CRON_TZ_RE = re.compile(r"^CRON_TZ=(\S+)\s+(.*)$")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
Action = Literal["create", "update", "delete", "unchanged"]


class ScheduleConfigError(Exception):
    """A job's schedule (or its override) is invalid; the message names the job and the fix."""


@dataclass(frozen=True, kw_only=True)
class DesiredSchedule:
    """What one job's QStash schedule must look like, exactly as the API stores it."""

    schedule_id: str
    job: str
    destination: str
    cron: str
    body: str
    headers: Mapping[str, tuple[str, ...]]  # canonical names, forwarded and Content-Type
    method: str
    retries: int
    timeout: int  # seconds
    label: str

    @property
    def target(self) -> str:
        return self.headers[TARGET_HEADER][0]


@dataclass(frozen=True, kw_only=True)
class RemoteSchedule:
    """A schedule as QStash reports it, normalised for comparison."""

    schedule_id: str
    destination: str
    cron: str
    body: str | None
    headers: Mapping[str, tuple[str, ...]]
    method: str
    retries: int
    timeout: int | None
    label: str | None
    paused: bool = False
    created_at: int | None = None  # ms
    next_run: int | None = None  # ms
    last_run: int | None = None  # ms
    last_states: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "schedule_id": self.schedule_id,
            "cron": self.cron,
            "paused": self.paused,
            "next_run": _iso(self.next_run),
            "last_run": _iso(self.last_run),
            "last_states": dict(self.last_states),
        }


@dataclass(frozen=True, kw_only=True)
class Change:
    field: str
    remote: Any
    desired: Any


@dataclass(frozen=True, kw_only=True)
class PlanItem:
    action: Action
    schedule_id: str
    job: str | None
    desired: DesiredSchedule | None = None
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Plan:
    items: tuple[PlanItem, ...]
    foreign: tuple[RemoteSchedule, ...]

    def of(self, action: Action) -> list[PlanItem]:
        return [item for item in self.items if item.action == action]

    @property
    def empty(self) -> bool:
        return all(item.action == "unchanged" for item in self.items)


def schedule_prefix(settings: Settings) -> str:
    """Return the prefix of every schedule id this service (in this environment) owns."""
    return f"{settings.service_name}.{settings.app_env}."


def canonical_header(name: str) -> str:
    """Canonicalise a header name the way QStash stores it (`x-foo-bar` → `X-Foo-Bar`)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.strip().split("-"))


def normalise_cron(cron: str) -> str:
    return " ".join(cron.split())


def validate_cron(cron: str) -> str | None:
    """Return why a cron expression is not one QStash accepts, or None when it is valid."""
    expression = normalise_cron(cron)
    match = CRON_TZ_RE.match(expression)
    if match:
        zone, expression = match.groups()
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"unknown time zone {zone!r} in CRON_TZ (use an IANA name like Europe/Lisbon)"
    elif expression.startswith(("CRON_TZ", "TZ=")):
        return "write the zone as 'CRON_TZ=<IANA zone> ' followed by five fields"
    fields = expression.split(" ")
    if len(fields) != 5:
        return f"expected 5 fields (minute hour day month weekday), got {len(fields)}"
    if not croniter.is_valid(expression):
        return "not a valid cron expression"
    return None


def _firings(cron: str, start: datetime, count: int) -> list[datetime]:
    """The next `count` times a cron expression (with an optional CRON_TZ) fires after start."""
    expression = normalise_cron(cron)
    zone: Any = UTC
    match = CRON_TZ_RE.match(expression)
    if match:
        zone, expression = ZoneInfo(match.group(1)), match.group(2)
    it = croniter(expression, start.astimezone(zone))
    return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]


def cron_period(cron: str, *, now: datetime | None = None) -> timedelta:
    """Return the longest gap between the next few firings of a cron expression."""
    times = _firings(cron, now or datetime.now(UTC), 6)
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def firing_after(cron: str, since: datetime, *, count: int = 1) -> datetime:
    """Return the `count`-th time a cron expression fires after `since`, in UTC."""
    return _firings(cron, since, count)[-1]


def job_overrides(settings: Settings, jobs: Mapping[str, Job]) -> dict[str, dict[str, str]]:
    """Group the JOB_<NAME>_CRON / JOB_<NAME>_ENABLED variables by job, refusing unknown ones."""
    by_var = {name.upper().replace("-", "_"): name for name in jobs}
    overrides: dict[str, dict[str, str]] = {}
    for variable, value in sorted(settings.job_env.items()):
        for suffix in ("_CRON", "_ENABLED"):
            key = variable[len("JOB_"):-len(suffix)] if variable.endswith(suffix) else None
            if key in by_var:
                overrides.setdefault(by_var[key], {})[suffix[1:].lower()] = value
                break
        else:
            known = ", ".join(f"JOB_{k}_CRON" for k in sorted(by_var))
            raise ScheduleConfigError(
                f"{variable} matches no job; per-job overrides are named like {known} "
                "(or _ENABLED)"
            )
    return overrides


def desired_schedules(settings: Settings, jobs: Mapping[str, Job]) -> list[DesiredSchedule]:
    """Return the schedules the jobs declare, with overrides applied and every cron validated."""
    if settings.app_url is None:
        raise ScheduleConfigError("APP_URL is missing: schedules need the public URL to call")
    overrides = job_overrides(settings, jobs)
    desired = []
    for job in jobs.values():
        override = overrides.get(job.name, {})
        enabled = override.get("enabled", "true").strip().lower()
        variable = f"JOB_{job.name.upper().replace('-', '_')}"
        if enabled not in TRUE | FALSE:
            raise ScheduleConfigError(f"{variable}_ENABLED={enabled!r}: use true or false")
        if enabled in FALSE:
            continue
        cron = normalise_cron(override.get("cron", job.cron))
        problem = validate_cron(cron)
        if problem:
            source = f"{variable}_CRON" if "cron" in override else f"the cron of {job.name}"
            raise ScheduleConfigError(f"job {job.name}: {source} {cron!r} is invalid: {problem}")
        schedule_id = schedule_prefix(settings) + job.name
        if not SCHEDULE_ID_RE.fullmatch(schedule_id):
            raise ScheduleConfigError(f"schedule id {schedule_id!r} has forbidden characters")
        message = job_message(job, settings.app_url)
        desired.append(DesiredSchedule(
            schedule_id=schedule_id,
            job=job.name,
            destination=message.url,
            cron=cron,
            body=message.body,
            headers={**{name: (value,) for name, value in message.headers.items()},
                     "Content-Type": (CONTENT_TYPE,)},
            method="POST",
            retries=message.retries,
            timeout=message.timeout,
            label=f"{settings.service_name}-{settings.app_env}",
        ))
    return desired


def remote_from_sdk(schedule: Any) -> RemoteSchedule:
    """Normalise a qstash SDK `Schedule` into a RemoteSchedule."""
    body = schedule.body
    if body is None and schedule.body_base64:
        try:
            body = base64.b64decode(schedule.body_base64).decode()
        except (binascii.Error, UnicodeDecodeError):
            body = schedule.body_base64
    headers = {
        canonical_header(name): tuple(values if isinstance(values, list) else [values])
        for name, values in (schedule.headers or {}).items()
    }
    states = {message: getattr(state, "value", str(state))
              for message, state in (schedule.last_schedule_states or {}).items()}
    return RemoteSchedule(
        schedule_id=schedule.schedule_id,
        destination=schedule.destination,
        cron=normalise_cron(schedule.cron),
        body=body or None,
        headers=headers,
        method=(schedule.method or "POST").upper(),
        retries=schedule.retries,
        timeout=schedule.timeout,
        label=schedule.label,
        paused=bool(schedule.paused),
        created_at=schedule.created_at,
        next_run=schedule.next_schedule_time,
        last_run=schedule.last_schedule_time,
        last_states=states,
    )


def differences(desired: DesiredSchedule, remote: RemoteSchedule) -> tuple[Change, ...]:
    """Compare every field the service sets, the way QStash normalises them."""
    changes = []
    pairs: list[tuple[str, Any, Any]] = [
        ("destination", remote.destination, desired.destination),
        ("cron", remote.cron, desired.cron),
        ("body", remote.body, desired.body),
        ("method", remote.method, desired.method),
        ("retries", remote.retries, desired.retries),
        ("headers", dict(remote.headers), dict(desired.headers)),
    ]
    # The unit of `timeout` in QStash's schedule JSON is not documented: accept seconds or ms.
    if remote.timeout not in (desired.timeout, desired.timeout * 1000):
        pairs.append(("timeout", remote.timeout, desired.timeout))
    # qstash-py reads only the deprecated `label` field; a server that reports `labels`
    # instead leaves it empty, which must not look like drift on every run.
    if remote.label is not None and remote.label != desired.label:
        pairs.append(("label", remote.label, desired.label))
    for name, have, want in pairs:
        if have != want:
            changes.append(Change(field=name, remote=have, desired=want))
    return tuple(changes)


def plan(
    desired: Sequence[DesiredSchedule], remote: Iterable[RemoteSchedule], *, prefix: str
) -> Plan:
    """Compute what to create, update and delete so QStash holds exactly the desired schedules.

    Only schedules whose id starts with `prefix` are ours; every other one is foreign and is
    never touched.
    """
    remote_by_id: dict[str, RemoteSchedule] = {}
    foreign: list[RemoteSchedule] = []
    for schedule in remote:
        if schedule.schedule_id.startswith(prefix):
            remote_by_id[schedule.schedule_id] = schedule
        else:
            foreign.append(schedule)
    items: list[PlanItem] = []
    for want in desired:
        have = remote_by_id.pop(want.schedule_id, None)
        if have is None:
            items.append(PlanItem(action="create", schedule_id=want.schedule_id, job=want.job,
                                  desired=want))
            continue
        changes = differences(want, have)
        items.append(PlanItem(action="update" if changes else "unchanged",
                              schedule_id=want.schedule_id, job=want.job, desired=want,
                              changes=changes))
    for stale in sorted(remote_by_id):
        items.append(PlanItem(action="delete", schedule_id=stale,
                              job=stale[len(prefix):] or None))
    return Plan(items=tuple(items), foreign=tuple(foreign))


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class ScheduleClient(Protocol):
    def list_schedules(self) -> list[RemoteSchedule]: ...
    def upsert_schedule(self, schedule: DesiredSchedule) -> str: ...
    def delete_schedule(self, schedule_id: str) -> None: ...


def compute_plan(
    client: ScheduleClient, settings: Settings, jobs: Mapping[str, Job]
) -> tuple[Plan, list[RemoteSchedule]]:
    """Validate the declared schedules, list the remote ones once, and plan the difference."""
    desired = desired_schedules(settings, jobs)  # before any API call: bad config changes nothing
    remote = client.list_schedules()
    return plan(desired, remote, prefix=schedule_prefix(settings)), remote


def apply_plan(client: ScheduleClient, plan: Plan) -> list[PlanItem]:
    """Delete stale owned schedules, then upsert what is created or changed; return what ran.

    Deletes go first: they are schedules of jobs this code no longer has, so nothing is lost,
    and on an account at its schedule quota they make room for the new ones.
    """
    applied = []
    for item in plan.of("delete"):
        client.delete_schedule(item.schedule_id)
        applied.append(item)
    for item in plan.items:
        if item.action in ("create", "update") and item.desired is not None:
            client.upsert_schedule(item.desired)
            applied.append(item)
    return applied
