"""The one place tests take "now" from.

A test either runs on the real clock, or freezes a `Clock` *before* the gateway records
anything (users, keys, consent, sessions, TOTP steps), so that every stored time derives
from that one clock. A frozen clock never starts at a fixed calendar date: it starts at a
moment found relative to the real time (`working_wednesday`, `next_good_friday`), so the
suite means the same on any day it runs, including under libfaketime (`make test-dates`).

Fixed dates remain only where a pure function is given both sides (`parse_request(...,
now=NOW)`, `deadlines.due(start, ...)`): nothing there meets the real clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dateutil.easter import easter

from securemail.deadlines import is_working_day

AMS = ZoneInfo("Europe/Amsterdam")


class Clock:
    """A gateway clock (Services.clock) that moves only when told."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a test clock needs an aware start time")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def ts(self) -> float:
        """Now as epoch seconds (the outbox's and the worker's form)."""
        return self.now.timestamp()

    def iso(self) -> str:
        """The gateway's stored form of now (UTC, milliseconds, 'Z')."""
        return self.now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def real_now() -> datetime:
    return datetime.now(UTC)


def working_wednesday(after: datetime | None = None, hour: int = 10) -> datetime:
    """The first Wednesday `hour`:00 in Amsterdam, at least a day after `after` (default: the
    real now), whose Wednesday, Thursday and Friday are all working days.

    Tests written for "a Wednesday morning" (2 working days = Friday) hold in every week
    this finds; at least a day on, so keys and certificates made at the real time are
    already valid when the frozen clock starts.
    """
    day = ((after or real_now()) + timedelta(days=1)).astimezone(AMS).date()
    day += timedelta(days=(2 - day.weekday()) % 7)
    while not all(is_working_day(day + timedelta(days=i)) for i in range(3)):
        day += timedelta(days=7)
    return datetime.combine(day, time(hour), tzinfo=AMS)


def next_good_friday(after: datetime, hour: int = 10) -> datetime:
    """Good Friday `hour`:00 in Amsterdam, the first one after `after` (Easter Monday, the
    holiday after it, always falls in summer time in the Netherlands)."""
    year = after.astimezone(AMS).year
    while True:
        friday = easter(year) - timedelta(days=2)
        moment = datetime.combine(friday, time(hour), tzinfo=AMS)
        if moment > after:
            return moment
        year += 1


def next_date(after: datetime, month: int, day: int) -> date:
    """The first `month`-`day` strictly after `after`'s date in Amsterdam."""
    year = after.astimezone(AMS).year
    while (d := date(year, month, day)) <= after.astimezone(AMS).date():
        year += 1
    return d
