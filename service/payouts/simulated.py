from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .provider import (
    PaymentState,
    PermanentProviderError,
    TransferRequest,
    TransferResult,
    TransientProviderError,
)


@dataclass(frozen=True, kw_only=True)
class SimulatedTransfer:
    """A transfer the simulated provider created, with the request that created it."""

    request: TransferRequest
    result: TransferResult


def simulated_transfer_id(idempotency_key: str) -> str:
    """Return the transfer id the simulated provider assigns to an idempotency key."""
    return "tr_sim_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


class SimulatedPayoutProvider:
    """Pay nobody: an in-memory, deterministic provider for local development and benchmarks."""

    name = "simulated"

    def __init__(
        self,
        *,
        latency: float = 0.0,
        failure_rate: float = 0.0,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, not {latency!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate!r}")
        self.latency = latency
        self.failure_rate = failure_rate
        self.seed = seed
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._by_key: dict[str, SimulatedTransfer] = {}
        # Every creation is appended, so a second transfer for one key could not go unnoticed.
        self._created: list[SimulatedTransfer] = []
        self._payments: dict[str, PaymentState] = {}

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        """Create the transfer, failing transiently at the configured rate; replay repeats."""
        key = request.idempotency_key
        with self._lock:
            attempt = self._calls.get(key, 0) + 1
            self._calls[key] = attempt
        if self.latency:
            self._sleep(self.latency)
        if self.fails(key, attempt):
            raise TransientProviderError(
                f"simulated outage on attempt {attempt}", code="provider_unavailable"
            )
        with self._lock:
            existing = self._by_key.get(key)
            if existing is None:
                result = TransferResult(
                    provider_transfer_id=simulated_transfer_id(key),
                    amount=request.amount,
                    currency=request.currency,
                )
                transfer = SimulatedTransfer(request=request, result=result)
                self._by_key[key] = transfer
                self._created.append(transfer)
                return result
        if existing.request != request:
            # Same behaviour as Stripe: a key is bound to the parameters it was first used with.
            raise PermanentProviderError(
                "idempotency key reused with different parameters", code="idempotency_conflict"
            )
        return existing.result

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        """Return the transfer made for transfer row `transfer_id` in `transfer_group`, if any."""
        with self._lock:
            for transfer in self._created:
                request = transfer.request
                if (
                    request.transfer_group == transfer_group
                    and request.metadata.get("transfer_id") == transfer_id
                ):
                    return transfer.result
        return None

    def payment_state(self, payment_id: str) -> PaymentState:
        """Report the state set with `set_payment_state`, or paid and undisputed."""
        with self._lock:
            state = self._payments.get(payment_id)
        return state or PaymentState(payment_id=payment_id, refunded=False, disputed=False)

    def set_payment_state(
        self, payment_id: str, *, refunded: bool = False, disputed: bool = False
    ) -> None:
        """Make `payment_state` report the payment as refunded and/or disputed."""
        with self._lock:
            self._payments[payment_id] = PaymentState(
                payment_id=payment_id, refunded=refunded, disputed=disputed
            )

    def fails(self, idempotency_key: str, attempt: int) -> bool:
        """Tell whether the given attempt for a key fails, the same way in every process."""
        if self.failure_rate <= 0.0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{idempotency_key}:{attempt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.failure_rate

    @property
    def calls_by_idempotency_key(self) -> dict[str, int]:
        """Count create_transfer calls per idempotency key, failed ones included."""
        with self._lock:
            return dict(self._calls)

    @property
    def transfers(self) -> list[SimulatedTransfer]:
        """List the transfers created, in creation order."""
        with self._lock:
            return list(self._created)
