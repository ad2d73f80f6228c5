from __future__ import annotations

import math
from dataclasses import dataclass

import requests

MAX_BACKOFF = 86400.0
USER_AGENT = "Upstash-QStash"


@dataclass(frozen=True, kw_only=True)
class DeliveryRequest:
    """A snapshot of one delivery attempt, taken under the lock and sent without it."""

    message_id: str
    schedule_id: str | None
    url: str
    method: str
    headers: dict[str, list[str]]
    body: bytes
    retried: int
    caller_ip: str
    timeout: float


@dataclass(frozen=True, kw_only=True)
class DeliveryResponse:
    """What a destination answered; `status` is None when the request itself failed."""

    status: int | None
    headers: dict[str, list[str]]
    body: bytes
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def non_retryable(self) -> bool:
        values = self.headers.get(_header_key(self.headers, "Upstash-NonRetryable-Error"), [])
        return self.status == 489 and any(v.strip().lower() == "true" for v in values)

    def header(self, name: str) -> str | None:
        values = self.headers.get(_header_key(self.headers, name))
        return values[0] if values else None


def default_backoff(retried: int) -> float:
    """Return QStash's documented delay before the retry number `retried` (1 for the first)."""
    try:
        return min(MAX_BACKOFF, math.exp(2.5 * retried))
    except OverflowError:
        return MAX_BACKOFF


def delivery_headers(delivery: DeliveryRequest, *, signature: str) -> dict[str, str]:
    """Return the headers QStash sends to a destination for this attempt."""
    headers = {name: ", ".join(values) for name, values in delivery.headers.items()}
    # Set last so that a forwarded header cannot override what QStash itself sends.
    headers.update(
        {
            "Upstash-Message-Id": delivery.message_id,
            "Upstash-Retried": str(delivery.retried),
            "Upstash-Caller-Ip": delivery.caller_ip,
            "User-Agent": USER_AGENT,
            "Upstash-Signature": signature,
        }
    )
    if delivery.schedule_id is not None:
        headers["Upstash-Schedule-Id"] = delivery.schedule_id
    return headers


def send(delivery: DeliveryRequest, *, signature: str) -> DeliveryResponse:
    """Make one HTTP request to the destination and report what came back."""
    try:
        with requests.Session() as session:
            # Proxy variables from the environment must not divert loopback deliveries.
            session.trust_env = False
            response = session.request(
                delivery.method,
                delivery.url,
                data=delivery.body,
                headers=delivery_headers(delivery, signature=signature),
                timeout=delivery.timeout,
                # QStash treats a redirect as a failed delivery instead of following it.
                allow_redirects=False,
            )
            with response:
                return DeliveryResponse(
                    status=response.status_code,
                    headers={k: [v] for k, v in response.headers.items()},
                    body=response.content,
                )
    except requests.RequestException as exc:
        return DeliveryResponse(status=None, headers={}, body=b"", error=str(exc))


def _header_key(headers: dict[str, list[str]], name: str) -> str:
    lowered = name.lower()
    return next((key for key in headers if key.lower() == lowered), name)
