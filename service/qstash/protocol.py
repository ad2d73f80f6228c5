from __future__ import annotations

RECEIVER_PATH = "/api/qstash"
TARGET_HEADER = "X-Qstash-Target-Url"  # forwarded by schedules as Upstash-Forward-X-Qstash-...
JOB_PATH_PREFIX = "/api/cron/"
