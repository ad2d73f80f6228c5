from __future__ import annotations

import re
import socket
import ssl
import traceback
from email.message import EmailMessage
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.notifications import Channel, DeliveryError, Notice, SmtpChannel, render_notice
from service.notifications.channels import message_id_for
from tests.helpers import free_port
from tests.notifications.helpers import (
    HOST,
    MAIL_FROM,
    RECIPIENT,
    Authenticator,
    RecordingHandler,
    SmtpServer,
    StartSmtp,
    make_notice,
)

LOGIN = "payouts@eleva.test"
PASSWORD = "s3cr3t:p@ss/w?rd%#"


def channel(url: str, *, timeout: float = 5.0) -> SmtpChannel:
    return SmtpChannel(url=url, mail_from=MAIL_FROM, timeout=timeout)


def credentials(login: str = LOGIN, password: str = PASSWORD) -> str:
    return f"{quote(login, safe='')}:{quote(password, safe='')}"


def test_delivers_a_multipart_message(smtp_server: SmtpServer) -> None:
    notice = make_notice("payout_sent")
    sender: Channel = channel(smtp_server.url())

    sender.send(notice)

    [envelope] = smtp_server.handler.envelopes
    assert envelope.mail_from == "payouts@eleva.test"
    assert envelope.rcpt_tos == [RECIPIENT]
    [message] = smtp_server.handler.messages()
    rendered = render_notice(notice)
    assert message["From"] == MAIL_FROM
    assert message["To"] == RECIPIENT
    assert message["Subject"] == rendered.subject
    assert message["Date"]
    assert message["Auto-Submitted"] == "auto-generated"
    assert re.fullmatch(r"<[0-9a-f]{32}@eleva-jobs>", message["Message-ID"])
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    # SMTP carries CRLF line endings.
    assert text.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html
    assert "We sent your payout of €1,234.50" in text.get_content()
    assert "<strong>€1,234.50</strong>" in html.get_content()
    assert smtp_server.handler.over_tls == [False]


def test_message_id_is_derived_from_the_dedup_key(smtp_server: SmtpServer) -> None:
    sender = channel(smtp_server.url())
    notice = make_notice()
    other = Notice(
        recipient=notice.recipient,
        kind=notice.kind,
        payload=notice.payload,
        dedup_key="upcoming_payout:43",
    )

    sender.send(notice)
    sender.send(notice)
    sender.send(other)

    first, again, different = (message["Message-ID"] for message in smtp_server.handler.messages())
    assert first == again == message_id_for(notice.dedup_key)
    assert different == message_id_for("upcoming_payout:43") != first


# Plain-text AUTH keeps these tests independent of TLS; aiosmtpd only warns when it is also told
# to require AUTH, so the server offers AUTH and the handler records whether it happened.
def test_authenticates_with_decoded_credentials(start_smtp: StartSmtp) -> None:
    authenticator = Authenticator(login=LOGIN, password=PASSWORD)
    server = start_smtp(authenticator=authenticator, auth_require_tls=False)

    channel(server.url(userinfo=credentials())).send(make_notice())

    assert authenticator.attempts == [LOGIN]
    assert server.handler.authenticated == [True]


def test_wrong_password_is_permanent_and_not_revealed(start_smtp: StartSmtp) -> None:
    authenticator = Authenticator(login=LOGIN, password=PASSWORD)
    server = start_smtp(authenticator=authenticator, auth_require_tls=False)
    wrong = "wr0ng-p@ss:word"
    sender = channel(server.url(userinfo=credentials(password=wrong)))

    with pytest.raises(DeliveryError) as excinfo:
        sender.send(make_notice())

    error = excinfo.value
    assert (error.retryable, error.code, error.smtp_code) == (False, "auth_failed", 535)
    report = "".join(traceback.format_exception(error)) + repr(error) + repr(sender)
    for secret in (wrong, quote(wrong, safe="")):
        assert secret not in report
    assert authenticator.attempts
    assert server.handler.envelopes == []


