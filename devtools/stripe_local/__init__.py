from __future__ import annotations

from .app import create_app
from .models import PAYMENT_STATUSES, LocalPayment, PaymentStatus, RecordedRequest
from .server import StripeLocalServer, main, serve
from .state import DEFAULT_API_KEY, StripeLocal
from .wire import StripeLocalError, decode_params

__all__ = [
    "DEFAULT_API_KEY",
    "PAYMENT_STATUSES",
    "LocalPayment",
    "PaymentStatus",
    "RecordedRequest",
    "StripeLocal",
    "StripeLocalError",
    "StripeLocalServer",
    "create_app",
    "decode_params",
    "main",
    "serve",
]
