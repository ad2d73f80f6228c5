from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.helpers import ADMIN_TOKEN

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: FlaskClient, path: str = "/admin/sign-in") -> str:
    """Return the CSRF token a console page's forms carry."""
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the pauses after failed sign-ins instead of waiting through them."""
    waits: list[float] = []
    monkeypatch.setattr("service.console.access.pause", waits.append)
    monkeypatch.setattr("blueprints.console.throttle.failed",
                        lambda address: 0.5)
    return waits


@pytest.fixture
def console(client: FlaskClient) -> FlaskClient:
    """A test client signed in to the console."""
    token = csrf_of(client)
    answer = client.post("/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return client
