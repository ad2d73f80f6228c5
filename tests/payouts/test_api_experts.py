from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import (
    AUTH,
)
from tests.payouts.helpers import EXPERT, stored


def test_put_expert_creates_then_replaces(client: FlaskClient, expert: dict[str, Any]) -> None:
    assert {k: expert[k] for k in EXPERT} == EXPERT
    changed = {**EXPERT, "country": "us", "payouts_enabled": False}
    response = client.put("/api/experts/exp_1", json=changed, headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["country"] == "US"
    assert response.get_json()["payouts_enabled"] is False
    assert client.get("/api/experts/exp_1", headers=AUTH).get_json()["country"] == "US"


def test_put_expert_lists_every_invalid_field(client: FlaskClient) -> None:
    response = client.put("/api/experts/exp_1", headers=AUTH, json={
        "email": "not-an-email", "first_name": "", "country": "Portugal",
        "stripe_account_id": "ba_123", "payouts_enabled": "yes", "nickname": "A"})
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_failed"
    assert set(body["fields"]) == {"email", "first_name", "country", "stripe_account_id",
                                   "payouts_enabled", "nickname"}
    assert body["fields"]["nickname"] == "unknown field"


def test_put_expert_requires_a_json_object(client: FlaskClient) -> None:
    for kwargs in ({"data": "nope"}, {"json": [1, 2]}):
        response = client.put("/api/experts/exp_1", headers=AUTH, **kwargs)
        assert response.status_code == 422
        assert "body" in response.get_json()["fields"]
    bad_id = client.put("/api/experts/bad%20id", json=EXPERT, headers=AUTH)
    assert bad_id.status_code == 422
    assert "id" in bad_id.get_json()["fields"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"email": "\ud800@b.co"}, "email"),
    ({"email": "a\x00b@b.co"}, "email"),
    ({"email": "a\x7fb@b.co"}, "email"),
    ({"first_name": "A\x00"}, "first_name"),
    ({"first_name": "A\ud800"}, "first_name"),
    ({"first_name": "A\nB"}, "first_name"),
    ({"first_name": "A\u2028B"}, "first_name"),  # line separator
    ({"first_name": "\u202eanA"}, "first_name"),  # right-to-left override: shows as "Ana"
    ({"first_name": "A\u2066B\u2069"}, "first_name"),  # isolate
])
def test_put_expert_refuses_control_characters_and_surrogates(
    app: Flask, client: FlaskClient, changes: dict[str, str], field: str
) -> None:
    response = client.put("/api/experts/e2", json={**EXPERT, **changes}, headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert set(response.get_json()["fields"]) == {field}
    assert stored(app) == (0, 0)


@pytest.mark.parametrize("first_name", [
    "Mehr\u200cnaz",  # Persian names put a zero-width non-joiner between parts
    "\u0645\u0647\u0631\u200c\u0646\u0627\u0632",
    "Jean\u00a0Luc",  # a no-break space
    "\u05d3\u05e0\u05d4 \u200fDana",  # a right-to-left mark
    "\U0001f469\u200d\u2695\ufe0f Ana",  # joiner and variation selector in an emoji
])
def test_put_expert_keeps_names_that_need_spaces_joiners_and_marks(
    client: FlaskClient, first_name: str
) -> None:
    response = client.put("/api/experts/e3", json={**EXPERT, "first_name": first_name},
                          headers=AUTH)
    assert response.status_code == 201, response.get_json()
    assert client.get("/api/experts/e3", headers=AUTH).get_json()["first_name"] == first_name


@pytest.mark.parametrize("expert_id", ["bad%0A", "bad%00", "%C2%B2", "bad%0Aid"])
def test_put_expert_id_must_match_whole(app: Flask, client: FlaskClient, expert_id: str) -> None:
    response = client.put(f"/api/experts/{expert_id}", json=EXPERT, headers=AUTH)
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) == {"id"}
    assert stored(app) == (0, 0)


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # about 200 KB, well under the body limit
LONG_NUMBER = '{"price": ' + "9" * 5000 + "}"  # more digits than int() converts


@pytest.mark.parametrize("body", [DEEP_JSON, LONG_NUMBER], ids=["deep", "long-number"])
@pytest.mark.parametrize(("method", "path"), [
    ("put", "/api/experts/exp_2"), ("post", "/api/transfers"),
    ("post", "/api/transfers/1/approve"),
])
def test_unparseable_json_is_a_422(app: Flask, client: FlaskClient, method: str, path: str,
                                   body: str) -> None:
    response = getattr(client, method)(path, data=body, content_type="application/json",
                                       headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert set(response.get_json()["fields"]) == {"body"}
    assert stored(app) == (0, 0)


def test_unknown_expert_is_a_404(client: FlaskClient) -> None:
    response = client.get("/api/experts/nobody", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"] == "expert_not_found"


@pytest.mark.parametrize("expert_id", ["%00", "a%00b", "exp_1%0A", "x" * 65])
def test_an_expert_id_that_cannot_exist_is_a_404(
    client: FlaskClient, expert: dict[str, Any], expert_id: str
) -> None:
    response = client.get(f"/api/experts/{expert_id}", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"] == "expert_not_found"
