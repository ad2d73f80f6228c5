from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from blueprints import BLUEPRINTS
from service.qstash.delivery import JobBlueprint
from service.runs.jobs import Job, JobContext, JobError, PermanentJobError

# Every execution in this process, whatever its payload.
EXECUTIONS: list[str] = []


def probe(ctx: JobContext) -> Mapping[str, Any]:
    """Do what the payload asks, leaving a line in its marker file per execution."""
    EXECUTIONS.append(ctx.run_id)
    payload = ctx.payload
    marker = payload.get("marker")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{ctx.run_id} {ctx.trigger} {ctx.retried}\n")
    time.sleep(float(payload.get("sleep", 0)))
    action = payload.get("action", "ok")
    if action == "fail" or (action == "fail_first" and ctx.retried == 0):
        raise JobError("the probe was asked to fail")
    if action == "permanent":
        raise PermanentJobError("the probe was asked to fail for good", code="probe_refused")
    if action == "crash":
        raise RuntimeError(payload.get("message", "unexpected probe crash"))
    return {"echo": payload.get("echo"), "retried": ctx.retried}


probe_bp = JobBlueprint(
    Job(name="probe", cron="*/5 * * * *", description="Test probe.", handler=probe,
        timeout=60),
    __name__,
)
probe_retry_bp = JobBlueprint(
    Job(name="probe-retry", cron="*/5 * * * *", description="Test probe, retry on overlap.",
        handler=probe, timeout=60, overlap="retry"),
    __name__,
)

probe_short_bp = JobBlueprint(
    Job(name="probe-short", cron="*/5 * * * *", description="Test probe with a short timeout.",
        handler=probe, timeout=2),
    __name__,
)

# The service's blueprints with the probe jobs registered next to the real ones.
WITH_PROBES = (*BLUEPRINTS, probe_bp, probe_retry_bp, probe_short_bp)
