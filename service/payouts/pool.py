from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("eleva.payouts")
_Work = tuple[Future[Any], Callable[[], Any]]


class WorkerPool:
    """A fixed set of threads for provider and mail calls, each running `cleanup` when it ends.

    ThreadPoolExecutor has no per-thread teardown, and HTTP clients such as the Stripe SDK's
    keep one connection pool per thread: without it those sockets would leak with the threads.
    """

    def __init__(
        self, size: int, *, name: str, cleanup: Callable[[], None] | None = None
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._cleanup = cleanup
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("the pool is closed")
        future: Future[T] = Future()
        self._queue.put((future, fn))
        return future

    def close(self) -> None:
        """Let queued work finish, then stop and join every thread."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _work(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                future, fn = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = fn()
                except BaseException as exc:  # handed to the caller through the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            if self._cleanup is not None:
                try:
                    self._cleanup()
                except Exception:
                    log.exception("worker cleanup failed")


def closer(client: object) -> Callable[[], None] | None:
    """Return the client's per-thread close(), if it has one: a pool's `cleanup`."""
    close = getattr(client, "close", None)
    return close if callable(close) else None
