from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from devtools import demo
from devtools.qstash_local.cli import main as qstash_local_main
from service.extensions import get_sessions
from service.payouts.models import PaymentTransfer
from tests.helpers import ADMIN_TOKEN, AppFactory, row_count


def test_demo_seed_covers_every_state(app: Flask) -> None:
    assert demo.seed_app(app).startswith("seeded 8 experts and 20 transfers")
    with get_sessions(app)() as session:
        statuses = set(session.scalars(select(PaymentTransfer.status)))
        approvals = {(r.requires_approval, r.approved_at is not None)
                     for r in session.scalars(select(PaymentTransfer))}
    assert statuses == {"PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"}
    assert {(True, False), (True, True), (False, False)} <= approvals
    with pytest.raises(demo.SeedRefused, match="already present"):
        demo.seed_app(app)
    assert "nothing seeded" in demo.seed_app(app, if_empty=True)
    count = row_count(app, PaymentTransfer)
    assert demo.seed_app(app, reset=True).startswith("seeded ")
    assert row_count(app, PaymentTransfer) == count

    # The seeded ledger is one every job can work on.
    client = app.test_client()
    for job in ("process-tasks", "process-expert-transfers", "check-upcoming-payouts"):
        response = client.post(f"/api/cron/{job}", headers={"Authorization":
                                                            f"Bearer {ADMIN_TOKEN}"})
        assert response.get_json()["status"] == "succeeded", job
    assert response.get_json()["result"]["queued"] >= 1


def test_demo_seed_is_refused_in_production(make_app: AppFactory, env: dict[str, str]) -> None:
    app = make_app({**env, "APP_ENV": "production", "PAYOUT_PROVIDER": "stripe",
                    "STRIPE_SECRET_KEY": "sk_test_x"})
    with pytest.raises(demo.SeedRefused, match="production"):
        demo.seed_app(app)


def test_demo_command_seeds_the_configured_database(
    app: Flask, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert demo.main(["seed", "--if-empty"]) == 0
    assert capsys.readouterr().out.startswith("seeded 8 experts")
    assert demo.main(["seed"]) == 1
    assert "use --reset to replace it" in capsys.readouterr().err
    assert row_count(app, PaymentTransfer) == 20


def test_local_qstash_command_stops_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(qstash_local_main, ["--port", str(port)])
    # werkzeug reports a taken port itself, before the command's own message could.
    assert result.exit_code == 1
    assert f"Port {port} is in use" in result.output


def test_local_qstash_command_keeps_its_options() -> None:
    result = CliRunner().invoke(qstash_local_main, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--sign-with", "--backoff-scale", "--allow-remote"):
        assert option in result.output
