from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PayoutError(Exception):
    """A request the payouts domain refuses; `code` is stable, the message is for people.

    The HTTP layer and the CLI decide how to show it: the domain knows no status codes.
    """

    code = "payout_error"

    def __init__(self, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = dict(extra or {})


class InvalidInput(PayoutError):
    """Fields that fail validation, each with what is wrong."""

    code = "validation_failed"

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.fields = dict(errors)
        super().__init__(f"invalid fields: {', '.join(sorted(errors))}",
                         extra={"fields": self.fields})


class NotFound(PayoutError):
    code = "not_found"


class ExpertNotFound(NotFound):
    code = "expert_not_found"


class TransferNotFound(NotFound):
    code = "transfer_not_found"


class Conflict(PayoutError):
    """The request contradicts the state of the payout records."""

    code = "conflict"


class TransferConflict(Conflict):
    """The payment is already registered with other details."""

    code = "transfer_conflict"


class ApprovalNotRequired(Conflict):
    code = "approval_not_required"


class NotPending(Conflict):
    """Only a pending transfer can be approved."""

    code = "not_pending"
