from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ..qstash.protocol import JOB_PATH_PREFIX

Overlap = Literal["skip", "retry"]
Trigger = Literal["qstash", "admin", "cli"]
# A crashed worker's run and lease are taken over this long after the job's timeout.
LEASE_GRACE = timedelta(seconds=30)


class JobError(Exception):
    """A job failed; QStash retries the delivery unless `retryable` is false."""

    retryable = True

    def __init__(self, message: str, *, code: str = "job_failed") -> None:
        super().__init__(message)
        self.code = code


class PermanentJobError(JobError):
    """A job failed in a way no retry can fix; QStash is told not to retry."""

    retryable = False


@dataclass(frozen=True, kw_only=True)
class JobContext:
    job: Job
    run_id: str
    trigger: Trigger
    message_id: str | None
    retried: int
    payload: Mapping[str, Any]
    deadline: float  # time.monotonic() value after which no new work should start

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


Handler = Callable[[JobContext], Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Job:
    """A scheduled job: what QStash needs to call it and what runs when it is called."""

    name: str
    cron: str
    description: str
    handler: Handler
    retries: int = 3
    timeout: int = 300  # seconds; QStash cuts the delivery after this
    overlap: Overlap = "skip"

    @property
    def path(self) -> str:
        return JOB_PATH_PREFIX + self.name

    @property
    def lease_duration(self) -> timedelta:
        """How long a run may hold the job before a crash is assumed and it is taken over."""
        return timedelta(seconds=self.timeout) + min(LEASE_GRACE,
                                                     timedelta(seconds=self.timeout))


@dataclass(frozen=True, kw_only=True)
class Delivery:
    trigger: Trigger
    message_id: str | None = None
    schedule_id: str | None = None
    retried: int = 0
    payload: Mapping[str, Any] = field(default_factory=dict)
    token_id: str | None = None  # the `jti` of the request's verified QStash signature


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    job: str
    run_id: str
    status: str
    duplicate: bool
    result: Mapping[str, Any] | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "duplicate": self.duplicate,
            "result": self.result,
        }
        if self.reason:
            body["reason"] = self.reason
        return body


def registry(jobs: Iterable[Job]) -> dict[str, Job]:
    """Index jobs by name, refusing duplicate names."""
    found: dict[str, Job] = {}
    for job in jobs:
        if job.name in found:
            raise RuntimeError(f"two jobs are named {job.name!r}")
        found[job.name] = job
    return found
