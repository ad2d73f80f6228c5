from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service import db
from service.errors import ConfigurationError
from service.settings import Settings, validate_qstash_config
from tests.helpers import CURRENT_KEY, NEXT_KEY

COMPLETE = {
    "APP_URL": "https://jobs.example.com/",
    "QSTASH_TOKEN": "token",
    "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
    "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
}


def problems(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    report = validate_qstash_config(Settings.from_env(env))
    return {p.variable: (p.problem, p.severity) for p in report.problems}


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.app_env == "development"
    assert settings.service_name == "eleva-jobs"
    assert settings.qstash_clock_tolerance == 30
    assert settings.log_format == "json"
    assert settings.database_url is None
    assert settings.max_body_bytes == 1024 * 1024


def test_values_are_parsed_and_normalised() -> None:
    settings = Settings.from_env({
        **COMPLETE, "QSTASH_CLOCK_TOLERANCE": "5", "APP_ENV": "Production",
        "LOG_LEVEL": "debug", "LOG_FORMAT": "TEXT", "QSTASH_URL": "http://127.0.0.1:8080/",
        "JOB_PROCESS_TASKS_CRON": "0 5 * * *", "UNRELATED": "x",
    })
    assert settings.app_url == "https://jobs.example.com"
    assert settings.qstash_url == "http://127.0.0.1:8080"
    assert (settings.qstash_clock_tolerance, settings.app_env) == (5, "production")
    assert (settings.log_level, settings.log_format) == ("DEBUG", "text")
    assert settings.job_env == {"JOB_PROCESS_TASKS_CRON": "0 5 * * *"}


def test_next_public_app_url_is_an_alias() -> None:
    assert Settings.from_env({"NEXT_PUBLIC_APP_URL": "https://a.example"}).app_url == \
        "https://a.example"
    both = {"APP_URL": "https://b.example", "NEXT_PUBLIC_APP_URL": "https://a.example"}
    assert Settings.from_env(both).app_url == "https://b.example"


@pytest.mark.parametrize(("env", "variable"), [
    ({"QSTASH_CLOCK_TOLERANCE": "soon"}, "QSTASH_CLOCK_TOLERANCE"),
    ({"QSTASH_CLOCK_TOLERANCE": "-1"}, "QSTASH_CLOCK_TOLERANCE"),
    ({"APP_ENV": "prod"}, "APP_ENV"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"SERVICE_NAME": "eleva jobs"}, "SERVICE_NAME"),
])
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings.from_env({**COMPLETE, "ADMIN_API_TOKEN": "admin-secret"}))
    for secret in (CURRENT_KEY, NEXT_KEY, "admin-secret", "token"):
        assert secret not in text


def test_urls_in_repr_carry_no_credentials() -> None:
    text = repr(Settings.from_env({
        **COMPLETE, "APP_URL": "https://u:app-pw@jobs.example.com",
        "QSTASH_URL": "http://proxyuser:proxy-pw@127.0.0.1:9",
        "STRIPE_API_BASE": "http://s:stripe-pw@127.0.0.1:12111",
        "DATABASE_URL": "postgresql://app:db-pw@db/x", "NOTIFIER": "smtp",
        "SMTP_URL": "smtp://u:smtp-pw@mail.test", "MAIL_FROM": "p@eleva.test",
    }))
    assert "qstash_url='http://127.0.0.1:9'" in text
    assert "app_url='https://jobs.example.com'" in text
    for secret in ("app-pw", "proxyuser", "proxy-pw", "stripe-pw", "db-pw", "smtp-pw"):
        assert secret not in text


def test_scrub_takes_every_configured_secret_out_of_text() -> None:
    settings = Settings.from_env({
        **COMPLETE, "ADMIN_API_TOKEN": "admin-secret", "QSTASH_TOKEN": "qstash-tok",
        "DATABASE_URL": "postgresql://app:p%40ss-w/rd@db/x", "NOTIFIER": "smtp",
        "SMTP_URL": 'smtp://u:mail"pass@mail.test', "MAIL_FROM": "p@eleva.test",
    })
    text = (f"{CURRENT_KEY} {NEXT_KEY} admin-secret qstash-tok p%40ss-w/rd p@ss-w/rd "
            '{"url": "smtp://u:mail\\"pass@mail"} sk_test_abc123 rk_live_xyz whsec_q1')
    assert settings.scrub(text) == ('[redacted] [redacted] [redacted] [redacted] [redacted] '
                                    '[redacted] {"url": "smtp://u:[redacted]@mail"} '
                                    '[redacted] [redacted] [redacted]')
    # Too short to scrub without garbling every line it occurs in; names stay readable.
    short = Settings.from_env({**COMPLETE, "DATABASE_URL": "postgresql://app:pw@db/x"})
    assert short.scrub("app:pw@db, sent 2 notices") == "app:pw@db, sent 2 notices"


def test_complete_configuration_is_valid() -> None:
    report = validate_qstash_config(Settings.from_env(COMPLETE))
    assert report.valid
    assert report.problems == ()


def test_everything_missing_is_reported_with_fixes() -> None:
    report = validate_qstash_config(Settings.from_env({}))
    assert not report.valid
    assert {p.variable for p in report.problems} == {
        "APP_URL", "QSTASH_TOKEN", "QSTASH_CURRENT_SIGNING_KEY", "QSTASH_NEXT_SIGNING_KEY"}
    assert all(p.problem == "missing" and p.fix for p in report.problems)


def test_empty_values_count_as_missing() -> None:
    assert problems({**COMPLETE, "QSTASH_TOKEN": "  "})["QSTASH_TOKEN"] == ("missing", "error")


def test_signing_keys_must_carry_their_prefix() -> None:
    found = problems({**COMPLETE, "QSTASH_CURRENT_SIGNING_KEY": "7kYjw48mhY7kAjqNGcy6cr29RJ6r"})
    assert found == {"QSTASH_CURRENT_SIGNING_KEY": ("does not start with 'sig_'", "error")}


@pytest.mark.parametrize("url", ["jobs.example.com", "ftp://jobs.example.com", "https://",
                                 "https://jobs.example.com/?x=1"])
def test_app_url_must_be_absolute_http(url: str) -> None:
    assert "APP_URL" in problems({**COMPLETE, "APP_URL": url})


def test_equal_keys_are_only_a_warning() -> None:
    env = {**COMPLETE, "QSTASH_NEXT_SIGNING_KEY": CURRENT_KEY}
    report = validate_qstash_config(Settings.from_env(env))
    assert report.valid
    assert problems(env) == {
        "QSTASH_NEXT_SIGNING_KEY": ("equal to QSTASH_CURRENT_SIGNING_KEY", "warning")}


def test_report_serialises_without_secrets() -> None:
    env = {**COMPLETE, "QSTASH_NEXT_SIGNING_KEY": "bad-secret-value"}
    data = validate_qstash_config(Settings.from_env(env)).to_dict()
    assert data["valid"] is False
    assert data["problems"] == [{"variable": "QSTASH_NEXT_SIGNING_KEY",
                                 "problem": "does not start with 'sig_'",
                                 "fix": data["problems"][0]["fix"],  # type: ignore[index]
                                 "severity": "error"}]
    assert "bad-secret-value" not in str(data)


def test_an_sqlite_without_returning_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigurationError, match=r"SQLite is 3\.31\.1.*3\.35 or later"):
        db.make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
