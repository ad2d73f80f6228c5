from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from service.notifications import Notice

HOST = "127.0.0.1"


RECIPIENT = "ana@example.com"


MAIL_FROM = "Eleva Care <payouts@eleva.test>"


PAYLOADS: Mapping[str, Mapping[str, Any]] = {
    "upcoming_payout": {
        "first_name": "Ana",
        "amount": 123450,
        "currency": "eur",
        "scheduled_date": "2025-03-14",
    },
    "payout_sent": {
        "first_name": "Ana",
        "amount": 123450,
        "currency": "eur",
        "sent_date": "2025-03-14",
        "reference": "42",
    },
    "payout_failed": {
        "first_name": "Ana",
        "amount": 123450,
        "currency": "eur",
        "reference": "42",
    },
}


def make_notice(kind: str = "upcoming_payout", /, **payload: Any) -> Notice:
    """Build a valid notice of `kind`, with payload fields overridden by keyword."""
    return Notice(
        recipient=RECIPIENT,
        kind=kind,
        payload={**PAYLOADS.get(kind, {}), **payload},
        dedup_key=f"{kind}:42",
    )


class RecordingHandler:
    """Record accepted messages; refuse RCPT or DATA with a fixed reply when told to."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.over_tls: list[bool] = []
        self.authenticated: list[bool] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        self.envelopes.append(envelope)
        assert server.transport is not None
        # Covers implicit TLS too, which aiosmtpd does not record in session.ssl.
        self.over_tls.append(server.transport.get_extra_info("ssl_object") is not None)
        self.authenticated.append(bool(session.authenticated))
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        """The accepted messages, parsed."""
        found = []
        for envelope in self.envelopes:
            assert isinstance(envelope.original_content, bytes)
            message = message_from_bytes(envelope.original_content, policy=policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found


class Authenticator:
    """Accept exactly one login and password; remember every attempt's login."""

    def __init__(self, *, login: str, password: str) -> None:
        self.login = login
        self.password = password
        self.attempts: list[str] = []

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.attempts.append(auth_data.login.decode())
        ok = (auth_data.login.decode(), auth_data.password.decode()) == (self.login, self.password)
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    handler: RecordingHandler
    port: int

    def url(self, scheme: str = "smtp", *, userinfo: str = "", query: str = "") -> str:
        at = "@" if userinfo else ""
        suffix = f"?{query}" if query else ""
        return f"{scheme}://{userinfo}{at}{HOST}:{self.port}{suffix}"


StartSmtp = Callable[..., SmtpServer]
