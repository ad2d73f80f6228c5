from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from service.notifications.render import Notice, RenderedEmail, render_notice

logger = logging.getLogger("eleva.notifications")

MESSAGE_ID_DOMAIN: Final = "eleva-jobs"

Security = Literal["plain", "starttls", "tls"]

_SCHEMES: Final[dict[str, tuple[Security, int]]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


class DeliveryError(Exception):
    """A notice could not be delivered; `retryable` says whether a later attempt may succeed."""

    def __init__(
        self, message: str, *, code: str, retryable: bool, smtp_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.smtp_code = smtp_code


class Channel(Protocol):
    """Something that delivers a notice to its recipient."""

    name: str

    def send(self, notice: Notice) -> None: ...


@dataclass(frozen=True, kw_only=True)
class SmtpUrl:
    """Connection settings parsed from an SMTP URL."""

    security: Security
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    verify: bool


def parse_smtp_url(url: str) -> SmtpUrl:
    """Parse an smtp://, smtp+starttls:// or smtps:// URL into connection settings."""
    # No message below quotes the URL or any part of its user info: it may carry the password.
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        # urlsplit's own messages can quote the whole netloc, password included.
        raise ValueError(
            "SMTP URL is malformed (check the host, and percent-encode the password)"
        ) from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError("SMTP URL must start with smtp://, smtp+starttls:// or smtps://")
    security, default_port = scheme
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(
            "SMTP URL must not have a path or fragment "
            "(percent-encode '/', '?', '#' and '@' in the user name and password)"
        )
    host = parts.hostname
    if not host:
        raise ValueError("SMTP URL has no host")
    try:
        port = default_port if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError("SMTP URL port must be a number from 1 to 65535")

    try:
        username = unquote(parts.username, errors="strict") if parts.username else None
        password = unquote(parts.password, errors="strict") if parts.password else None
    except UnicodeDecodeError:
        raise ValueError(
            "SMTP URL user name or password is not valid percent-encoded UTF-8"
        ) from None
    if username is None and password is not None:
        raise ValueError("SMTP URL has a password but no user name")
    if username is not None and password is None:
        raise ValueError("SMTP URL has a user name but no password")

    options = _parse_options(parts.query)
    verify = options.pop("verify", True)
    starttls = options.pop("starttls", None)
    if starttls is not None:
        if parts.scheme.lower() != "smtp":
            raise ValueError("SMTP URL option 'starttls' only applies to smtp:// URLs")
        security = "starttls" if starttls else "plain"
    return SmtpUrl(
        security=security,
        host=host,
        port=port,
        username=username,
        password=password,
        verify=verify,
    )


def message_id_for(dedup_key: str) -> str:
    """Return the Message-ID every send of the notice with this dedup key carries."""
    digest = hashlib.sha256(dedup_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{MESSAGE_ID_DOMAIN}>"


def mask_email(address: str) -> str:
    """Mask an address for logs, e.g. "a***@example.com"."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def build_message(notice: Notice, *, mail_from: str) -> EmailMessage:
    """Build the multipart/alternative email for a notice."""
    recipient = notice.recipient.strip()
    if "@" not in recipient or parseaddr(recipient)[1] != recipient:
        raise ValueError("notice recipient is not a bare email address")
    rendered = render_notice(notice)
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = recipient
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(usegmt=True)
    # Derived from the dedup key so that a re-send after an uncertain failure carries the same
    # Message-ID and mail systems (and people) can recognise it as the same message.
    message["Message-ID"] = message_id_for(notice.dedup_key)
    # RFC 3834: keeps vacation responders and ticket systems from replying to a robot.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class SmtpChannel:
    """Deliver notices as email through an SMTP server.

    `url` is smtp://[user:password@]host[:port] (plain, port 25; add ?starttls=true to upgrade
    with STARTTLS), smtp+starttls://... (port 587) or smtps://... (implicit TLS, port 465). The
    user name and password are percent-decoded. ?verify=false skips certificate verification and
    is meant only for local test servers with self-signed certificates, never for production.
    """

    name = "smtp"

    def __init__(self, *, url: str, mail_from: str, timeout: float = 10.0) -> None:
        self._server = parse_smtp_url(url)
        credentials = (self._server.username or "") + (self._server.password or "")
        if not credentials.isascii():
            # smtplib encodes AUTH exchanges as ASCII and would fail on every send instead.
            raise ValueError("SMTP URL user name and password must be ASCII")
        envelope_from = parseaddr(mail_from)[1]
        if "@" not in envelope_from:
            raise ValueError(
                "mail_from must be an email address, e.g. 'Eleva Care <payouts@eleva.care>'"
            )
        if timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._mail_from = mail_from
        self._envelope_from = envelope_from
        self._timeout = timeout

    def __repr__(self) -> str:
        server = self._server
        return (
            f"SmtpChannel(security={server.security!r}, host={server.host!r}, "
            f"port={server.port}, username={server.username!r}, verify={server.verify})"
        )

    def send(self, notice: Notice) -> None:
        """Deliver the notice, raising DeliveryError when it was not accepted."""
        with _rendering(notice):
            message = build_message(notice, mail_from=self._mail_from)
        try:
            self._deliver(message, recipient=notice.recipient.strip())
        except smtplib.SMTPAuthenticationError as exc:
            # Not chained: the exchange that failed is the one carrying the credentials.
            raise self._error_for(exc) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise self._error_for(exc) from exc
        logger.info(
            "notice delivered kind=%s dedup_key=%s to=%s message_id=%s",
            notice.kind,
            notice.dedup_key,
            mask_email(notice.recipient),
            message["Message-ID"],
        )

    def _deliver(self, message: EmailMessage, *, recipient: str) -> None:
        server = self._server
        client = self._connect()
        try:
            _greet(client)
            if server.security == "starttls":
                # Raises SMTPNotSupportedError when the server does not offer it: asking for
                # STARTTLS means never falling back to plain text.
                client.starttls(context=_tls_context(verify=server.verify))
                _greet(client)
            if server.username is not None and server.password is not None:
                client.login(server.username, server.password)
            client.send_message(message, from_addr=self._envelope_from, to_addrs=[recipient])
        finally:
            _quit_quietly(client)

    def _connect(self) -> smtplib.SMTP:
        server = self._server
        if server.security == "tls":
            return smtplib.SMTP_SSL(
                server.host,
                server.port,
                timeout=self._timeout,
                context=_tls_context(verify=server.verify),
            )
        return smtplib.SMTP(server.host, server.port, timeout=self._timeout)

    def _error_for(self, exc: smtplib.SMTPException | OSError) -> DeliveryError:
        error = _classify(exc)
        password = self._server.password
        text = str(error)
        if password and password in text:
            return DeliveryError(
                text.replace(password, "***"),
                code=error.code,
                retryable=error.retryable,
                smtp_code=error.smtp_code,
            )
        return error


class LogChannel:
    """Log notices instead of sending them, for local development."""

    name = "log"

    def send(self, notice: Notice) -> None:
        """Log one line describing the notice."""
        with _rendering(notice):
            rendered: RenderedEmail = render_notice(notice)
        logger.info(
            "notice kind=%s dedup_key=%s to=%s subject=%r",
            notice.kind,
            notice.dedup_key,
            mask_email(notice.recipient),
            rendered.subject,
        )


@contextmanager
def _rendering(notice: Notice) -> Iterator[None]:
    # A payload that cannot be rendered will not render on the next attempt either.
    try:
        yield
    except ValueError as exc:
        raise DeliveryError(
            f"notice {notice.dedup_key} cannot be rendered: {exc}",
            code="render_failed",
            retryable=False,
        ) from exc


def _parse_options(query: str) -> dict[str, bool]:
    options: dict[str, bool] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in ("starttls", "verify"):
            raise ValueError(
                f"SMTP URL option {key!r} is not supported; the options are starttls and verify"
            )
        if key in options:
            raise ValueError(f"SMTP URL option {key!r} is given twice")
        flag = value.strip().lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"SMTP URL option {key!r} must be true or false")
        options[key] = flag in _TRUE
    return options


def _tls_context(*, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        # Development only (?verify=false): local test servers use self-signed certificates.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _quit_quietly(client: smtplib.SMTP) -> None:
    # The outcome is decided by then: a failing QUIT must not turn an accepted message into a
    # retry, which would send it twice.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _greet(client: smtplib.SMTP) -> None:
    """Say EHLO (HELO to a server that knows only that); raise a refusal instead of going on.

    smtplib only records a refused EHLO: the next step would then fail as "STARTTLS (or AUTH)
    not supported", a permanent error, although a 421 only asks to be tried again later.
    """
    code, reply = client.ehlo()
    if 200 <= code < 300:
        return
    if 500 <= code < 600:  # EHLO unknown to the server: greet the old way
        code, reply = client.helo()
        if 200 <= code < 300:
            return
    raise smtplib.SMTPHeloError(code, reply)


def _classify(exc: smtplib.SMTPException | OSError) -> DeliveryError:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _reply_error(
            "SMTP authentication failed", exc.smtp_code, exc.smtp_error, code="auth_failed"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (-1, b""))
        return _reply_error("recipient refused by the SMTP server", code, reply)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return _reply_error("sender refused by the SMTP server", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPDataError):
        return _reply_error("message refused by the SMTP server", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_error("SMTP server refused the session", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # The server lacks something the configuration requires (STARTTLS, AUTH, SMTPUTF8).
        return DeliveryError(
            f"SMTP server does not support what is required: {exc}",
            code="not_supported",
            retryable=False,
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        timed_out = isinstance(exc.__context__, TimeoutError)
        return DeliveryError(
            "SMTP server timed out" if timed_out else "SMTP server closed the connection",
            code="timeout" if timed_out else "disconnected",
            retryable=True,
        )
    if isinstance(exc, smtplib.SMTPException):
        # e.g. "No suitable authentication method found": a configuration problem.
        return DeliveryError(f"SMTP error: {exc}", code="smtp_error", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryError(
            f"SMTP server certificate rejected: {exc.verify_message}",
            code="tls_failed",
            retryable=False,
        )
    if isinstance(exc, ssl.SSLError):
        return DeliveryError(
            f"TLS handshake failed: {exc.reason}", code="tls_failed", retryable=True
        )
    if isinstance(exc, TimeoutError):
        return DeliveryError("SMTP server timed out", code="timeout", retryable=True)
    return DeliveryError(
        f"cannot connect to the SMTP server: {exc.strerror or exc}",
        code="connection_failed",
        retryable=True,
    )


def _reply_error(
    what: str, smtp_code: int, reply: bytes | str, *, code: str | None = None
) -> DeliveryError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    text = " ".join(text.split())[:200]
    temporary = 400 <= smtp_code < 500
    if code is None:
        code = "temporary_rejection" if temporary else "permanent_rejection"
    # Malformed replies (no code) are treated like temporary ones: retrying is the safe side.
    retryable = temporary or not 500 <= smtp_code < 600
    return DeliveryError(
        f"{what}: {smtp_code} {text}".rstrip(),
        code=code,
        retryable=retryable,
        smtp_code=smtp_code,
    )
