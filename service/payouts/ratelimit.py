from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Final, TypeVar

from .pool import closer
from .provider import (
    PaymentState,
    PayoutProvider,
    TransferRequest,
    TransferResult,
    TransientProviderError,
)

log = logging.getLogger("eleva.payouts")
T = TypeVar("T")

# The provider's answer to a request over its rate limit (HTTP 429).
RATE_LIMITED: Final = "rate_limited"
# A 429 holds every call of the run back for the provider's Retry-After, or else 1, 2, 4, 8 and
# 8 seconds; a call still refused after that many pauses fails as any transient error does.
FIRST_PAUSE: Final = 1.0
MAX_PAUSE: Final = 8.0
MAX_PAUSES_PER_CALL: Final = 5


class RateLimiter:
    """Let calls start at most `rate` per second, across every thread that shares it.

    A token bucket of `burst` tokens, refilled at `rate` per second (kept as the time the next
    token is due, GCRA-style, so that each waiting thread sleeps once, until its own turn). One
    token, the default, spaces calls evenly: the provider's own bucket keeps its slack for the
    rest of the platform and for network jitter. `pause` holds back every call not yet started.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be above 0, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = float("-inf")  # when the bucket next holds a whole token
        self._resume = float("-inf")  # end of the current pause

    def acquire(self) -> float:
        """Wait for this call's turn; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                turn = max(now, self._resume, self._next - self._tolerance)
                self._next = max(self._next, turn) + self._interval
            if turn > now:
                self._sleep(turn - now)
                waited += turn - now
            with self._lock:
                if turn >= self._resume:
                    return waited
            # A pause began while this call waited for a turn inside it: take a turn after it.

    def pause(self, seconds: float) -> None:
        """Hold back every call not yet started for `seconds` from now."""
        with self._lock:
            resume = self._clock() + seconds
            if resume > self._resume:
                self._resume = resume
                # Calls resume one turn apart, not all at once.
                self._next = max(self._next, resume)


class RateLimitedProvider:
    """A payout provider whose calls share one RateLimiter; a 429 pauses them all, then retries.

    A request refused for the rate limit was not carried out, so sending it again, with the
    same idempotency key, is safe.
    """

    def __init__(self, provider: PayoutProvider, limiter: RateLimiter) -> None:
        self.name = provider.name
        self.limiter = limiter
        self.pauses = 0
        self._provider = provider
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._provider!r}, rate={self.limiter.rate})"

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        return self._call(partial(self._provider.create_transfer, request))

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        return self._call(partial(self._provider.find_transfer, transfer_id=transfer_id,
                                  transfer_group=transfer_group))

    def payment_state(self, payment_id: str) -> PaymentState:
        return self._call(partial(self._provider.payment_state, payment_id))

    def close(self) -> None:
        """Close the calling thread's connections of the wrapped provider, if it has any."""
        close = closer(self._provider)
        if close is not None:
            close()

    def _call(self, call: Callable[[], T]) -> T:
        pauses = 0
        while True:
            self.limiter.acquire()
            try:
                return call()
            except TransientProviderError as exc:
                if exc.code != RATE_LIMITED or pauses >= MAX_PAUSES_PER_CALL:
                    raise
                seconds = min(exc.retry_after if exc.retry_after is not None
                              else FIRST_PAUSE * 2**pauses, MAX_PAUSE)
                pauses += 1
                with self._lock:
                    self.pauses += 1
                self.limiter.pause(seconds)
                log.warning("the %s provider answered 429 (rate limited): every call of this "
                            "run waits %.1f s, then this one is sent again", self.name, seconds)


def rate_limited(provider: PayoutProvider, rate: float | None) -> RateLimitedProvider:
    """Return `provider` limited to `rate` calls per second (None: no limit, 429s still pause)."""
    return RateLimitedProvider(provider, RateLimiter(math.inf if rate is None else rate))
