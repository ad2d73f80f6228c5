from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The public credentials of the official `qstash dev` server ("User 1"), so that code configured
# for it works unchanged against this one.
DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
DEV_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEV_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"


@dataclass(frozen=True, kw_only=True)
class LocalQStashConfig:
    """Settings of a local QStash-compatible server."""

    token: str = DEV_TOKEN
    current_signing_key: str = DEV_CURRENT_SIGNING_KEY
    next_signing_key: str = DEV_NEXT_SIGNING_KEY
    # "next" signs deliveries as QStash would right after a key roll.
    sign_with: Literal["current", "next"] = "current"
    # Multiplies the computed retry backoff; e.g. 0.01 turns 12 s into 0.12 s locally.
    backoff_scale: float = 1.0
    allow_remote_destinations: bool = False
    # Number of distinct schedules allowed; creating one more answers 412.
    schedule_quota: int | None = None
    delivery_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("token must not be empty")
        if self.sign_with not in ("current", "next"):
            raise ValueError(f"sign_with must be 'current' or 'next', not {self.sign_with!r}")
        if self.backoff_scale < 0:
            raise ValueError("backoff_scale must not be negative")
        if self.schedule_quota is not None and self.schedule_quota < 0:
            raise ValueError("schedule_quota must not be negative")
        if self.delivery_timeout <= 0:
            raise ValueError("delivery_timeout must be positive")