def test_starttls_scheme_upgrades_before_sending(
    start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    authenticator = Authenticator(login=LOGIN, password=PASSWORD)
    # aiosmtpd only offers AUTH once TLS is up, so this also shows the login happens after it.
    server = start_smtp(tls_context=server_tls, require_starttls=True, authenticator=authenticator)

    url = server.url("smtp+starttls", userinfo=credentials(), query="verify=false")
    channel(url).send(make_notice())

    assert server.handler.over_tls == [True]
    assert server.handler.authenticated == [True]
    assert authenticator.attempts == [LOGIN]


def test_starttls_option_upgrades_plain_smtp(
    start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    server = start_smtp(tls_context=server_tls, require_starttls=True)

    channel(server.url(query="starttls=true&verify=false")).send(make_notice())

    assert server.handler.over_tls == [True]


def test_plain_smtp_does_not_upgrade_on_its_own(
    start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    server = start_smtp(tls_context=server_tls, require_starttls=True)

    with pytest.raises(DeliveryError) as excinfo:
        channel(server.url()).send(make_notice())

    # The server insists on STARTTLS ("530 Must issue a STARTTLS command first").
    assert (excinfo.value.retryable, excinfo.value.smtp_code) == (False, 530)
    assert server.handler.envelopes == []


def test_starttls_is_never_skipped_when_the_server_lacks_it(smtp_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as excinfo:
        channel(smtp_server.url("smtp+starttls", query="verify=false")).send(make_notice())

    assert (excinfo.value.retryable, excinfo.value.code) == (False, "not_supported")
    assert smtp_server.handler.envelopes == []


class BusyGreeting(RecordingHandler):
    """Answers EHLO with a temporary refusal, as a mail server shedding load does."""

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        return ["421 4.3.2 Service not available, try again later"]


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtp"])
def test_a_temporary_refusal_of_ehlo_is_retried_not_failed(scheme: str) -> None:
    # Read as "STARTTLS not supported", it used to fail every notice of the run for good.
    handler, port = BusyGreeting(), free_port()
    controller = Controller(handler, hostname=HOST, port=port, ready_timeout=5.0)
    controller.start()
    try:
        with pytest.raises(DeliveryError) as excinfo:
            channel(f"{scheme}://{credentials()}@{HOST}:{port}?verify=false").send(make_notice())
    finally:
        controller.stop()
    assert (excinfo.value.retryable, excinfo.value.code, excinfo.value.smtp_code) == (
        True, "temporary_rejection", 421)
    assert handler.envelopes == []


def refused_as_unverified(server: SmtpServer, scheme: str) -> DeliveryError:
    """Send to a server with a self-signed certificate; it must fail for good, sending nothing."""
    with pytest.raises(DeliveryError) as excinfo:
        channel(server.url(scheme)).send(make_notice())
    assert (excinfo.value.retryable, excinfo.value.code) == (False, "tls_failed")
    assert server.handler.envelopes == []
    return excinfo.value


def test_starttls_verifies_certificates_by_default(
    start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    server = start_smtp(tls_context=server_tls)

    error = refused_as_unverified(server, "smtp+starttls")

    assert "self-signed certificate" in str(error)


def test_implicit_tls(start_smtp: StartSmtp, server_tls: ssl.SSLContext) -> None:
    server = start_smtp(ssl_context=server_tls)

    channel(server.url("smtps", query="verify=false")).send(make_notice())

    assert server.handler.over_tls == [True]
    assert len(server.handler.messages()) == 1


def test_implicit_tls_verifies_certificates_by_default(
    start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    server = start_smtp(ssl_context=server_tls)

    refused_as_unverified(server, "smtps")


def test_server_down_is_retryable_and_a_retry_delivers_once(start_smtp: StartSmtp) -> None:
    port = free_port()
    sender = channel(f"smtp://{HOST}:{port}")
    notice = make_notice()

    with pytest.raises(DeliveryError) as excinfo:
        sender.send(notice)
    assert (excinfo.value.retryable, excinfo.value.code) == (True, "connection_failed")

    server = start_smtp(port=port)
    sender.send(notice)

    [message] = server.handler.messages()
    assert message["Message-ID"] == message_id_for(notice.dedup_key)


def test_silent_server_times_out_as_retryable() -> None:
    # Accepted by the kernel's backlog but never greeted.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]

        with pytest.raises(DeliveryError) as excinfo:
            channel(f"smtp://{HOST}:{port}", timeout=0.2).send(make_notice())

    assert (excinfo.value.retryable, excinfo.value.code) == (True, "timeout")


@pytest.mark.parametrize(
    ("stage", "reply", "retryable", "code"),
    [
        ("rcpt", "451 4.3.0 Try again later", True, "temporary_rejection"),
        ("rcpt", "550 5.1.1 No such user", False, "permanent_rejection"),
        ("data", "451 4.3.0 Try again later", True, "temporary_rejection"),
        ("data", "554 5.7.1 Message rejected", False, "permanent_rejection"),
    ],
)
def test_smtp_replies_decide_whether_to_retry(
    smtp_server: SmtpServer, stage: str, reply: str, retryable: bool, code: str
) -> None:
    if stage == "rcpt":
        smtp_server.handler.rcpt_reply = reply
    else:
        smtp_server.handler.data_reply = reply

    with pytest.raises(DeliveryError) as excinfo:
        channel(smtp_server.url()).send(make_notice())

    error = excinfo.value
    assert (error.retryable, error.code, error.smtp_code) == (retryable, code, int(reply[:3]))
    assert reply[4:] in str(error)
    assert smtp_server.handler.envelopes == []


def test_unrenderable_notice_fails_before_connecting() -> None:
    # Nothing listens on this port: connecting first would fail with connection_failed.
    sender = channel(f"smtp://{HOST}:{free_port()}")

    with pytest.raises(DeliveryError) as excinfo:
        sender.send(make_notice(amount="12.50"))

    error = excinfo.value
    assert (error.retryable, error.code) == (False, "render_failed")
    assert "'amount'" in str(error)


@pytest.mark.parametrize("recipient", ["ana@example.com\r\nBcc: eve@example.com", "Ana", ""])
def test_malformed_recipient_is_refused_before_connecting(recipient: str) -> None:
    sender = channel(f"smtp://{HOST}:{free_port()}")
    valid = make_notice()
    notice = Notice(
        recipient=recipient, kind=valid.kind, payload=valid.payload, dedup_key=valid.dedup_key
    )

    with pytest.raises(DeliveryError) as excinfo:
        sender.send(notice)

    assert (excinfo.value.retryable, excinfo.value.code) == (False, "render_failed")
