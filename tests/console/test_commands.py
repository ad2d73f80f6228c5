from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from devtools.qstash_local import LocalQStash, RunningServer
from tests.console.helpers import add_dead_letter


def test_sign_in_link_signs_in_once(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["console", "sign-in-link",
                                                "--base-url", "http://127.0.0.1:8000"])
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert link.startswith("http://127.0.0.1:8000/admin/sign-in/link?code=")
    client: FlaskClient = app.test_client()
    path = link.removeprefix("http://127.0.0.1:8000")
    first = client.get(path)
    assert first.status_code == 303 and first.headers["Location"].endswith("/admin/")
    assert client.get("/admin/").status_code == 200
    other = app.test_client()
    assert other.get(path).status_code == 401
    assert other.get("/admin/sign-in/link?code=nonsense").status_code == 401


def test_sign_in_link_needs_the_token(make_app: object, qstash_env: dict[str, str]) -> None:
    env = {k: v for k, v in qstash_env.items() if k != "ADMIN_API_TOKEN"}
    app = make_app(env)  # type: ignore[operator]
    result = app.test_cli_runner().invoke(args=["console", "sign-in-link"])
    assert result.exit_code == 1 and "console is off" in result.output


def test_dlq_commands(app: Flask, local_qstash: tuple[LocalQStash, RunningServer]) -> None:
    local, _ = local_qstash
    first = add_dead_letter(local)
    second = add_dead_letter(local, job="process-expert-transfers")
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["qstash", "dlq", "list"])
    assert listed.exit_code == 0, listed.output
    assert first in listed.output and "/api/cron/process-expert-transfers" in listed.output
    assert "2 dead letter(s)" in listed.output
    retried = runner.invoke(args=["qstash", "dlq", "retry", first])
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() in local.messages
    assert runner.invoke(args=["qstash", "dlq", "retry"]).exit_code == 2
    deleted = runner.invoke(args=["qstash", "dlq", "delete", "--all"])
    assert deleted.exit_code == 0 and "deleted 1 of 1" in deleted.output
    assert local.dlq == {} and second not in local.dlq
