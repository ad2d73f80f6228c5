from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from dotenv import dotenv_values
from flask import Blueprint, Flask

from .settings import Settings


def create_app(
    settings: Settings | Mapping[str, str] | None = None,
    *,
    blueprints: Sequence[Blueprint] | None = None,
) -> Flask:
    """Assemble the service: settings, logging, clients, blueprints, error handlers, commands.

    `blueprints` defaults to blueprints.BLUEPRINTS; tests pass it with their probe jobs added.
    """
    # Imported here: blueprints and commands build on this package, and importing any module
    # of the package runs this file first, so at the top these would import one another.
    from blueprints import BLUEPRINTS
    from cli import init_app as init_cli

    from . import extensions, limits, logs, routing
    from .errors import register_error_handlers
    from .metrics import scrape as metrics
    from .qstash.delivery import job_registry
    from .request_body import BoundedRequest
    from .settings import validate_job_settings

    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.request_class = BoundedRequest
    settings = load_settings(settings)
    logs.configure_logging(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS is answered 405, like any method
    app.json.sort_keys = False  # type: ignore[attr-defined]
    blueprints = BLUEPRINTS if blueprints is None else tuple(blueprints)
    jobs = job_registry(blueprints)
    validate_job_settings(settings, jobs)
    extensions.init_app(app, settings, jobs)
    logs.log_config_report(extensions.get_config_report(app))
    logs.init_request_ids(app)
    metrics.init_app(app)
    limits.init_limits(app)
    routing.init_routing(app)
    for bp in blueprints:
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

