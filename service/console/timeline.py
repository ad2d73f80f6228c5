from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .words import duration_in_words

DAYS = 30
WIDTH = 900
HEIGHT = 86
MARGIN = 24
AXIS_Y = 54
MIN_RADIUS = 3.0
MAX_RADIUS = 14.0


@dataclass(frozen=True, kw_only=True)
class Mark:
    """One run on the timeline: where, how big, which status (a CSS class), and its label."""

    run_id: str
    x: float
    r: float
    status: str
    label: str


@dataclass(frozen=True, kw_only=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, kw_only=True)
class Timeline:
    """What the template needs to draw a job's last 30 days of runs as SVG."""

    job: str
    width: int
    height: int
    axis_y: int
    left: int
    right: int
    marks: tuple[Mark, ...]
    ticks: tuple[Tick, ...]
    overdue_from: float | None  # x where the job became overdue; the band runs to the right edge
    counts: Mapping[str, int]
    description: str


def build_timeline(job: str, runs: Iterable[Mapping[str, Any]], *, now: datetime,
                   overdue_since: datetime | None, days: int = DAYS) -> Timeline:
    """Lay out a job's runs of the last `days` days: one mark per run, sized by duration."""
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    left, right = MARGIN, WIDTH - MARGIN

    def x_of(moment: datetime) -> float:
        share = (moment - start).total_seconds() / span
        return round(left + max(0.0, min(1.0, share)) * (right - left), 1)

    chosen = [run for run in runs if _instant(run["started_at"]) >= start]
    longest = max((run["duration_ms"] or 0 for run in chosen), default=0)
    marks = []
    counts: dict[str, int] = {}
    for run in sorted(chosen, key=lambda r: r["started_at"]):
        started = _instant(run["started_at"])
        duration = run["duration_ms"]
        # Area grows with duration: a run twice as long covers twice the ink.
        share = math.sqrt((duration or 0) / longest) if longest else 0.0
        counts[run["status"]] = counts.get(run["status"], 0) + 1
        marks.append(Mark(
            run_id=run["id"], x=x_of(started),
            r=round(MIN_RADIUS + share * (MAX_RADIUS - MIN_RADIUS), 1),
            status=run["status"],
            label=f"{run['status']} at {started:%Y-%m-%d %H:%M} UTC, "
                  f"{duration_in_words(duration)}",
        ))
    ticks = tuple(Tick(x=x_of(now - timedelta(days=d)),
                       label="now" if d == 0 else f"-{d} d") for d in range(days, -1, -5))
    overdue_from = x_of(overdue_since) if overdue_since is not None and overdue_since < now \
        else None
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
    description = (f"{job}: runs of the last {days} days: {summary}"
                   + ("; overdue" if overdue_from is not None else ""))
    return Timeline(job=job, width=WIDTH, height=HEIGHT, axis_y=AXIS_Y, left=left, right=right,
                    marks=tuple(marks), ticks=ticks, overdue_from=overdue_from, counts=counts,
                    description=description)


def _instant(value: str | datetime) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
