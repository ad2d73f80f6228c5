from __future__ import annotations

import time
from typing import Any


def deliver_in_fresh_process(
    env: dict[str, str], body: bytes, headers: dict[str, str], start_at: float
) -> tuple[int, dict[str, Any]]:
    """Build the app in this process, wait for start_at, deliver once; return status and JSON."""
    from blueprints import BLUEPRINTS
    from service import create_app
    from tests import probe_jobs

    client = create_app(env, blueprints=(*BLUEPRINTS, probe_jobs.probe_bp,
                                         probe_jobs.probe_retry_bp)).test_client()
    time.sleep(max(0.0, start_at - time.time()))
    response = client.post("/api/qstash", data=body, headers=headers)
    return response.status_code, response.get_json()
