from __future__ import annotations

from datetime import UTC, datetime

from ..qstash.schedules import CRON_TZ_RE, normalise_cron

WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def cron_zone(cron: str) -> tuple[str, str]:
    """Split a cron expression into its five fields and its time zone (UTC unless CRON_TZ)."""
    expression = normalise_cron(cron)
    match = CRON_TZ_RE.match(expression)
    if match:
        return match.group(2), match.group(1)
    return expression, "UTC"


def cron_in_words(cron: str) -> str:
    """Describe a cron expression in English, or quote it when it is not a common shape."""
    expression, _ = cron_zone(cron)
    fields = expression.split(" ")
    if len(fields) != 5:
        return f"cron {expression}"
    minute, hour, day, month, weekday = fields
    when = _time_of_day(minute, hour)
    if when is None:
        return f"cron {expression}"
    days = _days(day, month, weekday)
    if days is None:
        return f"cron {expression}"
    if days == ", every day" and when.startswith("every"):
        return when  # "every 2 hours, every day" says nothing more
    return f"{when}{days}"


def _time_of_day(minute: str, hour: str) -> str | None:
    if minute == "*" and hour == "*":
        return "every minute"
    if minute.startswith("*/") and minute[2:].isdigit() and hour == "*":
        return f"every {int(minute[2:])} minutes"
    if not minute.isdigit():
        return None
    if hour == "*":
        return f"every hour at minute {int(minute)}"
    if hour.startswith("*/") and hour[2:].isdigit():
        past = "on the hour" if int(minute) == 0 else f"at minute {int(minute)}"
        return f"every {int(hour[2:])} hours, {past}"
    hours = hour.split(",")
    if all(h.isdigit() and int(h) < 24 for h in hours):
        times = [f"{int(h):02d}:{int(minute):02d}" for h in hours]
        return "at " + _join(times)
    return None


def _days(day: str, month: str, weekday: str) -> str | None:
    if day == "*" and month == "*" and weekday == "*":
        return ", every day"
    if day == "*" and month == "*":
        names = []
        for part in weekday.split(","):
            if part.isdigit() and int(part) <= 7:
                names.append(WEEKDAYS[int(part) % 7])
            elif "-" in part and all(p.isdigit() for p in part.split("-")):
                first, last = (int(p) % 7 for p in part.split("-"))
                names.append(f"{WEEKDAYS[first]} to {WEEKDAYS[last]}")
            else:
                return None
        return ", on " + _join(names)
    if weekday == "*" and day.isdigit():
        if month == "*":
            return f", on day {int(day)} of every month"
        if month.isdigit() and 1 <= int(month) <= 12:
            return f", on {MONTHS[int(month) - 1]} {int(day)}"
    return None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def duration_in_words(milliseconds: int | None) -> str:
    """Say how long something took: "850 ms", "12.3 s", "4 min 5 s"."""
    if milliseconds is None:
        return "–"
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def when_in_words(moment: datetime | str | None, *, now: datetime | None = None) -> str:
    """Say how far a moment is from now: "in 3 h", "12 min ago", "just now"."""
    if moment is None:
        return "never"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    ahead, span = seconds < 0, abs(seconds)
    if span < 60:
        return "just now" if not ahead else "in under a minute"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if span >= size:
            amount = f"{int(span // size)} {unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    raise AssertionError("unreachable")
