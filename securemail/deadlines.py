"""Response deadlines in the Dutch working calendar.

Invariant: a deadline is a pure function of (start time, urgency, kind, settings); the
clock is a parameter, never read here, so tests can move time. Urgent deadlines run in
clock hours (day and night); regular ones in working hours: Monday to Friday between
``workday_start`` and ``workday_end`` in ``timezone``, Dutch public holidays excluded
(the ``holidays`` package, which includes Good Friday, Easter and Whit Monday, King's Day,
Ascension, Christmas).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from securemail.config import DeadlineSettings
from securemail.errors import InputError

KINDS = ("answer", "ask")  # answer: team -> practice; ask: practice -> nurse's ask
URGENCIES = ("regulier", "spoed")


@lru_cache(maxsize=64)
def _holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("NL", years=[year]).keys())


def local(moment: datetime, s: DeadlineSettings) -> datetime:
    """`moment` on the region's calendar: the clock is UTC, but a year, a day or a month
    (reference numbers, "today", adherence months) is the one in ``timezone``."""
    if moment.tzinfo is None:
        raise InputError("a moment must carry a time zone", field="moment")
    return moment.astimezone(ZoneInfo(s.timezone))


def is_working_day(d: date) -> bool:
    return d.weekday() < 5 and d not in _holidays(d.year)


def _hm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _add_working_hours(start: datetime, hours: float, s: DeadlineSettings) -> datetime:
    """start + hours of working time, in the calendar's time zone."""
    tz = ZoneInfo(s.timezone)
    t = start.astimezone(tz)
    open_t, close_t = _hm(s.workday_start), _hm(s.workday_end)
    remaining = timedelta(hours=hours)
    while True:
        day = t.date()
        day_open = datetime.combine(day, open_t, tz)
        day_close = datetime.combine(day, close_t, tz)
        if not is_working_day(day) or t >= day_close:
            t = datetime.combine(day + timedelta(days=1), open_t, tz)
            continue
        t = max(t, day_open)
        available = day_close - t
        if remaining <= available:
            return t + remaining
        remaining -= available
        t = datetime.combine(day + timedelta(days=1), open_t, tz)


def due(start: datetime, urgency: str, kind: str, s: DeadlineSettings) -> datetime:
    """When the answer (kind='answer') or the requested form (kind='ask') is due."""
    if start.tzinfo is None:
        raise InputError("deadline start must carry a time zone", field="start")
    if urgency not in URGENCIES:
        raise InputError(f"urgency must be one of {', '.join(URGENCIES)}", field="urgency")
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    hours_per_day = (
        datetime.combine(date.min, _hm(s.workday_end))
        - datetime.combine(date.min, _hm(s.workday_start))
    ).total_seconds() / 3600
    if urgency == "spoed":
        hours = s.answer_urgent_hours if kind == "answer" else s.ask_urgent_hours
        # Elapsed time, not wall-clock time: aware arithmetic in one zone would add wall hours,
        # so a 2-hour deadline across the spring DST change would give the team one hour.
        return (start.astimezone(UTC) + timedelta(hours=hours)).astimezone(ZoneInfo(s.timezone))
    days = s.answer_regular_working_days if kind == "answer" else s.ask_regular_working_days
    return _add_working_hours(start, days * hours_per_day, s)


def is_overdue(due_at: datetime, now: datetime) -> bool:
    return now > due_at
