from __future__ import annotations

from service.notifications.channels import Channel, DeliveryError, LogChannel, SmtpChannel
from service.notifications.render import (
    Notice,
    RenderedEmail,
    UnknownNoticeKind,
    format_money,
    render_notice,
)

__all__ = [
    "Channel",
    "DeliveryError",
    "LogChannel",
    "Notice",
    "RenderedEmail",
    "SmtpChannel",
    "UnknownNoticeKind",
    "format_money",
    "render_notice",
]
