"""The moments `make test-dates` runs the suite at, as libfaketime offsets from the real now.

    python -m tests.moments NAME      prints the FAKETIME value (e.g. "+34560000") for NAME
    python -m tests.moments --list    prints every name with the moment it stands for

Every moment is found relative to the real date, so the list means the same next year:
the next DST nights in Europe/Amsterdam, the next New Year's Eve, the next King's Day.
An offset (not an absolute "@..." start) keeps gpg, gpg-agent and every other child
process on one timeline: a child restarting at an absolute time would see keys its parent
made "in the future".
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

AMS = ZoneInfo("Europe/Amsterdam")


def _last_sunday(year: int, month: int) -> date:
    day = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return day - timedelta(days=(day.weekday() + 1) % 7)


def _next(now: datetime, make: Callable[[int], datetime]) -> datetime:
    year = now.year
    while (moment := make(year)) <= now:
        year += 1
    return moment


def _kings_day(year: int) -> date:
    day = date(year, 4, 27)
    return day - timedelta(days=1) if day.weekday() == 6 else day


MOMENTS: dict[str, tuple[str, Callable[[datetime], datetime]]] = {
    "year-on": ("today + 400 days", lambda now: now + timedelta(days=400)),
    "dst-spring": (
        "the spring DST night, 01:30 UTC (03:30 summer time, just after 02:00 was skipped)",
        lambda now: _next(
            now, lambda y: datetime.combine(_last_sunday(y, 3), time(1, 30), tzinfo=UTC)
        ),
    ),
    "dst-autumn": (
        "the autumn DST night, 00:30 UTC (02:30 summer time, the hour before it repeats)",
        lambda now: _next(
            now, lambda y: datetime.combine(_last_sunday(y, 10), time(0, 30), tzinfo=UTC)
        ),
    ),
    "new-years-eve": (
        "31 December 23:50 in Amsterdam (the reference counter's year roll-over)",
        lambda now: _next(now, lambda y: datetime(y, 12, 31, 23, 50, tzinfo=AMS)),
    ),
    "kings-day": (
        "King's Day 10:00 in Amsterdam (a Dutch public holiday)",
        lambda now: _next(now, lambda y: datetime.combine(_kings_day(y), time(10), tzinfo=AMS)),
    ),
}


def offset(name: str, now: datetime | None = None) -> str:
    """The FAKETIME relative offset, in whole seconds, that moves `now` to the moment."""
    now = now or datetime.now(UTC)
    _, find = MOMENTS[name]
    return f"+{int((find(now) - now).total_seconds())}"


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        now = datetime.now(UTC)
        for name, (what, find) in MOMENTS.items():
            print(f"{name:14} {find(now).astimezone(AMS).isoformat()}  {what}")
        return 0
    if len(argv) != 1 or argv[0] not in MOMENTS:
        print(f"usage: python -m tests.moments {{{','.join(MOMENTS)}}} | --list", file=sys.stderr)
        return 2
    print(offset(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
