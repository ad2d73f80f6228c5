"""The service with BENCH_JOBS no-op jobs (default 1) for gunicorn: bench.peer.service_wsgi:app.

With one job, as shipped, concurrent deliveries find it busy and are recorded as skipped; with
as many jobs as connections, deliveries spread over them do the same work as the peer's: run a
task and store its outcome.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from blueprints import BLUEPRINTS
from service import create_app
from service.qstash.delivery import JobBlueprint
from service.runs.jobs import Job, JobContext


def noop(ctx: JobContext) -> Mapping[str, Any]:
    """Do nothing, like the peer's task."""
    return {}


JOBS = int(os.environ.get("BENCH_JOBS", "1"))
app = create_app(blueprints=(*BLUEPRINTS, *(
    JobBlueprint(Job(name=f"noop-{n}", cron="*/5 * * * *", description="Peer benchmark: no-op.",
                     handler=noop, timeout=60), __name__)
    for n in range(JOBS))))
if os.environ.get("BENCH_METRICS") == "off":  # the metrics off: bench.load.variants
    from bench.load.metrics_overhead import metrics_switch

    metrics_switch(app)(False)
