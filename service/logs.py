from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from flask import Flask, Response, g, request

from .settings import ConfigReport, Settings

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_context")
LOG_FIELDS = ("request_id", "message_id", "job", "run_id")


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Attach fields (request id, message id, job, run id) to every log line in this block."""
    merged = {**_context.get({}), **{k: v for k, v in fields.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get({}).items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        for key in LOG_FIELDS:
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            entry.update(event)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{k}={getattr(record, k)}" for k in LOG_FIELDS if getattr(record, k, None)]
        record.context = (" " + " ".join(parts)) if parts else ""
        return super().format(record)


class ScrubbingFormatter(logging.Formatter):
    """Format with another formatter, then take secrets out of the line (Settings.scrub)."""

    def __init__(self, inner: logging.Formatter, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.inner = inner
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(self.inner.format(record))


def configure_logging(settings: Settings) -> None:
    """Send the service's logs to stdout, one JSON object per line unless LOG_FORMAT=text."""
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name("eleva")
    handler.addFilter(ContextFilter())
    formatter: logging.Formatter = (
        JsonFormatter(settings.service_name) if settings.log_format == "json" else TextFormatter()
    )
    handler.setFormatter(ScrubbingFormatter(formatter, settings.scrub))
    logger = logging.getLogger("eleva")
    # Replace our own handler only, so repeated factory calls (tests, CLI) do not stack handlers.
    for existing in list(logger.handlers):
        if existing.get_name() == "eleva":
            logger.removeHandler(existing)
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False


def log_config_report(report: ConfigReport) -> None:
    """Say at start-up, one line per problem, what the QStash configuration lacks."""
    log = logging.getLogger("eleva.config")
    for problem in report.problems:
        log.warning("configuration problem: %s", problem,
                    extra={"event": {"variable": problem.variable,
                                     "severity": problem.severity}})


def init_request_ids(app: Flask) -> None:
    """Give every request an id (the caller's X-Request-Id when sane) and echo it back."""

    @app.before_request
    def assign() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        valid = 0 < len(incoming) <= 128 and incoming.isprintable() and " " not in incoming
        g.request_id = incoming if valid else uuid.uuid4().hex
        g.log_scope = log_context(request_id=g.request_id)
        g.log_scope.__enter__()

    @app.after_request
    def echo(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-Id"] = request_id
        return response

    @app.teardown_request
    def close(_exc: BaseException | None) -> None:
        scope = g.pop("log_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)
