from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, Response, jsonify
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("eleva.errors")

NON_RETRYABLE_STATUS = 489
NON_RETRYABLE_HEADERS = {"Upstash-NonRetryable-Error": "true"}


class ConfigurationError(click.ClickException):
    """A setting is missing or invalid; the message names the variable and the fix.

    A click exception, so that the `flask` command prints it as one line and exits 1.
    """


class AppError(Exception):
    """An error answered as JSON: {"error": code, "message": message, ...extra}."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class NonRetryable(AppError):
    """Refuse a QStash delivery so that QStash stops retrying it (status 489)."""

    status = NON_RETRYABLE_STATUS

    def __init__(self, message: str, *, code: str, extra: Mapping[str, Any] | None = None):
        super().__init__(message, code=code, headers=NON_RETRYABLE_HEADERS, extra=extra)


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, code=code, headers=headers, extra=extra)


class ValidationFailed(AppError):
    status = 422
    code = "validation_failed"

    def __init__(self, errors: Mapping[str, str]) -> None:
        fields = ", ".join(sorted(errors))
        super().__init__(f"invalid fields: {fields}", extra={"fields": dict(errors)})


def json_error(status: int, code: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    """Render every error, including routing 404/405 and unexpected exceptions, as JSON."""

    @app.errorhandler(AppError)
    def app_error(exc: AppError) -> Response:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = "payload_too_large" if exc.code == 413 else _http_code(exc)
        response = json_error(exc.code or 500, code, exc.description or code)
        if exc.code == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(exc: DBAPIError) -> Response:
        log.error("database unavailable (%s); answering 503 so the caller retries",
                  type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        response = json_error(503, "database_unavailable",
                              "the database is unreachable; the request can be retried")
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error: %s", type(exc).__name__)
        return json_error(
            500, "internal_error", "the server failed to handle the request; see its logs"
        )
