from __future__ import annotations

from flask import Flask, request

from .errors import AppError

# Below gunicorn's own limits (gunicorn.conf.py), so that the app, not the server, answers
# oversized requests, and answers in JSON.
MAX_URL_BYTES = 4096
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 100
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def init_limits(app: Flask) -> None:
    """Refuse requests with an oversized URL or headers before any view reads them."""

    @app.before_request
    def check_sizes() -> None:
        if len(request.full_path) > MAX_URL_BYTES:
            raise AppError(f"the URL is longer than {MAX_URL_BYTES} bytes", code="uri_too_long",
                           status=414)
        headers = list(request.headers.items())
        if len(headers) > MAX_HEADERS or any(
            len(name) + len(value) > MAX_HEADER_BYTES for name, value in headers
        ):
            raise AppError(
                f"at most {MAX_HEADERS} headers of at most {MAX_HEADER_BYTES} bytes each",
                code="headers_too_large", status=431,
            )
        if request.method in BODY_METHODS:
            # Read the body, and so bound it (413 over MAX_BODY_BYTES), before any guard or
            # view: every endpoint that takes a body refuses an oversized one, whether or not
            # it would have read it. The views then read it from this cache.
            request.get_data(cache=True)
