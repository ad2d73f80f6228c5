from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from qstash import QStash

from devtools.qstash_local import (
    DEV_TOKEN,
    LocalQStash,
    LocalQStashConfig,
    serve,
    serve_wsgi,
)
from tests.qstash_local.helpers import FakeClock, Receiver, Stack


@pytest.fixture
def clock() -> FakeClock:
    # Two minutes in the past, so that tokens signed at a fired cron slot are neither
    # issued in the future nor expired for a verifier using the real clock.
    return FakeClock(time.time() - 120)


@pytest.fixture
def make_stack(clock: FakeClock) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**config: object) -> Stack:
        local = LocalQStash(LocalQStashConfig(**config), clock=clock)  # type: ignore[arg-type]
        server = serve(local)
        # No client-side retries: a test must see exactly the calls it makes.
        client = QStash(DEV_TOKEN, base_url=server.url, retry=False)
        stack = Stack(local=local, server=server, client=client, clock=clock)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.client.http._client.close()
        stack.server.shutdown()


@pytest.fixture
def qs(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recorder = Receiver()
    with serve_wsgi(recorder.app) as server:
        recorder.url = server.url
        yield recorder
