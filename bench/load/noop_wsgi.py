"""The service with two load-test jobs registered, for gunicorn: `bench.load.noop_wsgi:app`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from blueprints import BLUEPRINTS
from service import create_app
from service.qstash.delivery import JobBlueprint
from service.runs.jobs import Job, JobContext

NOOP_JOB = "noop"
STORM_JOB = "storm-probe"


def noop(ctx: JobContext) -> Mapping[str, Any]:
    """Do nothing, so that a delivery costs only verification, the ledger and the lease."""
    return {}


def storm_probe(ctx: JobContext) -> Mapping[str, Any]:
    """Leave one line per execution in the payload's marker file, then hold the run a moment."""
    marker = ctx.payload.get("marker")
    if isinstance(marker, str) and marker:
        with open(marker, "a") as f:
            f.write(f"{ctx.run_id} {ctx.message_id}\n")
    # Hold the run open so that concurrent repeats meet it while it is still running.
    time.sleep(min(float(ctx.payload.get("sleep", 0)), 5.0))
    return {}


noop_bp = JobBlueprint(
    Job(name=NOOP_JOB, cron="*/5 * * * *", description="Load test: does nothing.",
        handler=noop, timeout=60),
    __name__,
)
storm_bp = JobBlueprint(
    Job(name=STORM_JOB, cron="*/5 * * * *",
        description="Load test: counts its executions in a marker file.",
        handler=storm_probe, timeout=60),
    __name__,
)

WITH_LOAD_JOBS = (*BLUEPRINTS, noop_bp, storm_bp)
app = create_app(blueprints=WITH_LOAD_JOBS)
