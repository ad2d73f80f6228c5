from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import stripe

from devtools.payout_providers import ThrottledProvider
from devtools.stripe_local import StripeLocal, StripeLocalServer
from service.extensions import get_engine
from service.payouts.payrun import process_due_transfers
from service.payouts.policy import PayoutPolicy
from service.payouts.provider import (
    PaymentState,
    TransferRequest,
    TransferResult,
    TransientProviderError,
)
from service.payouts.ratelimit import (
    MAX_PAUSE,
    MAX_PAUSES_PER_CALL,
    RateLimitedProvider,
    RateLimiter,
    rate_limited,
)
from service.payouts.stripe_provider import StripePayoutProvider
from service.settings import Settings
from tests.helpers import AppFactory, add_expert, add_transfer, load_transfer, outbox_rows
from tests.payouts.helpers import run, stripe_env, transfer_posts

from .helpers import ACCOUNT


class FakeTime:
    """A clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_calls_are_spaced_by_the_rate() -> None:
    fake = FakeTime()
    limiter = RateLimiter(20, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        limiter.acquire()
    assert fake.sleeps == [0.05] * 4
    # Time spent elsewhere counts: a call after a quiet spell goes at once.
    fake.now += 1.0
    assert limiter.acquire() == 0.0


def test_a_burst_lets_that_many_calls_start_together() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10, burst=3, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        limiter.acquire()
    assert fake.sleeps == [0.1, 0.1]


def test_a_pause_holds_back_every_call_then_they_resume_spaced() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    limiter.pause(2.0)
    limiter.pause(0.5)  # a shorter pause asked meanwhile does not shorten it
    started = fake.now
    limiter.acquire()
    limiter.acquire()
    assert fake.now - started == pytest.approx(2.1)


def test_a_call_waiting_for_its_turn_when_a_pause_begins_waits_for_the_pause() -> None:
    limiter = RateLimiter(2)  # turns half a second apart
    limiter.acquire()
    waited: list[float] = []
    waiter = threading.Thread(target=lambda: waited.append(limiter.acquire()))
    waiter.start()
    time.sleep(0.1)
    limiter.pause(1.0)  # the waiter's turn (0.5 s) falls inside the pause
    waiter.join()
    assert waited[0] >= 1.0


def test_threads_sharing_a_limiter_never_exceed_its_rate() -> None:
    limiter = RateLimiter(50)
    starts: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            limiter.acquire()
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(8)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 80 calls at 50 per second, the first at once: the last no sooner than 79 turns later.
    # (Only a lower bound: on a busy machine a thread may note its start late, never early.)
    assert len(starts) == 80
    assert max(starts) - began >= 79 / 50 - 0.01


class Refusing:
    """A provider that answers 429 to its first `refusals` calls, then pays."""

    name = "refusing"

    def __init__(self, refusals: int, *, retry_after: float | None = None) -> None:
        self.refusals = refusals
        self.retry_after = retry_after
        self.calls = 0

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        self.calls += 1
        if self.calls <= self.refusals:
            raise TransientProviderError("slow down", code="rate_limited", http_status=429,
                                         retry_after=self.retry_after)
        return TransferResult(provider_transfer_id="tr_1", amount=request.amount,
                              currency=request.currency)

    def find_transfer(self, *, transfer_id: str, transfer_group: str) -> TransferResult | None:
        return None

    def payment_state(self, payment_id: str) -> PaymentState:
        return PaymentState(payment_id=payment_id, refunded=False, disputed=False)


def limited(provider: Refusing, fake: FakeTime) -> RateLimitedProvider:
    return RateLimitedProvider(provider, RateLimiter(1000, clock=fake.clock, sleep=fake.sleep))


def test_a_429_pauses_with_a_short_backoff_and_sends_the_call_again(
    make_request: Callable[..., TransferRequest],
) -> None:
    fake = FakeTime()
    provider = limited(Refusing(3), fake)
    assert provider.create_transfer(make_request()).provider_transfer_id == "tr_1"
    assert provider.pauses == 3
    assert [s for s in fake.sleeps if s > 0.01] == [1.0, 2.0, 4.0]


def test_retry_after_is_honoured_up_to_the_longest_pause(
    make_request: Callable[..., TransferRequest],
) -> None:
    fake = FakeTime()
    limited(Refusing(1, retry_after=3.0), fake).create_transfer(make_request())
    assert [s for s in fake.sleeps if s > 0.01] == [3.0]
    fake = FakeTime()
    limited(Refusing(1, retry_after=3600.0), fake).create_transfer(make_request())
    assert [s for s in fake.sleeps if s > 0.01] == [MAX_PAUSE]


def test_a_call_refused_after_every_pause_fails_as_a_transient_error(
    make_request: Callable[..., TransferRequest],
) -> None:
    fake = FakeTime()
    provider = Refusing(MAX_PAUSES_PER_CALL + 1)
    with pytest.raises(TransientProviderError) as caught:
        limited(provider, fake).create_transfer(make_request())
    assert caught.value.code == "rate_limited"
    assert provider.calls == MAX_PAUSES_PER_CALL + 1


def test_other_errors_are_not_retried(make_request: Callable[..., TransferRequest]) -> None:
    class Failing(Refusing):
        def create_transfer(self, request: TransferRequest) -> TransferResult:
            self.calls += 1
            raise TransientProviderError("busy", code="provider_unavailable",
                                         outcome_unknown=True)

    provider = Failing(0)
    with pytest.raises(TransientProviderError):
        rate_limited(provider, None).create_transfer(make_request())
    assert provider.calls == 1


def test_stripe_retry_after_is_read_from_the_429(provider: StripePayoutProvider) -> None:
    def translated(headers: dict[str, str]) -> float | None:
        error = stripe.RateLimitError("Too many requests", http_status=429, headers=headers)
        return provider._translate(error).retry_after

    assert translated({"Retry-After": "2"}) == 2.0
    assert translated({"retry-after": "0.5"}) == 0.5
    assert translated({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert translated({"Retry-After": "nan"}) is None
    assert translated({}) is None


def test_the_default_leaves_the_rest_of_the_platform_room() -> None:
    def rate(**env: str) -> int:
        return Settings.from_env(env).payout_max_requests_per_second

    # Stripe: 100 requests per second in live mode, 25 in test mode, for the whole account.
    assert rate(PAYOUT_PROVIDER="stripe", STRIPE_SECRET_KEY="sk_live_abc") == 20
    assert rate(PAYOUT_PROVIDER="stripe", STRIPE_SECRET_KEY="rk_live_abc") == 20
    assert rate(PAYOUT_PROVIDER="stripe", STRIPE_SECRET_KEY="sk_test_abc") == 10
    assert rate() == 10
    assert rate(PAYOUT_PROVIDER="stripe", STRIPE_SECRET_KEY="sk_live_abc",
                PAYOUT_MAX_REQUESTS_PER_SECOND="40") == 40
    assert PayoutPolicy.from_settings(Settings.from_env({})).max_requests_per_second == 10


def test_a_429_pauses_the_run_instead_of_backing_rows_off(
    make_app: AppFactory, env: dict[str, str], stripe_local: StripeLocal,
    stripe_server: StripeLocalServer,
) -> None:
    app = make_app(stripe_env(env, stripe_server))
    add_expert(app, stripe_account_id=ACCOUNT)
    ids = [add_transfer(app) for _ in range(3)]
    stripe_local.fail_next(429, times=2, method="POST")
    started = time.monotonic()
    result = run(app)
    assert time.monotonic() - started >= 1.0  # at least the first pause
    assert (result["paid"], result["retried"], result["failed"]) == (3, 0, 0)
    assert result["rate_limit_pauses"] == 2
    assert {load_transfer(app, i).status for i in ids} == {"COMPLETED"}
    assert {load_transfer(app, i).attempts for i in ids} == {1}
    # The refused requests were sent again with their own keys: one transfer per row.
    keys = [post["key"] for post in transfer_posts(stripe_local)]
    assert len(keys) == 5 and len(set(keys)) == 3
    assert len(stripe_local.transfers) == 3
    assert [n.kind for n in outbox_rows(app)] == ["payout_sent"] * 3


def test_a_run_at_the_providers_limit_draws_no_429(make_app: AppFactory,
                                                   env: dict[str, str]) -> None:
    app = make_app(env)
    add_expert(app)
    for _ in range(40):
        add_transfer(app)
    # 16 workers at 20 ms could make 800 calls a second; the provider takes 20.
    provider = ThrottledProvider(latency=0.02, limit=20)
    policy = PayoutPolicy(env="development", concurrency=16, max_requests_per_second=20)
    started = time.monotonic()
    report = process_due_transfers(get_engine(app), provider, policy, run_id="limited",
                                   deadline=time.monotonic() + 60)
    elapsed = time.monotonic() - started
    assert (report.paid, report.rate_limit_pauses, provider.refused) == (40, 0, 0)
    # 40 calls one turn apart (the first at once): at least 39 turns of 50 ms.
    assert elapsed >= 39 / 20 - 0.05


def test_without_the_limit_the_same_run_draws_429s_but_fails_no_row(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    app = make_app(env)
    add_expert(app)
    ids = [add_transfer(app, due=-timedelta(minutes=i + 1)) for i in range(40)]
    provider = ThrottledProvider(latency=0.02, limit=20)
    policy = PayoutPolicy(env="development", concurrency=16)  # no limit of its own
    report = process_due_transfers(get_engine(app), provider, policy, run_id="unlimited",
                                   deadline=time.monotonic() + 120)
    assert provider.refused > 0 and report.rate_limit_pauses == provider.refused
    assert (report.paid, report.retried, report.failed) == (40, 0, 0)
    assert {load_transfer(app, i).status for i in ids} == {"COMPLETED"}
