from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .db import default_database_url, make_engine, session_factory
from .jobs import Job
from .settings import ConfigReport, Settings, validate_qstash_config

KEY = "eleva"


@dataclass(frozen=True, kw_only=True)
class Services:
    """The clients the app builds once from its settings."""

    settings: Settings
    config_report: ConfigReport
    engine: Engine
    sessions: sessionmaker[Session]
    jobs: Mapping[str, Job]


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
    )


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


def get_config_report(app: Flask | None = None) -> ConfigReport:
    return services(app).config_report
