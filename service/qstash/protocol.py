from __future__ import annotations

import re

RECEIVER_PATH = "/api/qstash"
TARGET_HEADER = "X-Qstash-Target-Url"  # forwarded by schedules as Upstash-Forward-X-Qstash-...
JOB_PATH_PREFIX = "/api/cron/"

# The SDK says an API error's HTTP status only in its message ("... status: 503 ...").
_STATUS_RE = re.compile(r"status: (\d{3})")


def sdk_error_status(exc: Exception) -> int | None:
    """The HTTP status a QStash SDK error names in its message, if it names one."""
    match = _STATUS_RE.search(str(exc))
    return int(match.group(1)) if match else None
