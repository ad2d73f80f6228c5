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
from .jobs import Job
from .qstash_api import QStashApi
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
    )


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


def get_health_cache(app: Flask | None = None) -> HealthCache:
    return services(app).health_cache


def get_config_report(app: Flask | None = None) -> ConfigReport:
    return services(app).config_report
