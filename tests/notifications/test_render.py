from __future__ import annotations

import pytest

from service.notifications import Notice, UnknownNoticeKind, render_notice
from tests.notifications.helpers import PAYLOADS, make_notice

KINDS = sorted(PAYLOADS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_part_shows_the_amount(kind: str) -> None:
    email = render_notice(make_notice(kind))

    for part in (email.subject, email.text, email.html):
        assert "€1,234.50" in part
    assert "Hello Ana," in email.text
    assert "Hello Ana," in email.html


def test_upcoming_payout_shows_the_scheduled_date() -> None:
    email = render_notice(make_notice("upcoming_payout"))

    assert email.subject == "Your payout of €1,234.50 is scheduled for 14 March 2025"
    assert "14 March 2025" in email.text
    assert "<strong>14 March 2025</strong>" in email.html


def test_payout_sent_shows_the_date_and_reference() -> None:
    email = render_notice(make_notice("payout_sent", sent_date="2025-12-01", reference=987))

    assert email.subject == "Your payout of €1,234.50 has been sent"
    for part in (email.text, email.html):
        assert "1 December 2025" in part
        assert "Reference: 987" in part


def test_payout_failed_is_generic_and_ignores_extra_payload() -> None:
    raw = "card_declined: acct_1Xyz has no external account (req_abc)"
    email = render_notice(make_notice("payout_failed", error=raw, last_error=raw))

    for part in (email.subject, email.text, email.html):
        assert "acct_1Xyz" not in part
        assert "card_declined" not in part
    text = " ".join(email.text.split())
    assert "looking into it" in text
    assert "You don't need to do anything unless we contact you." in text
    assert "Reference: 42" in text


def test_html_escapes_the_first_name() -> None:
    email = render_notice(make_notice(first_name='<script>alert("x")</script>'))

    assert "<script>" not in email.html
    assert "Hello &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;," in email.html
    # Plain text is not markup: the name appears as given.
    assert 'Hello <script>alert("x")</script>,' in email.text


@pytest.mark.parametrize("first_name", ["", "   "])
@pytest.mark.parametrize("kind", KINDS)
def test_missing_first_name_greets_generically(kind: str, first_name: str) -> None:
    email = render_notice(make_notice(kind, first_name=first_name))

    assert email.text.startswith("Hello,\n")
    assert '<p style="margin:0 0 16px;">Hello,</p>' in email.html


def test_first_name_cannot_break_the_greeting_line() -> None:
    email = render_notice(make_notice(first_name="Ana\n\nMaria"))

    assert email.text.startswith("Hello Ana Maria,\n")


def test_subject_is_one_line() -> None:
    email = render_notice(make_notice())

    assert "\n" not in email.subject
    assert email.subject == email.subject.strip()


@pytest.mark.parametrize(
    ("kind", "field"),
    [(kind, field) for kind in KINDS for field in PAYLOADS[kind]],
)
def test_missing_field_is_named(kind: str, field: str) -> None:
    valid = make_notice(kind)
    payload = {key: value for key, value in valid.payload.items() if key != field}
    notice = Notice(recipient=valid.recipient, kind=kind, payload=payload, dedup_key="k")

    expected = rf"^{kind} notice payload is missing field\(s\): {field}$"
    with pytest.raises(ValueError, match=expected):
        render_notice(notice)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("amount", 12.5, "int in minor units"),
        ("amount", "1234", "int in minor units"),
        ("amount", True, "int in minor units"),
        ("currency", "euro", "three-letter ISO 4217"),
        ("currency", None, "expected a string"),
        ("first_name", None, "expected a string"),
        ("scheduled_date", "14/03/2025", r"ISO date \(YYYY-MM-DD\)"),
        ("scheduled_date", 20250314, "ISO date string"),
    ],
)
def test_invalid_field_is_named(field: str, value: object, expected: str) -> None:
    prefix = f"upcoming_payout notice payload field '{field}': "
    with pytest.raises(ValueError, match=rf"^{prefix}.*{expected}"):
        render_notice(make_notice(**{field: value}))


def test_invalid_field_message_does_not_echo_the_value() -> None:
    with pytest.raises(ValueError) as excinfo:
        render_notice(make_notice(scheduled_date="Ana Silva 555-0100"))

    assert "Ana Silva" not in str(excinfo.value)


@pytest.mark.parametrize("reference", ["", "  ", None])
def test_empty_reference_is_rejected(reference: object) -> None:
    with pytest.raises(ValueError, match="payout_sent notice payload field 'reference'"):
        render_notice(make_notice("payout_sent", reference=reference))


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(UnknownNoticeKind, match="unknown notice kind 'payout_maybe'") as excinfo:
        render_notice(make_notice("payout_maybe"))

    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.kind == "payout_maybe"
