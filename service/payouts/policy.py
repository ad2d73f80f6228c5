from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from service.settings import Settings


@dataclass(frozen=True, kw_only=True)
class PayoutPolicy:
    """The settings the payout functions need, so they can run without an app."""

    env: str
    concurrency: int = 8
    max_attempts: int = 3
    retry_backoff: timedelta = timedelta(minutes=10)
    stale_after: timedelta = timedelta(minutes=20)
    payment_check_horizon: timedelta = timedelta(days=3)
    # Provider calls per second, shared by every thread of a run; None: no limit.
    max_requests_per_second: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PayoutPolicy:
        return cls(
            env=settings.app_env,
            concurrency=settings.payout_concurrency,
            max_attempts=settings.payout_max_attempts,
            retry_backoff=timedelta(seconds=settings.payout_retry_backoff_seconds),
            stale_after=timedelta(seconds=settings.payout_stale_after_seconds),
            payment_check_horizon=timedelta(days=settings.payout_payment_check_days),
            max_requests_per_second=settings.payout_max_requests_per_second,
        )
