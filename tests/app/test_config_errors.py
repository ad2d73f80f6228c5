from __future__ import annotations

import io
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo
from flask.cli import cli as flask_cli

from service import create_app, db
from service.errors import ConfigurationError
from service.redaction import redact_url
from tests.helpers import ADMIN_TOKEN, ROOT, AppFactory, service_log

PASSWORD = "S3cretPW-9f2c"
# A bad DATABASE_URL stops start-up naming the variable, never quoting the URL.


@pytest.mark.parametrize(("url", "says"), [
    (f"postgresql://app:{PASSWORD}@db:notaport/x", "not a valid database URL"),
    # Without '@host' the parser takes the password for a port and quotes it.
    (f"postgresql://app:{PASSWORD}", "not a valid database URL"),
    ("not a url", "not a valid database URL"),
    (f"mysql://app:{PASSWORD}@db/x", "'mysql' database"),
    (f"postgresql+asyncpg://app:{PASSWORD}@db/x", "driver 'postgresql+asyncpg'"),
    (f"postgres+psycopg2://app:{PASSWORD}@db/x", "driver 'postgres+psycopg2'"),
    (f"sqlite+aiosqlite:///{PASSWORD}.sqlite3", "driver 'sqlite+aiosqlite'"),
])
def test_a_bad_database_url_names_the_variable_and_what_is_accepted(
    make_app: AppFactory, env: dict[str, str], url: str, says: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app({**env, "DATABASE_URL": url}, migrate=False)
    message = str(raised.value)
    assert message.startswith("DATABASE_URL ")
    assert says in message
    assert "sqlite:///" in message and "postgresql://" in message
    assert PASSWORD not in message
    # Nor in the traceback: the parser's own exception, if chained, could quote it.
    assert PASSWORD not in "".join(traceback.format_exception(raised.value))


def test_a_bad_database_url_option_names_the_variable(
    make_app: AppFactory, env: dict[str, str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}?timeout=soon"
    with pytest.raises(ConfigurationError, match=r"^DATABASE_URL has an option after '\?'"):
        make_app({**env, "DATABASE_URL": url}, migrate=False)


def test_an_uncreatable_sqlite_folder_names_the_variable(
    make_app: AppFactory, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path / 'file' / 'db.sqlite3'}"
    with pytest.raises(ConfigurationError, match=r"^DATABASE_URL: the SQLite file's folder "):
        make_app({**env, "DATABASE_URL": url}, migrate=False)


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///relative.sqlite3", "sqlite+pysqlite:///relative.sqlite3",
    "postgres://u:p@db/x", "postgresql://u:p@db:5432/x", "postgresql+psycopg://u:p@db/x?sslmode=require",
])
def test_the_supported_urls_still_make_an_engine(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = db.make_engine(url)  # no connection is made
    try:
        assert engine.dialect.name in ("sqlite", "postgresql")
    finally:
        engine.dispose()


def flask_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `flask --app wsgi ARGS` as an operator would, with only env as settings."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, timeout=60,
        env={"PATH": str(Path(sys.executable).parent), "FLASK_SKIP_DOTENV": "1", **env},
        capture_output=True, text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("url", [f"postgresql://app:{PASSWORD}@db:notaport/x",
                                 f"mysql://app:{PASSWORD}@db/x"])
def test_the_flask_command_stops_naming_the_variable(url: str) -> None:
    result = flask_command({"DATABASE_URL": url}, "qstash", "update")
    assert result.returncode != 0
    assert PASSWORD not in result.stdout + result.stderr
    # One line: a click error, no traceback.
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: DATABASE_URL ")


def test_a_start_up_error_is_one_line_from_the_flask_command(env: dict[str, str]) -> None:
    bad = {**env, "DATABASE_URL": f"mysql://app:{PASSWORD}@db/x"}
    result = CliRunner().invoke(flask_cli, ["db", "current"],
                                obj=ScriptInfo(create_app=lambda: create_app(bad)))
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: DATABASE_URL names a 'mysql' database")


# User info in a configured URL is never shown; one helper strips it.

PROXY_URL = f"http://proxyuser:{PASSWORD}@127.0.0.1:9"


@pytest.mark.parametrize(("url", "shown"), [
    (PROXY_URL, "http://127.0.0.1:9"),
    ("https://qstash.upstash.io", "https://qstash.upstash.io"),
    ("https://u:pw@host:8080/base/?token=abc#frag", "https://host:8080/base/"),
    # Unescaped '/', '?', '#' or '@' in a password end urlsplit's netloc early.
    ("https://u:pa/ss@host/x", "https://host/x"),
    ("https://u:pa?ss@host", "https://host"),
    ("https://u:pa#ss@host", "https://host"),
    ("https://u:p@ss@host", "https://host"),
    ("postgresql+psycopg://app:pw@db:5432/x?sslmode=require", "postgresql+psycopg://db:5432/x"),
    ("smtp+starttls://user:12345?key=abc@mail.test:587", "smtp+starttls://mail.test:587"),
    ("user:pw@host:25", "host:25"),
])
def test_redact_url_keeps_scheme_host_port_and_path_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_qstash_health_does_not_show_the_credentials_in_qstash_url(
    make_app: AppFactory, qstash_env: dict[str, str], captured: io.StringIO
) -> None:
    app = make_app({**qstash_env, "QSTASH_URL": PROXY_URL})
    service_log(captured)
    response = app.test_client().get("/api/admin/qstash-health",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 503
    error = response.get_json()["qstash"]["error"]
    assert error == ("list schedules: cannot reach QStash at http://127.0.0.1:9 (ConnectError); "
                     "check QSTASH_URL and the network")
    shown = response.get_data(as_text=True) + captured.getvalue() + repr(app.extensions["eleva"])
    assert "127.0.0.1:9" in shown
    for secret in (PASSWORD, "proxyuser"):
        assert secret not in shown


def test_qstash_update_does_not_show_the_credentials_in_qstash_url(
    make_app: AppFactory, qstash_env: dict[str, str], captured: io.StringIO, sleeps: list[float]
) -> None:
    app = make_app({**qstash_env, "QSTASH_URL": PROXY_URL})
    service_log(captured)
    result = app.test_cli_runner().invoke(args=["qstash", "update"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: list schedules: cannot reach QStash at http://127.0.0.1:9 (ConnectError); "
        "check QSTASH_URL and the network"]
    assert len(sleeps) == 4 and captured.getvalue().count("retrying in") == 4
    for secret in (PASSWORD, "proxyuser"):
        assert secret not in result.output + captured.getvalue()


@pytest.mark.parametrize("password", [f"12345?apikey={PASSWORD}", f"12?{PASSWORD}"])
def test_a_password_cut_short_by_a_question_mark_is_not_quoted(
    make_app: AppFactory, env: dict[str, str], password: str
) -> None:
    smtp = {"NOTIFIER": "smtp", "SMTP_URL": f"smtp://user:{password}@mail.test",
            "MAIL_FROM": "Eleva <payouts@eleva.test>"}
    with pytest.raises(ConfigurationError, match=r"^SMTP_URL .*percent-encode") as raised:
        make_app({**env, **smtp}, migrate=False)
    for part in password.split("?"):
        assert part not in str(raised.value)


def test_a_bad_stripe_api_base_is_not_quoted(make_app: AppFactory, env: dict[str, str]) -> None:
    pasted_key = f"sk_test_{PASSWORD}"  # the secret key, pasted into the wrong variable
    with pytest.raises(ConfigurationError, match=r"^STRIPE_API_BASE ") as raised:
        make_app({**env, "STRIPE_API_BASE": pasted_key}, migrate=False)
    assert PASSWORD not in str(raised.value)
