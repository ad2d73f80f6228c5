from __future__ import annotations

import logging

import pytest

from service.notifications import Channel, DeliveryError, LogChannel, Notice
from service.notifications.channels import mask_email
from tests.notifications.helpers import make_notice


def test_logs_one_masked_line_per_notice(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eleva.notifications")
    channel: Channel = LogChannel()
    notices = [make_notice("upcoming_payout"), make_notice("payout_failed")]

    for notice in notices:
        channel.send(notice)

    records = [r for r in caplog.records if r.name == "eleva.notifications"]
    assert len(records) == 2
    for record, notice in zip(records, notices, strict=True):
        line = record.getMessage()
        assert "\n" not in line
        assert f"kind={notice.kind}" in line
        assert f"dedup_key={notice.dedup_key}" in line
        assert "to=a***@example.com" in line
    assert "Your payout of €1,234.50 is scheduled for 14 March 2025" in records[0].getMessage()
    assert "ana@example.com" not in caplog.text


def test_unrenderable_notice_is_not_logged_as_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eleva.notifications")
    valid = make_notice()
    notice = Notice(recipient=valid.recipient, kind="nope", payload={}, dedup_key="nope:1")

    with pytest.raises(DeliveryError) as excinfo:
        LogChannel().send(notice)

    assert (excinfo.value.retryable, excinfo.value.code) == (False, "render_failed")
    assert caplog.records == []


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("ana@example.com", "a***@example.com"),
        (" x@y.org ", "x***@y.org"),
        ("not-an-address", "***"),
        ("@example.com", "***"),
        ("ana@", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked
