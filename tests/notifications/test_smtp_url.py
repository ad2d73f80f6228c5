from __future__ import annotations

from urllib.parse import quote

import pytest

from service.notifications import SmtpChannel
from service.notifications.channels import parse_smtp_url


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://mail.example.com", "plain", 25),
        ("smtp://mail.example.com:2525", "plain", 2525),
        ("smtp://mail.example.com/", "plain", 25),
        ("smtp://mail.example.com?starttls=true", "starttls", 25),
        ("smtp://mail.example.com?starttls=false", "plain", 25),
        ("smtp+starttls://mail.example.com", "starttls", 587),
        ("SMTP+STARTTLS://mail.example.com:2587", "starttls", 2587),
        ("smtps://mail.example.com", "tls", 465),
    ],
)
def test_scheme_sets_security_and_default_port(url: str, security: str, port: int) -> None:
    parsed = parse_smtp_url(url)

    assert (parsed.security, parsed.host, parsed.port) == (security, "mail.example.com", port)
    assert parsed.username is None
    assert parsed.password is None
    assert parsed.verify is True


def test_credentials_are_percent_decoded() -> None:
    user, password = "payouts@eleva.care", "p@ss:w/rd?#% &+="
    url = f"smtps://{quote(user, safe='')}:{quote(password, safe='')}@smtp.example.com"

    parsed = parse_smtp_url(url)

    assert (parsed.username, parsed.password) == (user, password)
    assert parsed.host == "smtp.example.com"


def test_verify_can_be_switched_off() -> None:
    assert parse_smtp_url("smtps://localhost?verify=false").verify is False
    assert parse_smtp_url("smtps://localhost?verify=true").verify is True


def test_reprs_hide_the_password() -> None:
    url = "smtps://user:hunter2secret@smtp.example.com"

    assert "hunter2secret" not in repr(parse_smtp_url(url))
    assert "hunter2secret" not in repr(SmtpChannel(url=url, mail_from="a@example.com"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:hunter2secret@smtp.example.com", "must start with smtp://"),
        ("smtp//user:hunter2secret@smtp.example.com", "must start with smtp://"),
        ("smtp://user:hunter2secret@", "has no host"),
        ("smtp://user:hunter2secret@smtp.example.com:99999", "port must be a number"),
        ("smtp://user:hunter2secret@smtp.example.com:x25", "port must be a number"),
        ("smtp://user:hunter2secret@smtp.example.com:0", "port must be a number"),
        ("smtp://user@smtp.example.com", "user name but no password"),
        ("smtp://:hunter2secret@smtp.example.com", "password but no user name"),
        ("smtp://user:hunter2/secret@smtp.example.com", "must not have a path"),
        ("smtp://user:hunter2secret@smtp.example.com#x", "must not have a path or fragment"),
        ("smtps://user:hunter2secret@smtp.example.com?starttls=true", "only applies to smtp://"),
        ("smtp://user:hunter2secret@smtp.example.com?tls=1", "'tls' is not supported"),
        ("smtp://user:hunter2secret@smtp.example.com?verify=maybe", "must be true or false"),
        ("smtp://user:hunter2secret@smtp.example.com?verify=1&verify=0", "given twice"),
        ("smtp://user:hunter2secret%ff@smtp.example.com", "not valid percent-encoded"),
        ("smtp://user:hunter2secr%C3%A9t@smtp.example.com", "must be ASCII"),
        ("smtp://user:hunter2secr\uff03t@smtp.example.com", "malformed"),
        ("smtp://user:hunter2secret@[::1", "malformed"),
    ],
)
def test_bad_url_names_the_problem_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as excinfo:
        SmtpChannel(url=url, mail_from="payouts@eleva.care")

    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize("mail_from", ["", "payouts", "Eleva Care"])
def test_mail_from_must_be_an_address(mail_from: str) -> None:
    with pytest.raises(ValueError, match="mail_from must be an email address"):
        SmtpChannel(url="smtp://localhost", mail_from=mail_from)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive"):
        SmtpChannel(url="smtp://localhost", mail_from="payouts@eleva.care", timeout=0)
