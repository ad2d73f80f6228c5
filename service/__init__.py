from __future__ import annotations

import os
from collections.abc import Mapping

from dotenv import dotenv_values
from flask import Flask

from .settings import Settings


def create_app(settings: Settings | Mapping[str, str] | None = None) -> Flask:
    """Assemble the service: settings, logging, clients, blueprints, error handlers, commands."""
    # Imported here: blueprints and commands build on this package.
    from blueprints import BLUEPRINTS
    from cli import init_app as init_cli

    from . import extensions, jobs, limits, logs, metrics
    from .errors import register_error_handlers

    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    settings = load_settings(settings)
    logs.configure_logging(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS is answered 405, like any method
    app.json.sort_keys = False  # type: ignore[attr-defined]
    extensions.init_app(app, settings, jobs.registry(BLUEPRINTS))
    logs.log_config_report(extensions.get_config_report(app))
    logs.init_request_ids(app)
    metrics.init_app(app)
    limits.init_limits(app)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    register_error_handlers(app)
    init_cli(app)
    return app


def load_settings(source: Settings | Mapping[str, str] | None) -> Settings:
    """Read settings from a mapping, or from the environment over a .env file."""
    if isinstance(source, Settings):
        return source
    if source is None:
        dotenv = {k: v for k, v in dotenv_values(".env").items() if v is not None}
        source = {**dotenv, **os.environ}
    return Settings.from_env(source)

