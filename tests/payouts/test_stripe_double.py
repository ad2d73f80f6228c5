from __future__ import annotations

import base64

import requests

from devtools.stripe_local import StripeLocalServer

from .helpers import ACCOUNT, API_KEY

# The double itself, at the wire level, where the SDK hides what Stripe would answer.


def post_transfer(
    server: StripeLocalServer, *, key: str | None = "k1", auth: str | None = None, **form: str
) -> requests.Response:
    headers = {"Authorization": auth or f"Bearer {API_KEY}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = {"amount": "100", "currency": "eur", "destination": ACCOUNT, **form}
    return requests.post(f"{server.url}/v1/transfers", data=data, headers=headers, timeout=5)


def test_double_answers_a_replay_with_the_stored_response(
    stripe_server: StripeLocalServer,
) -> None:
    first = post_transfer(stripe_server, **{"metadata[transfer_id]": "1"})
    replay = post_transfer(stripe_server, **{"metadata[transfer_id]": "1"})

    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert replay.headers["Original-Request"] == first.headers["Request-Id"]
    assert replay.headers["Request-Id"] != first.headers["Request-Id"]
    assert first.json()["metadata"] == {"transfer_id": "1"}


def test_double_accepts_basic_auth_and_rejects_a_missing_key(
    stripe_server: StripeLocalServer,
) -> None:
    basic = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()

    accepted = post_transfer(stripe_server, auth=basic)
    rejected = requests.get(f"{stripe_server.url}/v1/transfers", timeout=5)

    assert accepted.status_code == 200
    assert rejected.status_code == 401
    assert rejected.json()["error"]["type"] == "invalid_request_error"
    assert "did not provide an API key" in rejected.json()["error"]["message"]


def test_double_rejects_unknown_parameters_and_keys_reused_elsewhere(
    stripe_server: StripeLocalServer,
) -> None:
    unknown = post_transfer(stripe_server, key="k2", application_fee="1")
    created = post_transfer(stripe_server, key="k3")
    conflict = post_transfer(stripe_server, key="k3", amount="101")

    assert unknown.status_code == 400
    assert unknown.json()["error"] == {
        "type": "invalid_request_error",
        "code": "parameter_unknown",
        "param": "application_fee",
        "message": "Received unknown parameter: application_fee",
    }
    assert created.status_code == 200
    assert conflict.status_code == 400
    assert conflict.json()["error"]["type"] == "idempotency_error"


def test_double_lists_transfers_newest_first_with_cursors(
    stripe_server: StripeLocalServer,
) -> None:
    ids = [post_transfer(stripe_server, key=f"k{n}").json()["id"] for n in range(3)]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    page = requests.get(
        f"{stripe_server.url}/v1/transfers", params={"limit": 2}, headers=headers, timeout=5
    ).json()
    rest = requests.get(
        f"{stripe_server.url}/v1/transfers",
        params={"limit": 2, "starting_after": page["data"][-1]["id"]},
        headers=headers,
        timeout=5,
    ).json()

    assert [t["id"] for t in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True and page["url"] == "/v1/transfers"
    assert [t["id"] for t in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    newer = requests.get(
        f"{stripe_server.url}/v1/transfers",
        params={"limit": 1, "ending_before": ids[0]},
        headers=headers,
        timeout=5,
    ).json()
    assert [t["id"] for t in newer["data"]] == [ids[1]]
    assert newer["has_more"] is True


def test_double_publishes_stats_and_takes_controls_over_http(
    stripe_server: StripeLocalServer,
) -> None:
    url = stripe_server.url
    account = requests.post(f"{url}/_test/accounts", json={"id": "acct_remote"}, timeout=5)
    fault = requests.post(f"{url}/_test/faults", json={"status": 429}, timeout=5)
    limited = post_transfer(stripe_server, key="k1", destination="acct_remote")
    created = post_transfer(stripe_server, key="k1", destination="acct_remote")

    stats = requests.get(f"{url}/_test/stats", timeout=5).json()

    assert account.json() == {"id": "acct_remote"} and fault.status_code == 200
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit"
    assert created.status_code == 200
    assert stats["transfers"] == 1
    assert stats["calls_by_idempotency_key"] == {"k1": 2}
    assert stats["transfer_by_idempotency_key"] == {"k1": created.json()["id"]}
