from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import text

from service.db import utcnow
from service.errors import ConfigurationError
from service.extensions import get_engine, get_notifier, get_payout_provider
from service.notifications import LogChannel, SmtpChannel
from service.payouts.claims import claim_query
from service.payouts.simulated import SimulatedPayoutProvider
from service.payouts.stripe_provider import StripePayoutProvider
from service.settings import Settings
from tests.helpers import AppFactory


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.payout_provider == "simulated"
    assert settings.payout_concurrency == 8
    assert settings.payout_max_requests_per_second == 10
    assert settings.payout_delay_days.describe() == "US=2,default=7"
    assert (settings.payout_max_attempts, settings.payout_retry_backoff_seconds) == (3, 600)
    assert settings.payout_stale_after_seconds == 1200
    assert settings.notifier == "log"
    assert (settings.retention_job_runs_days, settings.retention_notifications_days) == (30, 90)


def test_values_are_parsed() -> None:
    settings = Settings.from_env({
        "PAYOUT_PROVIDER": "Stripe", "STRIPE_SECRET_KEY": "sk_test_abc",
        "STRIPE_API_BASE": "http://127.0.0.1:12111/", "PAYOUT_CONCURRENCY": "16",
        "PAYOUT_DELAY_DAYS": "US=2,BR=30,default=5", "PAYOUT_SIMULATED_FAILURE_RATE": "0.25",
        "PAYOUT_SIMULATED_LATENCY_MS": "50", "NOTIFIER": "smtp",
        "SMTP_URL": "smtps://u:p@mail.example.com", "MAIL_FROM": "Eleva <p@eleva.care>",
        "RETENTION_JOB_RUNS_DAYS": "10",
    })
    assert (settings.payout_provider, settings.stripe_api_base) == (
        "stripe", "http://127.0.0.1:12111")
    assert settings.payout_delay_days.delay("BR") == timedelta(days=30)
    assert settings.payout_delay_days.delay("PT") == timedelta(days=5)
    assert (settings.payout_simulated_failure_rate, settings.payout_simulated_latency_ms) == (
        0.25, 50)
    assert settings.retention_job_runs_days == 10
    text_form = repr(settings)
    assert "sk_test_abc" not in text_form and "smtps://" not in text_form


@pytest.mark.parametrize(("env", "variable"), [
    ({"PAYOUT_PROVIDER": "paypal"}, "PAYOUT_PROVIDER"),
    ({"PAYOUT_PROVIDER": "stripe"}, "STRIPE_SECRET_KEY"),
    ({"PAYOUT_CONCURRENCY": "0"}, "PAYOUT_CONCURRENCY"),
    ({"PAYOUT_CONCURRENCY": "65"}, "PAYOUT_CONCURRENCY"),
    ({"PAYOUT_CONCURRENCY": "many"}, "PAYOUT_CONCURRENCY"),
    ({"PAYOUT_MAX_REQUESTS_PER_SECOND": "0"}, "PAYOUT_MAX_REQUESTS_PER_SECOND"),
    ({"PAYOUT_MAX_REQUESTS_PER_SECOND": "1001"}, "PAYOUT_MAX_REQUESTS_PER_SECOND"),
    ({"PAYOUT_MAX_REQUESTS_PER_SECOND": "fast"}, "PAYOUT_MAX_REQUESTS_PER_SECOND"),
    ({"PAYOUT_DELAY_DAYS": "US=2"}, "PAYOUT_DELAY_DAYS"),
    ({"PAYOUT_DELAY_DAYS": "USA=2,default=7"}, "PAYOUT_DELAY_DAYS"),
    ({"PAYOUT_SIMULATED_FAILURE_RATE": "1.5"}, "PAYOUT_SIMULATED_FAILURE_RATE"),
    ({"PAYOUT_SIMULATED_FAILURE_RATE": "often"}, "PAYOUT_SIMULATED_FAILURE_RATE"),
    ({"PAYOUT_STALE_AFTER_SECONDS": "10"}, "PAYOUT_STALE_AFTER_SECONDS"),
    ({"STRIPE_API_BASE": "localhost:12111"}, "STRIPE_API_BASE"),
    ({"NOTIFIER": "pigeon"}, "NOTIFIER"),
    ({"NOTIFIER": "smtp", "MAIL_FROM": "a@b.c"}, "SMTP_URL"),
    ({"NOTIFIER": "smtp", "SMTP_URL": "smtp://h"}, "MAIL_FROM"),
    ({"RETENTION_JOB_RUNS_DAYS": "0"}, "RETENTION_JOB_RUNS_DAYS"),
    ({"RETENTION_NOTIFICATIONS_DAYS": "-3"}, "RETENTION_NOTIFICATIONS_DAYS"),
])
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env(env)


def test_the_simulated_provider_is_refused_in_production(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="PAYOUT_PROVIDER"):
        make_app({**env, "APP_ENV": "production"}, migrate=False)
    app = make_app({**env, "APP_ENV": "production", "PAYOUT_PROVIDER": "stripe",
                    "STRIPE_SECRET_KEY": "sk_live_abc123"}, migrate=False)
    assert isinstance(get_payout_provider(app), StripePayoutProvider)


def test_clients_are_built_from_settings(make_app: AppFactory, env: dict[str, str]) -> None:
    app = make_app(env, migrate=False)
    assert isinstance(get_payout_provider(app), SimulatedPayoutProvider)
    assert isinstance(get_notifier(app), LogChannel)
    smtp = make_app({**env, "NOTIFIER": "smtp", "SMTP_URL": "smtp+starttls://u:pw@mail.test",
                     "MAIL_FROM": "Eleva <payouts@eleva.test>"}, migrate=False)
    assert isinstance(get_notifier(smtp), SmtpChannel)


def test_a_bad_smtp_url_names_the_variable_without_the_password(
    make_app: AppFactory, env: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="SMTP_URL") as raised:
        make_app({**env, "NOTIFIER": "smtp", "SMTP_URL": "http://user:s3cret@mail.test",
                  "MAIL_FROM": "p@eleva.test"}, migrate=False)
    assert "s3cret" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="MAIL_FROM"):
        make_app({**env, "NOTIFIER": "smtp", "SMTP_URL": "smtp://mail.test",
                  "MAIL_FROM": "nobody"}, migrate=False)


def test_recovery_may_not_take_rows_from_live_runs(make_app: AppFactory, env: dict[str, str]
                                                   ) -> None:
    with pytest.raises(ConfigurationError, match="PAYOUT_STALE_AFTER_SECONDS"):
        make_app({**env, "PAYOUT_STALE_AFTER_SECONDS": "900"}, migrate=False)


def test_due_selection_uses_the_partial_indexes(app: Flask) -> None:
    engine = get_engine(app)
    now = utcnow()
    for phase, index in (("due", "ix_payment_transfers_pending_due"),
                         ("approved", "ix_payment_transfers_pending_approved")):
        for after in (None, (now, 7)):
            query = claim_query(phase, now, after, 16)
            sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            with engine.connect() as connection:
                if engine.dialect.name == "sqlite":
                    plan = " ".join(str(row[-1]) for row in connection.execute(
                        text("EXPLAIN QUERY PLAN " + sql)))
                else:
                    # Whether the planner *can* use the index, not whether it prefers it for
                    # an empty table.
                    connection.execute(text("SET enable_seqscan = off"))
                    plan = " ".join(row[0] for row in connection.execute(text("EXPLAIN " + sql)))
            assert index in plan, plan
