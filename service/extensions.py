from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .cache import HealthCache
from .db import default_database_url, make_engine, session_factory
from .errors import ConfigurationError
from .notifications import Channel, LogChannel, SmtpChannel
from .payouts.provider import PayoutProvider
from .payouts.simulated import SimulatedPayoutProvider
from .qstash.api import QStashApi
from .runs.jobs import Job
from .settings import ConfigReport, Settings, validate_qstash_config

KEY = "eleva"
HEALTH_TIMEOUT = 3.0


@dataclass(frozen=True, kw_only=True)
class Services:
    """The clients the app builds once from its settings."""

    settings: Settings
    config_report: ConfigReport
    engine: Engine
    sessions: sessionmaker[Session]
    jobs: Mapping[str, Job]
    qstash: QStashApi | None  # patient: schedule sync and publishing
    qstash_probe: QStashApi | None  # impatient: health checks must answer within seconds
    health_cache: HealthCache
    payout_provider: PayoutProvider
    notifier: Channel


def init_app(app: Flask, settings: Settings, jobs: Mapping[str, Job]) -> None:
    """Build the service's clients from settings and attach them to the app."""
    if KEY in app.extensions:
        raise RuntimeError("the eleva extensions are already initialised on this app")
    engine = make_engine(settings.database_url or default_database_url(app.instance_path))
    app.extensions[KEY] = Services(
        settings=settings,
        config_report=validate_qstash_config(settings),
        engine=engine,
        sessions=session_factory(engine),
        jobs=dict(jobs),
        qstash=_qstash(settings, timeout=10.0, attempts=5, max_wait=60.0),
        qstash_probe=_qstash(settings, timeout=HEALTH_TIMEOUT, attempts=1,
                             max_wait=HEALTH_TIMEOUT),
        health_cache=HealthCache(),
        payout_provider=_payout_provider(settings),
        notifier=_notifier(settings),
    )


def _payout_provider(settings: Settings) -> PayoutProvider:
    if settings.payout_provider == "stripe":
        assert settings.stripe_secret_key is not None  # Settings refuses stripe without it
        # Imported only when configured: the Stripe SDK (and the requests library it loads) is
        # the heaviest import of the app, and the simulated provider needs neither.
        from .payouts.stripe_provider import StripePayoutProvider

        return StripePayoutProvider(
            api_key=settings.stripe_secret_key,
            api_base=settings.stripe_api_base,
            max_network_retries=settings.stripe_max_network_retries,
            timeout=float(settings.stripe_timeout),
        )
    if settings.app_env == "production":
        raise ConfigurationError(
            "PAYOUT_PROVIDER=simulated pays nobody and is refused when APP_ENV=production; "
            "set PAYOUT_PROVIDER=stripe and STRIPE_SECRET_KEY"
        )
    return SimulatedPayoutProvider(
        latency=settings.payout_simulated_latency_ms / 1000,
        failure_rate=settings.payout_simulated_failure_rate,
    )


def _notifier(settings: Settings) -> Channel:
    if settings.notifier == "smtp":
        assert settings.smtp_url is not None and settings.mail_from is not None
        try:
            return SmtpChannel(url=settings.smtp_url, mail_from=settings.mail_from,
                               timeout=float(settings.smtp_timeout))
        except ValueError as exc:
            # The channel's messages never quote the URL's password.
            variable = "MAIL_FROM" if "mail_from" in str(exc) else "SMTP_URL"
            raise ConfigurationError(f"{variable} is invalid: {exc}") from None
    return LogChannel()


def _qstash(settings: Settings, *, timeout: float, attempts: int,
            max_wait: float) -> QStashApi | None:
    if settings.qstash_token is None:
        return None
    return QStashApi(token=settings.qstash_token, base_url=settings.qstash_url,
                     timeout=timeout, attempts=attempts, max_wait=max_wait)


def close(app: Flask) -> None:
    """Release the app's connections: database pool and HTTP clients."""
    found = services(app)
    found.engine.dispose()
    for api in (found.qstash, found.qstash_probe):
        if api is not None:
            api.close()
    close_provider = getattr(found.payout_provider, "close", None)
    if callable(close_provider):
        close_provider()  # the calling thread's connections; worker threads close their own


def services(app: Flask | None = None) -> Services:
    app = app or cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
    try:
        return cast(Services, app.extensions[KEY])
    except KeyError:
        raise RuntimeError("create the app with service.create_app()") from None


def get_settings(app: Flask | None = None) -> Settings:
    return services(app).settings


def get_sessions(app: Flask | None = None) -> sessionmaker[Session]:
    return services(app).sessions


def get_engine(app: Flask | None = None) -> Engine:
    return services(app).engine


def get_jobs(app: Flask | None = None) -> Mapping[str, Job]:
    return services(app).jobs


def get_qstash(app: Flask | None = None, *, probe: bool = False) -> QStashApi:
    """Return the QStash API client; raise ConfigurationError when QSTASH_TOKEN is unset."""
    found = services(app).qstash_probe if probe else services(app).qstash
    if found is None:
        raise ConfigurationError("QSTASH_TOKEN is missing: copy the QStash token from the "
                                 "Upstash console to talk to the QStash API")
    return found


def get_payout_provider(app: Flask | None = None) -> PayoutProvider:
    return services(app).payout_provider


def get_notifier(app: Flask | None = None) -> Channel:
    return services(app).notifier


def get_health_cache(app: Flask | None = None) -> HealthCache:
    return services(app).health_cache


def get_config_report(app: Flask | None = None) -> ConfigReport:
    return services(app).config_report
