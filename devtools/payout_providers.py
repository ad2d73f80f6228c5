from __future__ import annotations

import threading
import time

from service.payouts.provider import (
    PaymentState,
    TransferRequest,
    TransferResult,
    TransientProviderError,
)
from service.payouts.simulated import simulated_transfer_id


class LeanProvider:
    """The simulated provider's behaviour without its journal: sleeps, then answers."""

    name = "lean"

    def __init__(self, *, latency: float) -> None:
        self.latency = latency
        self.calls = 0
        self._lock = threading.Lock()

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        with self._lock:
            self.calls += 1
        time.sleep(self.latency)
        return TransferResult(provider_transfer_id=simulated_transfer_id(request.idempotency_key),
                              amount=request.amount, currency=request.currency)

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        return None

    def payment_state(self, payment_id: str) -> PaymentState:
        return PaymentState(payment_id=payment_id, refunded=False, disputed=False)


class ThrottledProvider(LeanProvider):
    """The lean provider behind Stripe's kind of limit: a bucket of `limit` tokens, refilled at
    `limit` per second; a call finding it empty is answered 429 at once."""

    name = "throttled"

    def __init__(self, *, latency: float, limit: float) -> None:
        super().__init__(latency=latency)
        self.limit = limit
        self.refused = 0
        self._tokens = limit
        self._refilled = time.monotonic()

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.limit, self._tokens + (now - self._refilled) * self.limit)
            self._refilled = now
            if self._tokens < 1:
                self.refused += 1
                raise TransientProviderError("Request rate limit exceeded", code="rate_limited",
                                             http_status=429)
            self._tokens -= 1
        return super().create_transfer(request)
