from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# The public credentials of the official `qstash dev` server ("User 1"), so that code configured
# for it works unchanged against this one.
DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
DEV_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEV_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


def client_settings(url: str) -> dict[str, str]:
    """Return the settings that point a client (the service, an SDK) at a local server."""
    return {
        "QSTASH_URL": url,
        "QSTASH_TOKEN": DEV_TOKEN,
        "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
        "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
    }


Plan = Literal["free", "payg"]
MB = 1024 * 1024
DAY = 86400


@dataclass(frozen=True, kw_only=True)
class PlanLimits:
    """The limits of one QStash plan that the local server enforces."""

    # The longest a destination may take to answer, in seconds; Upstash-Timeout only shortens it.
    delivery_timeout: float
    max_message_size: int
    max_delay: int
    schedule_quota: int | None


# Figures from the QStash pricing page (see docs/local-development.md).
PLANS: dict[Plan, PlanLimits] = {
    "free": PlanLimits(
        delivery_timeout=15 * 60.0, max_message_size=1 * MB, max_delay=7 * DAY, schedule_quota=10
    ),
    "payg": PlanLimits(
        delivery_timeout=2 * 3600.0,
        max_message_size=10 * MB,
        max_delay=365 * DAY,
        schedule_quota=1000,
    ),
}
FREE = PLANS["free"]


@dataclass(frozen=True, kw_only=True)
class LocalQStashConfig:
    """Settings of a local QStash-compatible server; limits default to the free plan's."""

    token: str = DEV_TOKEN
    current_signing_key: str = DEV_CURRENT_SIGNING_KEY
    next_signing_key: str = DEV_NEXT_SIGNING_KEY
    # "next" signs deliveries as QStash would right after a key roll.
    sign_with: Literal["current", "next"] = "current"
    # Multiplies the computed retry backoff; e.g. 0.01 turns 12 s into 0.12 s locally.
    backoff_scale: float = 1.0
    allow_remote_destinations: bool = False
    # Deliveries in flight at once; QStash itself delivers concurrently.
    concurrency: int = 16
    # Number of distinct schedules allowed; creating one more answers 412. None: no limit.
    schedule_quota: int | None = FREE.schedule_quota
    delivery_timeout: float = FREE.delivery_timeout
    max_message_size: int | None = FREE.max_message_size
    max_delay: int | None = FREE.max_delay

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("token must not be empty")
        if self.sign_with not in ("current", "next"):
            raise ValueError(f"sign_with must be 'current' or 'next', not {self.sign_with!r}")
        if self.backoff_scale < 0:
            raise ValueError("backoff_scale must not be negative")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.schedule_quota is not None and self.schedule_quota < 0:
            raise ValueError("schedule_quota must not be negative")
        if self.delivery_timeout <= 0:
            raise ValueError("delivery_timeout must be positive")
        if self.max_message_size is not None and self.max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        if self.max_delay is not None and self.max_delay < 0:
            raise ValueError("max_delay must not be negative")

    def with_plan(self, plan: Plan) -> LocalQStashConfig:
        """Return a copy enforcing the limits of `plan` ("free" or "payg")."""
        if plan not in PLANS:
            raise ValueError(f"plan must be one of {sorted(PLANS)}, not {plan!r}")
        limits = PLANS[plan]
        return replace(
            self,
            delivery_timeout=limits.delivery_timeout,
            max_message_size=limits.max_message_size,
            max_delay=limits.max_delay,
            schedule_quota=limits.schedule_quota,
        )
