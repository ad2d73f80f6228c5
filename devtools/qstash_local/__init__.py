from __future__ import annotations

from .config import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_NEXT_SIGNING_KEY,
    DEV_TOKEN,
    LocalQStashConfig,
    client_settings,
)
from .core import ApiFailure, LocalQStash
from .models import DeliveryAttempt, DlqEntry, Message, PublishResult, Schedule, ScheduleState
from .parsing import ApiError
from .server import RunningServer, serve, serve_wsgi

__all__ = [
    "DEV_CURRENT_SIGNING_KEY",
    "DEV_NEXT_SIGNING_KEY",
    "DEV_TOKEN",
    "ApiError",
    "ApiFailure",
    "DeliveryAttempt",
    "DlqEntry",
    "LocalQStash",
    "LocalQStashConfig",
    "Message",
    "PublishResult",
    "RunningServer",
    "Schedule",
    "ScheduleState",
    "client_settings",
    "serve",
    "serve_wsgi",
]
