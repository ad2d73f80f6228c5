from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.payouts.rules import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    TRANSFER_STATUSES,
    TRANSITIONS,
    InvalidTransition,
    check_transition,
    is_due,
    legacy_idempotency_key,
    parse_delay_table,
    retry_backoff,
    scheduled_transfer_at,
    split_price,
)

DELAYS = parse_delay_table("US=2,default=7")
PAID = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def due(country: str | None, *, paid: datetime = PAID, ended: datetime | None = None) -> datetime:
    ended = ended if ended is not None else paid - timedelta(hours=2)
    return scheduled_transfer_at(paid_at=paid, session_end_at=ended, country=country,
                                 delays=DELAYS)


@pytest.mark.parametrize(("country", "days"), [
    ("US", 2), ("us", 2), ("PT", 7), ("ES", 7), ("IT", 7), ("FR", 7), ("DE", 7), ("GB", 7),
    ("CA", 7), ("AU", 7), ("ZZ", 7), ("", 7), (None, 7),
])
def test_delay_counts_from_the_payment_by_country(country: str | None, days: int) -> None:
    assert due(country) == PAID + timedelta(days=days)


def test_never_earlier_than_a_day_after_the_session_ended() -> None:
    # Paid well before a session that takes place later: the session end wins.
    session_end = PAID + timedelta(days=10)
    assert due("US", ended=session_end) == session_end + timedelta(hours=24)
    assert due("PT", ended=session_end) == session_end + timedelta(hours=24)
    # A US session three days after the payment: a day after it, not two after the payment.
    assert due("US", ended=PAID + timedelta(days=3)) == PAID + timedelta(days=4)
    # Exactly at the boundary both rules agree.
    assert due("US", ended=PAID + timedelta(days=1)) == PAID + timedelta(days=2)


@given(
    paid=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                      timezones=st.just(UTC)),
    session_offset=st.integers(min_value=-30 * 24 * 60, max_value=30 * 24 * 60),
    country=st.sampled_from(["US", "PT", "GB", None, "XX"]),
)
def test_due_date_is_the_later_of_the_two_rules(paid: datetime, session_offset: int,
                                                country: str | None) -> None:
    ended = paid + timedelta(minutes=session_offset)
    scheduled = due(country, paid=paid, ended=ended)
    assert scheduled >= paid + DELAYS.delay(country)
    assert scheduled >= ended + timedelta(hours=24)
    assert scheduled in (paid + DELAYS.delay(country), ended + timedelta(hours=24))


def test_delay_table_is_configuration() -> None:
    table = parse_delay_table(" us=1 , PT=3, default=10 ")
    assert table.delay("US") == timedelta(days=1)
    assert table.delay("PT") == timedelta(days=3)
    assert table.delay("BR") == timedelta(days=10)
    assert table.describe() == "PT=3,US=1,default=10"


@pytest.mark.parametrize(("text", "problem"), [
    ("US=2", "default"),
    ("US=2,US=3,default=7", "twice"),
    ("USA=2,default=7", "two-letter"),
    ("US=two,default=7", "COUNTRY=DAYS"),
    ("US=-1,default=7", "COUNTRY=DAYS"),
    # Digits that str.isdigit() accepts but that are not ASCII: "²" and Arabic-Indic three.
    ("US=\u00b2,default=7", "COUNTRY=DAYS"),
    ("US=2,default=\u0663", "COUNTRY=DAYS"),
    ("default=7,default=8", "twice"),
    ("US=400,default=7", "at most"),
])
def test_bad_delay_tables_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_delay_table(text)


@pytest.mark.parametrize(("price", "fee", "amount"), [
    (10_000, 1_500, 8_500), (9_999, 1_499, 8_500), (1, 0, 1), (7, 1, 6), (13_333, 1_999, 11_334),
])
def test_fee_is_15_percent_rounded_down(price: int, fee: int, amount: int) -> None:
    split = split_price(price)
    assert (split.platform_fee, split.amount) == (fee, amount)


@given(st.integers(min_value=1, max_value=10**11))
def test_split_is_exact_in_integers(price: int) -> None:
    split = split_price(price)
    assert split.platform_fee + split.amount == price
    assert split.platform_fee * 100 <= price * 15 < (split.platform_fee + 1) * 100
    assert all(isinstance(v, int) for v in (split.platform_fee, split.amount))


@pytest.mark.parametrize("price", [0, -5, 10.5, True, "100"])
def test_split_refuses_anything_but_positive_integers(price: object) -> None:
    with pytest.raises(ValueError):
        split_price(price)  # type: ignore[arg-type]


NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, True),
    ({"scheduled_transfer_at": NOW + timedelta(seconds=1)}, False),
    ({"status": PROCESSING}, False),
    ({"status": COMPLETED}, False),
    ({"requires_approval": True}, False),
    ({"requires_approval": True, "approved_at": NOW}, True),
    # Approval makes a row eligible immediately, whatever its date.
    ({"requires_approval": True, "approved_at": NOW,
      "scheduled_transfer_at": NOW + timedelta(days=6)}, True),
    ({"next_attempt_at": NOW + timedelta(minutes=1)}, False),
    ({"next_attempt_at": NOW - timedelta(minutes=1)}, True),
    # Backoff applies to approved rows too, and approval survives it.
    ({"requires_approval": True, "approved_at": NOW,
      "next_attempt_at": NOW + timedelta(minutes=1)}, False),
])
def test_eligibility(fields: dict[str, object], expected: bool) -> None:
    row: dict[str, object] = {
        "status": PENDING, "scheduled_transfer_at": NOW, "requires_approval": False,
        "approved_at": None, "next_attempt_at": None, **fields,
    }
    assert is_due(now=NOW, **row) is expected  # type: ignore[arg-type]


ALLOWED = {
    (PENDING, PROCESSING), (PENDING, CANCELLED),
    (PROCESSING, COMPLETED), (PROCESSING, PENDING), (PROCESSING, FAILED),
}


@pytest.mark.parametrize("current", TRANSFER_STATUSES)
@pytest.mark.parametrize("new", TRANSFER_STATUSES)
def test_state_machine(current: str, new: str) -> None:
    if (current, new) in ALLOWED:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, new)


def test_final_states_have_no_way_out() -> None:
    assert all(not TRANSITIONS[s] for s in (COMPLETED, FAILED, CANCELLED))
    # A refund can never be overwritten by a payment, nor a payment undone by a refund.
    assert CANCELLED not in TRANSITIONS[PROCESSING]
    assert COMPLETED not in TRANSITIONS[PENDING]


def test_backoff_doubles() -> None:
    base = timedelta(minutes=10)
    assert [retry_backoff(n, base) for n in (1, 2, 3)] == [
        timedelta(minutes=10), timedelta(minutes=20), timedelta(minutes=40)]


def test_backoff_stops_growing_at_six_hours_for_rows_retried_past_the_limit() -> None:
    base = timedelta(minutes=10)
    assert retry_backoff(6, base) == timedelta(minutes=320)
    assert retry_backoff(7, base) == retry_backoff(10_000, base) == timedelta(hours=6)
    # A base above the cap is kept as it is.
    assert retry_backoff(3, timedelta(hours=8)) == timedelta(hours=8)


def test_idempotency_key_names_the_environment_and_row() -> None:
    assert legacy_idempotency_key("production", 42) == "production:transfer:42"
