from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

CACHE_SECONDS = 15.0


class HealthCache:
    """Keep the last report for a few seconds so frequent polling does not hammer QStash."""

    def __init__(self, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._expires = 0.0

    def get(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if self._value is None or self.clock() >= self._expires:
                self._value = compute()
                self._expires = self.clock() + self.ttl
            return self._value
