from __future__ import annotations

import json
import time
from typing import Any

from service.signature import qstash_claims, sign_claims

APP_URL = "https://jobs.example.test"
RECEIVER_URL = APP_URL + "/api/qstash"
# The public dev-server key pair (protocol §7): not secrets.
CURRENT_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def mint(raw: bytes, /, *, url: str = RECEIVER_URL, key: str = CURRENT_KEY,
         now: float | None = None, **overrides: Any) -> str:
    """Mint a QStash delivery token; overrides replace claims (None removes one)."""
    claims = qstash_claims(url=url, body=raw, now=now)
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return sign_claims(claims, key)


def delivery_headers(
    body: bytes,
    *,
    target: str | None = "/api/cron/process-tasks",
    message_id: str | None = None,
    retried: int = 0,
    **mint_options: Any,
) -> dict[str, str]:
    headers = {
        "Upstash-Signature": mint(body, **mint_options),
        "Upstash-Message-Id": message_id or f"msg_{time.time_ns()}",
        "Upstash-Retried": str(retried),
        "Content-Type": "application/json",
        "User-Agent": "Upstash-QStash",
    }
    if target is not None:
        headers["X-Qstash-Target-Url"] = target
    return headers


def job_body(name: str, **extra: Any) -> bytes:
    return json.dumps({"job": name, **extra}, separators=(",", ":")).encode()
