from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.console import access
from service.console.timeline import build_timeline
from service.console.words import cron_in_words, cron_zone, duration_in_words, when_in_words

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("cron", "words"), [
    ("0 4 * * *", "at 04:00, every day"),
    ("0 */2 * * *", "every 2 hours, on the hour"),
    ("30 */6 * * *", "every 6 hours, at minute 30"),
    ("*/15 * * * *", "every 15 minutes"),
    ("5 * * * *", "every hour at minute 5"),
    ("0 9,17 * * 1-5", "at 09:00 and 17:00, on Monday to Friday"),
    ("0 8 * * 0", "at 08:00, on Sunday"),
    ("0 3 1 * *", "at 03:00, on day 1 of every month"),
    ("0 0 25 12 *", "at 00:00, on December 25"),
    ("CRON_TZ=Europe/Lisbon 0 5 * * *", "at 05:00, every day"),
    ("0 0 L * *", "cron 0 0 L * *"),
])
def test_cron_in_words(cron: str, words: str) -> None:
    assert cron_in_words(cron) == words


def test_cron_zone() -> None:
    assert cron_zone("CRON_TZ=Europe/Lisbon  0 5 * * *") == ("0 5 * * *", "Europe/Lisbon")
    assert cron_zone("0 5 * * *") == ("0 5 * * *", "UTC")


def test_durations_and_moments_in_words() -> None:
    assert [duration_in_words(ms) for ms in (None, 850, 12_300, 245_000, 7_500_000)] == [
        "–", "850 ms", "12.3 s", "4 min 5 s", "2 h 5 min"]
    assert when_in_words(None) == "never"
    assert when_in_words(NOW - timedelta(minutes=12), now=NOW) == "12 min ago"
    assert when_in_words((NOW + timedelta(hours=3)).isoformat(), now=NOW) == "in 3 h"
    assert when_in_words(NOW - timedelta(seconds=5), now=NOW) == "just now"
    assert when_in_words(NOW - timedelta(days=2, hours=5), now=NOW) == "2 d ago"


def run(minutes_ago: float, status: str = "succeeded", duration: int | None = 1000
        ) -> dict[str, object]:
    started = NOW - timedelta(minutes=minutes_ago)
    return {"id": f"r{minutes_ago}", "started_at": started.isoformat(), "status": status,
            "duration_ms": duration}


def test_timeline_places_sizes_and_colours_each_run() -> None:
    runs = [run(60 * 24 * 29.5), run(60, "failed", 4000), run(30, duration=None),
            run(60 * 24 * 31)]
    timeline = build_timeline("process-tasks", runs, now=NOW, overdue_since=None)
    assert [m.status for m in timeline.marks] == ["succeeded", "failed", "succeeded"]
    oldest, failed, unknown = timeline.marks
    assert timeline.left <= oldest.x < failed.x <= unknown.x <= timeline.right
    assert failed.r == 14.0 and unknown.r == 3.0 and 3.0 < oldest.r < failed.r
    assert timeline.counts == {"succeeded": 2, "failed": 1}
    assert timeline.overdue_from is None
    assert "2 succeeded" in timeline.description and timeline.ticks[-1].label == "now"


def test_timeline_marks_the_overdue_window() -> None:
    timeline = build_timeline("process-tasks", [], now=NOW,
                              overdue_since=NOW - timedelta(days=3))
    assert timeline.overdue_from is not None
    assert timeline.left < timeline.overdue_from < timeline.right
    assert timeline.description.endswith("no runs; overdue")
    later = build_timeline("process-tasks", [], now=NOW, overdue_since=NOW + timedelta(hours=1))
    assert later.overdue_from is None


def test_session_secret_follows_the_token() -> None:
    assert access.session_secret("a" * 20) == access.session_secret("a" * 20)
    assert access.session_secret("a" * 20) != access.session_secret("b" * 20)
    assert b"a" * 20 not in access.session_secret("a" * 20)


def test_session_lifetime_is_bounded() -> None:
    session: dict[str, object] = {}
    access.start_session(session, now=1000.0)
    assert access.is_signed_in(session, now=1000.0 + 3600)
    assert not access.is_signed_in(session, now=1000.0 + 9 * 3600)
    assert not access.is_signed_in({}, now=1000.0)
    assert access.csrf_valid(session, str(session["csrf_token"]))
    assert not access.csrf_valid(session, "other") and not access.csrf_valid(session, None)


def test_failed_sign_ins_are_slowed_more_each_time() -> None:
    clock = [0.0]
    throttle = access.SignInThrottle(clock=lambda: clock[0])
    waits = [throttle.failed("10.0.0.1") for _ in range(4)]
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert throttle.locked_for("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.locked_for("10.0.0.1") == access.FIRST_LOCKOUT
    throttle.failed("10.0.0.1")
    assert throttle.locked_for("10.0.0.1") == 2 * access.FIRST_LOCKOUT
    clock[0] = 2 * access.FIRST_LOCKOUT
    assert throttle.locked_for("10.0.0.1") == 0
    assert throttle.failed("10.0.0.2") == 0.5 and throttle.locked_for("10.0.0.2") == 0
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 0.5
    clock[0] += access.FORGET_AFTER + 1
    assert throttle.failed("10.0.0.2") == 0.5


def test_sign_in_codes_work_once_and_expire(tmp_path: Path) -> None:
    code = access.create_sign_in_code(tmp_path)
    assert access.redeem_sign_in_code(tmp_path, code)
    assert not access.redeem_sign_in_code(tmp_path, code)
    assert not access.redeem_sign_in_code(tmp_path, "../../etc/passwd")
    stale = access.create_sign_in_code(tmp_path)
    path = tmp_path / access.LINK_DIRECTORY
    old = time.time() - access.LINK_LIFETIME.total_seconds() - 1
    for file in path.iterdir():
        os.utime(file, (old, old))
        assert file.stat().st_mode & 0o077 == 0  # readable by this user only
    assert not access.redeem_sign_in_code(tmp_path, stale)
    assert list(path.iterdir()) == []
