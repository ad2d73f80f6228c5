from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.console.helpers import csrf_of
from tests.helpers import ADMIN_TOKEN, AppFactory


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the pauses after failed sign-ins instead of waiting through them."""
    waits: list[float] = []
    monkeypatch.setattr("service.console.access.pause", waits.append)
    monkeypatch.setattr("blueprints.console.auth.throttle.failed",
                        lambda address: 0.5)
    return waits


@pytest.fixture
def console(client: FlaskClient) -> FlaskClient:
    """A test client signed in to the console."""
    token = csrf_of(client)
    answer = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return client


@pytest.fixture
def app(make_app: AppFactory, qstash_env: dict[str, str]) -> Flask:
    """The service, pointed at the local QStash server (no test here reaches the network)."""
    return make_app(qstash_env)
