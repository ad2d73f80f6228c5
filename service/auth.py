from __future__ import annotations

import hmac

from flask import request

from .errors import ServiceUnavailable, Unauthorized
from .extensions import get_settings


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def is_admin(token: str | None) -> bool:
    """Compare a presented token with ADMIN_API_TOKEN in constant time."""
    expected = get_settings().admin_api_token
    if expected is None or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())


def require_admin_enabled() -> None:
    """Refuse admin access outright (503) while ADMIN_API_TOKEN is not set."""
    if get_settings().admin_api_token is None:
        raise ServiceUnavailable(
            "the admin API is disabled; set ADMIN_API_TOKEN to enable it",
            code="admin_api_disabled",
        )


def require_admin() -> None:
    """Refuse the request unless it carries `Authorization: Bearer <ADMIN_API_TOKEN>`."""
    require_admin_enabled()
    if not is_admin(bearer_token()):
        raise Unauthorized("send Authorization: Bearer <ADMIN_API_TOKEN>")
