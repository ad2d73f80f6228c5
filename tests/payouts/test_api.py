from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.extensions import get_sessions
from service.payouts.models import PaymentTransfer
from tests.helpers import (
    AUTH,
    AppFactory,
    add_expert,
    add_transfer,
    load_transfer,
)
from tests.payouts.helpers import EXPERT, stored, transfer_body


def test_every_endpoint_needs_the_admin_token(client: FlaskClient) -> None:
    calls = [("put", "/api/experts/exp_1"), ("get", "/api/experts/exp_1"),
             ("post", "/api/transfers"), ("get", "/api/transfers"),
             ("get", "/api/transfers/1"), ("post", "/api/transfers/1/approve")]
    for method, path in calls:
        response = getattr(client, method)(path, json={},
                                           headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, path
        assert response.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize("digit", ["\u0661", "\uff11", "\U0001d7cf", "\u00b9"])
def test_ids_in_paths_are_ascii_digits_only(
    app: Flask, client: FlaskClient, expert: dict[str, Any], digit: str
) -> None:
    created = client.post("/api/transfers", json=transfer_body(requires_approval=True),
                          headers=AUTH).get_json()
    assert created["id"] == 1
    routes = [(rule.rule, method) for rule in app.url_map.iter_rules()
              for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
              if "<int:" in rule.rule]
    assert len(routes) >= 2
    for rule, method in routes:
        body = {"approved_by": "ops@example.com"}
        other = client.open(re.sub(r"<int:\w+>", digit, rule), method=method, json=body,
                            headers=AUTH)
        assert (other.status_code, other.get_json()["error"]) == (404, "not_found"), rule
        ascii_one = client.open(re.sub(r"<int:\w+>", "1", rule), method=method, json=body,
                                headers=AUTH)
        if rule.startswith("/api/"):
            assert ascii_one.status_code == 200, rule
        else:  # the console's route is reached: sign in first (GET), a form needs its CSRF token
            assert ascii_one.status_code == (303 if method == "GET" else 400), rule


def test_disabled_without_a_token(make_app: AppFactory, env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "ADMIN_API_TOKEN"}
    response = make_app(env).test_client().get("/api/transfers", headers=AUTH)
    assert response.status_code == 503
    assert response.get_json()["error"] == "admin_api_disabled"



def test_register_computes_the_split_and_the_due_date(
    client: FlaskClient, expert: dict[str, Any]
) -> None:
    response = client.post("/api/transfers", json=transfer_body(), headers=AUTH)
    assert response.status_code == 201
    row = response.get_json()
    assert (row["price"], row["platform_fee"], row["amount"]) == (10_000, 1_500, 8_500)
    assert row["status"] == "PENDING"
    assert row["attempts"] == 0
    # PT: seven days after the payment (17:30 UTC), later than a day after the session.
    assert row["scheduled_transfer_at"] == "2025-02-27T17:30:00+00:00"
    assert row["paid_at"] == "2025-02-20T17:30:00+00:00"
    assert client.get(f"/api/transfers/{row['id']}", headers=AUTH).get_json() == row


def test_registration_is_idempotent_by_payment_id(
    client: FlaskClient, expert: dict[str, Any]
) -> None:
    first = client.post("/api/transfers", json=transfer_body(), headers=AUTH)
    # The same instant written with another offset is the same registration.
    again = client.post("/api/transfers", headers=AUTH, json=transfer_body(
        paid_at="2025-02-20T17:30:00Z", currency="EUR"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    conflict = client.post("/api/transfers", json=transfer_body(price=12_000,
                                                                requires_approval=True),
                           headers=AUTH)
    assert conflict.status_code == 409
    body = conflict.get_json()
    assert body["error"] == "transfer_conflict"
    assert body["transfer_id"] == first.get_json()["id"]
    assert sorted(body["fields"]) == ["price", "requires_approval"]
    listed = client.get("/api/transfers", headers=AUTH).get_json()
    assert listed["count"] == 1


def test_concurrent_identical_registrations_create_one_row(
    app: Flask, expert: dict[str, Any]
) -> None:
    barrier = threading.Barrier(6)
    answers: list[tuple[int, Any]] = []

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/transfers", json=transfer_body(), headers=AUTH)
        answers.append((response.status_code, response.get_json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(status for status, _ in answers) == [200] * 5 + [201]
    with get_sessions(app)() as session:
        [row_id] = session.scalars(select(PaymentTransfer.id)).all()
    assert {transfer_id for _, transfer_id in answers} == {row_id}


def test_register_lists_every_invalid_field(client: FlaskClient, expert: dict[str, Any]) -> None:
    response = client.post("/api/transfers", headers=AUTH, json={
        "expert_id": "", "payment_id": "x", "charge_id": "pi_nope", "price": 99.5,
        "currency": "euro", "session_start_at": "yesterday", "session_end_at":
        "2025-03-01T10:00:00", "requires_approval": "no", "extra": 1})
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) == {
        "expert_id", "payment_id", "charge_id", "price", "currency", "session_start_at",
        "session_end_at", "paid_at", "requires_approval", "extra"}
    assert "time zone" in response.get_json()["fields"]["session_end_at"]


def test_register_checks_the_expert_and_the_session(
    client: FlaskClient, expert: dict[str, Any]
) -> None:
    unknown = client.post("/api/transfers", json=transfer_body(expert_id="nobody"),
                          headers=AUTH)
    assert unknown.status_code == 422
    assert set(unknown.get_json()["fields"]) == {"expert_id"}
    backwards = client.post("/api/transfers", headers=AUTH, json=transfer_body(
        session_end_at="2025-02-21T08:00:00Z"))
    assert backwards.status_code == 422
    assert set(backwards.get_json()["fields"]) == {"session_end_at"}
    for price in (0, -1, True, "100"):
        response = client.post("/api/transfers", json=transfer_body(price=price), headers=AUTH)
        assert response.status_code == 422, price


@pytest.mark.parametrize(("changes", "fields"), [
    ({"session_start_at": "9999-12-31T10:00:00Z", "session_end_at": "9999-12-31T11:00:00Z"},
     {"session_start_at", "session_end_at"}),
    ({"paid_at": "0001-01-01T00:00:00+01:00"}, {"paid_at"}),
    ({"paid_at": "9999-12-31T23:59:59-14:00"}, {"paid_at"}),
    ({"session_end_at": "3000-01-01T00:00:00Z"}, {"session_end_at"}),
    ({"paid_at": "1969-12-31T23:59:59Z"}, {"paid_at"}),
])
def test_register_refuses_dates_at_the_ends_of_the_calendar(
    app: Flask, client: FlaskClient, expert: dict[str, Any], changes: dict[str, str],
    fields: set[str]
) -> None:
    response = client.post("/api/transfers", json=transfer_body(**changes), headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert set(response.get_json()["fields"]) == fields
    assert stored(app) == (1, 0)


def test_us_expert_and_the_24h_rule(client: FlaskClient) -> None:
    client.put("/api/experts/exp_us", json={**EXPERT, "country": "US"}, headers=AUTH)
    paid_early = client.post("/api/transfers", headers=AUTH, json=transfer_body(
        expert_id="exp_us", payment_id="pi_us1", charge_id=None,
        paid_at="2025-03-01T08:00:00Z", session_end_at="2025-03-03T10:00:00Z",
        session_start_at="2025-03-03T09:00:00Z"))
    # US is two days after payment (03-03 08:00) but the session ended 03-03 10:00.
    assert paid_early.get_json()["scheduled_transfer_at"] == "2025-03-04T10:00:00+00:00"


def test_approve(app: Flask, client: FlaskClient) -> None:
    add_expert(app)
    held = add_transfer(app, requires_approval=True)
    plain = add_transfer(app)
    missing = client.post("/api/transfers/999/approve", json={"approved_by": "ops"},
                          headers=AUTH)
    assert (missing.status_code, missing.get_json()["error"]) == (404, "transfer_not_found")
    nobody = client.post(f"/api/transfers/{held}/approve", json={}, headers=AUTH)
    assert nobody.status_code == 422
    response = client.post(f"/api/transfers/{held}/approve", json={"approved_by": "ops@x"},
                           headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert body["approved_by"] == "ops@x"
    approved_at = body["approved_at"]
    assert approved_at is not None
    # Approving again changes nothing.
    again = client.post(f"/api/transfers/{held}/approve", json={"approved_by": "other"},
                        headers=AUTH)
    assert (again.get_json()["approved_by"], again.get_json()["approved_at"]) == (
        "ops@x", approved_at)
    not_needed = client.post(f"/api/transfers/{plain}/approve", json={"approved_by": "ops"},
                             headers=AUTH)
    assert (not_needed.status_code, not_needed.get_json()["error"]) == (
        409, "approval_not_required")


def test_concurrent_approvals_all_answer_the_one_approval(app: Flask) -> None:
    """20 concurrent approvals of each of 10 transfers: every one 200, one approver stored."""
    add_expert(app)
    ids = [add_transfer(app, requires_approval=True) for _ in range(10)]
    per_transfer = 20
    barrier = threading.Barrier(len(ids) * per_transfer)
    answers: list[tuple[int, int, Any]] = []
    lock = threading.Lock()

    def approve(transfer_id: int, approver: str) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(f"/api/transfers/{transfer_id}/approve",
                               json={"approved_by": approver}, headers=AUTH)
        with lock:
            answers.append((transfer_id, response.status_code, response.get_json()))

    threads = [threading.Thread(target=approve, args=(transfer_id, f"ops{n}@x"))
               for transfer_id in ids for n in range(per_transfer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [(tid, status, body) for tid, status, body in answers if status != 200]
    assert refused == []
    assert len(answers) == len(ids) * per_transfer
    for transfer_id in ids:
        row = load_transfer(app, transfer_id)
        assert row.approved_by is not None and row.approved_at is not None
        # Every answer shows the approval that was stored, whichever request made it.
        shown = {(body["approved_by"], body["approved_at"])
                 for tid, _, body in answers if tid == transfer_id}
        assert shown == {(row.approved_by, row.approved_at.isoformat())}


@pytest.mark.parametrize("approved_by", ["\ud800x", "ops\x00", "ops\nother", "ops\x1b[31m",
                                         "x" * 129, "  ", 7])
def test_approver_must_be_one_line_of_text(app: Flask, client: FlaskClient,
                                           approved_by: object) -> None:
    add_expert(app)
    held = add_transfer(app, requires_approval=True)
    response = client.post(f"/api/transfers/{held}/approve", json={"approved_by": approved_by},
                           headers=AUTH)
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) == {"approved_by"}
    row = load_transfer(app, held)
    assert (row.approved_by, row.approved_at) == (None, None)


@pytest.mark.parametrize("transfer_id", ["0", "2147483648", "99999999999999999999"])
def test_transfer_ids_beyond_the_column_are_not_found(
    app: Flask, client: FlaskClient, transfer_id: str
) -> None:
    add_expert(app)
    add_transfer(app, requires_approval=True)
    shown = client.get(f"/api/transfers/{transfer_id}", headers=AUTH)
    approved = client.post(f"/api/transfers/{transfer_id}/approve",
                           json={"approved_by": "ops"}, headers=AUTH)
    for response in (shown, approved):
        assert response.status_code == 404
        assert response.get_json()["error"] == "transfer_not_found"


def test_only_a_pending_transfer_can_be_approved(app: Flask, client: FlaskClient) -> None:
    add_expert(app)
    cancelled = add_transfer(app, requires_approval=True, status="CANCELLED")
    response = client.post(f"/api/transfers/{cancelled}/approve", json={"approved_by": "ops"},
                           headers=AUTH)
    assert response.status_code == 409
    assert response.get_json()["error"] == "not_pending"
    assert load_transfer(app, cancelled).approved_at is None


def test_list_filters_and_pages(app: Flask, client: FlaskClient) -> None:
    add_expert(app, "exp_a")
    add_expert(app, "exp_b")
    ids = [add_transfer(app, expert_id="exp_a"), add_transfer(app, expert_id="exp_b"),
           add_transfer(app, expert_id="exp_a", status="COMPLETED")]
    def listed(query: str) -> list[int]:
        response = client.get(f"/api/transfers?{query}", headers=AUTH)
        assert response.status_code == 200, response.get_json()
        return [t["id"] for t in response.get_json()["transfers"]]

    assert listed("") == ids[::-1]
    assert listed("expert=exp_a") == [ids[2], ids[0]]
    assert listed("status=pending") == [ids[1], ids[0]]
    assert listed("status=COMPLETED&expert=exp_a") == [ids[2]]
    page = client.get("/api/transfers?limit=2", headers=AUTH).get_json()
    assert page["next_before"] == ids[1]
    assert listed(f"limit=2&before={page['next_before']}") == [ids[0]]
    bad = client.get("/api/transfers?status=DONE&limit=0&before=x&expert=a%20b", headers=AUTH)
    assert bad.status_code == 422
    assert set(bad.get_json()["fields"]) == {"status", "limit", "before", "expert"}


@pytest.mark.parametrize(("query", "field"), [
    ("limit=%C2%B2", "limit"),  # "²": str.isdigit() accepts it, int() does not
    ("limit=%D9%A3", "limit"),  # Arabic-Indic three
    ("limit=501", "limit"),
    ("limit=99999999999999999999", "limit"),
    ("limit=1%0A", "limit"),
    ("before=%C2%B2", "before"),
    ("before=-1", "before"),
    ("before=2147483648", "before"),
    ("before=99999999999999999999", "before"),
    ("expert=a%0A", "expert"),
    ("expert=a%00", "expert"),
])
def test_list_refuses_bad_query_values(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/api/transfers?{query}", headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert set(response.get_json()["fields"]) == {field}


def test_list_accepts_the_largest_values(client: FlaskClient) -> None:
    response = client.get("/api/transfers?limit=500&before=2147483647", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["count"] == 0


def test_transfer_not_found_is_json(client: FlaskClient) -> None:
    response = client.get("/api/transfers/12345", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"] == "transfer_not_found"


def test_registered_due_date_does_not_move_when_the_expert_changes(
    client: FlaskClient, expert: dict[str, Any]
) -> None:
    row = client.post("/api/transfers", json=transfer_body(), headers=AUTH).get_json()
    client.put("/api/experts/exp_1", json={**EXPERT, "country": "US"}, headers=AUTH)
    stored = client.get(f"/api/transfers/{row['id']}", headers=AUTH).get_json()
    assert stored["scheduled_transfer_at"] == row["scheduled_transfer_at"]
    # And a repeat registration compares inputs, not what was computed from them.
    assert client.post("/api/transfers", json=transfer_body(), headers=AUTH).status_code == 200


def test_paid_at_in_the_past_is_kept_exactly(client: FlaskClient, expert: dict[str, Any]) -> None:
    paid = datetime.now(UTC) - timedelta(days=3, microseconds=17)
    response = client.post("/api/transfers", headers=AUTH, json=transfer_body(
        payment_id="pi_precise", paid_at=paid.isoformat()))
    assert datetime.fromisoformat(response.get_json()["paid_at"]) == paid
    again = client.post("/api/transfers", headers=AUTH, json=transfer_body(
        payment_id="pi_precise", paid_at=paid.isoformat()))
    assert again.status_code == 200
