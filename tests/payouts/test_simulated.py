from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from service.payouts.provider import (
    PaymentState,
    PayoutProvider,
    PermanentProviderError,
    TransferResult,
    TransientProviderError,
)
from service.payouts.simulated import SimulatedPayoutProvider, simulated_transfer_id
from tests.payouts.helpers import MakeRequest


def test_provider_satisfies_the_protocol() -> None:
    as_protocol: PayoutProvider = SimulatedPayoutProvider()
    assert as_protocol.name == "simulated"


def test_transfer_ids_derive_from_the_idempotency_key(make_request: MakeRequest) -> None:
    request = make_request("42", idempotency_key="development:transfer:42")
    expected = "tr_sim_" + hashlib.sha256(b"development:transfer:42").hexdigest()[:24]

    result = SimulatedPayoutProvider().create_transfer(request)
    elsewhere = SimulatedPayoutProvider(seed=99).create_transfer(request)

    assert result == TransferResult(provider_transfer_id=expected, amount=8500, currency="eur")
    assert elsewhere == result
    assert simulated_transfer_id("development:transfer:42") == expected
    assert simulated_transfer_id("development:transfer:43") != expected


def test_a_repeat_returns_the_first_transfer(make_request: MakeRequest) -> None:
    provider = SimulatedPayoutProvider()

    first = provider.create_transfer(make_request("1"))
    second = provider.create_transfer(make_request("1"))
    other = provider.create_transfer(make_request("2"))

    assert first == second != other
    assert [t.result for t in provider.transfers] == [first, other]
    assert provider.calls_by_idempotency_key == {"test:transfer:1": 2, "test:transfer:2": 1}


def test_a_key_reused_with_other_parameters_is_refused(make_request: MakeRequest) -> None:
    provider = SimulatedPayoutProvider()
    provider.create_transfer(make_request("1", amount=100))

    with pytest.raises(PermanentProviderError) as raised:
        provider.create_transfer(make_request("1", amount=200))

    assert raised.value.code == "idempotency_conflict"
    assert [t.request.amount for t in provider.transfers] == [100]


def test_failures_follow_the_rate_and_are_transient(make_request: MakeRequest) -> None:
    provider = SimulatedPayoutProvider(failure_rate=0.3, seed=7)
    failures = 0
    for n in range(400):
        try:
            provider.create_transfer(make_request(str(n)))
        except TransientProviderError as error:
            assert error.retryable is True
            assert error.code == "provider_unavailable"
            failures += 1

    assert 80 <= failures <= 160
    assert len(provider.transfers) == 400 - failures


def test_failures_are_deterministic_for_a_seed(make_request: MakeRequest) -> None:
    def outcomes(seed: int) -> list[bool]:
        provider = SimulatedPayoutProvider(failure_rate=0.5, seed=seed)
        results = []
        for n in range(60):
            for _ in range(2):
                try:
                    provider.create_transfer(make_request(str(n)))
                    results.append(True)
                except TransientProviderError:
                    results.append(False)
        return results

    assert outcomes(1) == outcomes(1)
    assert outcomes(1) != outcomes(2)
    assert True in outcomes(1) and False in outcomes(1)


def test_retrying_a_failed_attempt_creates_exactly_one_transfer(
    make_request: MakeRequest,
) -> None:
    provider = SimulatedPayoutProvider(failure_rate=0.5, seed=3)
    key = "test:transfer:11"
    first_success = next(a for a in range(1, 50) if not provider.fails(key, a))
    assert first_success > 1, "seed 3 should fail the first attempt"

    for _ in range(first_success - 1):
        with pytest.raises(TransientProviderError):
            provider.create_transfer(make_request("11"))
    result = provider.create_transfer(make_request("11"))

    assert result.provider_transfer_id == simulated_transfer_id(key)
    assert len(provider.transfers) == 1
    assert provider.calls_by_idempotency_key == {key: first_success}


@pytest.mark.parametrize(("rate", "fails"), [(0.0, False), (1.0, True)])
def test_failure_rate_bounds(make_request: MakeRequest, rate: float, fails: bool) -> None:
    provider = SimulatedPayoutProvider(failure_rate=rate)

    assert all(provider.fails(f"k{n}", 1) is fails for n in range(100))
    if fails:
        with pytest.raises(TransientProviderError):
            provider.create_transfer(make_request())
        assert provider.transfers == []


def test_latency_is_spent_through_the_sleep_function(make_request: MakeRequest) -> None:
    slept: list[float] = []
    provider = SimulatedPayoutProvider(latency=0.25, sleep=slept.append)

    provider.create_transfer(make_request("1"))
    provider.create_transfer(make_request("2"))

    assert slept == [0.25, 0.25]


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError):
        SimulatedPayoutProvider(failure_rate=1.5)
    with pytest.raises(ValueError):
        SimulatedPayoutProvider(failure_rate=-0.1)
    with pytest.raises(ValueError):
        SimulatedPayoutProvider(latency=-1)


def test_find_transfer_matches_row_and_group(make_request: MakeRequest) -> None:
    provider = SimulatedPayoutProvider()
    created = provider.create_transfer(make_request("1"))
    provider.create_transfer(make_request("2", transfer_group="payment_other"))

    assert provider.find_transfer(transfer_id="1", transfer_group="payment_pi_123") == created
    assert provider.find_transfer(transfer_id="2", transfer_group="payment_pi_123") is None
    assert provider.find_transfer(transfer_id="3", transfer_group="payment_pi_123") is None


def test_payment_state_defaults_to_paid_and_can_be_changed() -> None:
    provider = SimulatedPayoutProvider()

    assert provider.payment_state("pi_1") == PaymentState(
        payment_id="pi_1", refunded=False, disputed=False
    )
    provider.set_payment_state("pi_1", refunded=True)
    provider.set_payment_state("pi_2", disputed=True)

    assert provider.payment_state("pi_1") == PaymentState(
        payment_id="pi_1", refunded=True, disputed=False
    )
    assert provider.payment_state("pi_2").disputed is True
    assert provider.payment_state("pi_3").refunded is False


def test_concurrent_calls_create_one_transfer_per_key(make_request: MakeRequest) -> None:
    # A real sleep of zero seconds yields the GIL between the call count and the creation.
    provider = SimulatedPayoutProvider(latency=1e-6, sleep=lambda _: time.sleep(0))
    requests = [make_request(str(n)) for n in range(40)]
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    results: list[list[TransferResult]] = [[] for _ in range(threads_count)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        order = list(requests)
        random.Random(index).shuffle(order)
        barrier.wait()
        try:
            for request in order:
                results[index].append(provider.create_transfer(request))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
    assert len(provider.transfers) == 40
    assert provider.calls_by_idempotency_key == {r.idempotency_key: threads_count for r in requests}
    expected = sorted(simulated_transfer_id(r.idempotency_key) for r in requests)
    assert sorted(t.result.provider_transfer_id for t in provider.transfers) == expected
    for seen in results:
        assert sorted(r.provider_transfer_id for r in seen) == expected
