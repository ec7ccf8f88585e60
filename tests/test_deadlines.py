"""Deadlines in the Dutch working calendar, with the clock as a parameter."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.config import DeadlineSettings
from securemail.deadlines import due, is_working_day, local
from securemail.errors import InputError

AMS = ZoneInfo("Europe/Amsterdam")
S = DeadlineSettings()


def test_due_urgent_answer_is_two_clock_hours_even_at_night() -> None:
    start = datetime(2026, 12, 24, 23, 30, tzinfo=AMS)
    assert due(start, "spoed", "answer", S) == datetime(2026, 12, 25, 1, 30, tzinfo=AMS)


def test_due_regular_answer_friday_before_easter_is_tuesday_after() -> None:
    # Good Friday 2027-03-26 and Easter Monday 2027-03-29 are Dutch public holidays.
    start = datetime(2027, 3, 26, 10, 0, tzinfo=AMS)
    result = due(start, "regulier", "answer", S)
    assert result.date().isoformat() == "2027-03-30"
    assert result.weekday() == 1


def test_due_regular_answer_midweek_is_same_time_next_working_day() -> None:
    start = datetime(2026, 11, 25, 10, 15, tzinfo=AMS)  # a Wednesday
    assert due(start, "regulier", "answer", S) == datetime(2026, 11, 26, 10, 15, tzinfo=AMS)


def test_due_regular_answer_after_hours_starts_next_morning() -> None:
    start = datetime(2026, 11, 27, 18, 0, tzinfo=AMS)  # Friday evening
    assert due(start, "regulier", "answer", S) == datetime(2026, 11, 30, 16, 0, tzinfo=AMS)


def test_due_regular_ask_is_two_working_days() -> None:
    start = datetime(2026, 11, 26, 9, 0, tzinfo=AMS)  # Thursday
    assert due(start, "regulier", "ask", S) == datetime(2026, 11, 30, 9, 0, tzinfo=AMS)


def test_due_naive_start_is_refused() -> None:
    with pytest.raises(InputError):
        due(datetime(2026, 1, 5, 9, 0), "regulier", "answer", S)


def test_due_unknown_urgency_is_refused() -> None:
    with pytest.raises(InputError):
        due(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), "soms", "answer", S)


def test_kings_day_is_not_a_working_day() -> None:
    assert not is_working_day(datetime(2026, 4, 27).date())


@given(
    st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(AMS)
    )
)
def test_due_regular_lands_inside_working_hours_on_a_working_day(start: datetime) -> None:
    result = due(start, "regulier", "answer", S)
    assert result > start
    assert is_working_day(result.date())
    assert (8, 0) <= (result.hour, result.minute) <= (16, 0)


# -- the calendar's hard moments: DST nights, King's Day, New Year ---------------------------


@pytest.mark.parametrize(
    "start",
    [
        datetime(2027, 3, 28, 1, 30, tzinfo=AMS),  # spring: 02:00 -> 03:00, an hour is skipped
        datetime(2027, 10, 31, 1, 30, tzinfo=AMS),  # autumn: 03:00 -> 02:00, an hour repeats
        datetime(2027, 10, 31, 2, 30, tzinfo=AMS, fold=0),  # the first 02:30 (+02:00)
        datetime(2027, 10, 31, 2, 30, tzinfo=AMS, fold=1),  # the second 02:30 (+01:00)
    ],
)
def test_due_urgent_across_a_dst_change_is_two_elapsed_hours_whatever_zone_start_is_in(
    start: datetime,
) -> None:
    # The gateway's clock is UTC; a test's or a caller's may be Amsterdam's: the same moment
    for moment in (start, start.astimezone(UTC)):
        at = due(moment, "spoed", "answer", S)
        # elapsed, not wall-clock (subtraction in one zone would be wall-clock too: compare in UTC)
        assert at.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=2)
        assert at.tzinfo is not None and at.utcoffset() == at.astimezone(AMS).utcoffset()


@pytest.mark.parametrize("year", [2027, 2028, 2029, 2031])
def test_due_regular_across_kings_day_skips_it(year: int) -> None:
    # King's Day is 27 April, or the 26th when the 27th is a Sunday
    kings_day = date(year, 4, 27) if date(year, 4, 27).weekday() != 6 else date(year, 4, 26)
    assert not is_working_day(kings_day)
    before = kings_day - timedelta(days=1)
    while not is_working_day(before):
        before -= timedelta(days=1)
    start = datetime.combine(before, time(10), tzinfo=AMS)
    at = due(start, "regulier", "answer", S).astimezone(AMS)
    after = kings_day + timedelta(days=1)
    while not is_working_day(after):
        after += timedelta(days=1)
    assert (at.date(), at.time()) == (after, time(10))


def test_due_regular_on_new_years_eve_late_is_due_on_the_second_working_day_of_january() -> None:
    # 31 December 2027 is a Friday; 23:59 is after hours; 1 January is a holiday (Saturday too)
    start = datetime(2027, 12, 31, 23, 59, tzinfo=AMS)
    at = due(start.astimezone(UTC), "regulier", "answer", S).astimezone(AMS)
    assert at == datetime(2028, 1, 3, 16, 0, tzinfo=AMS)  # Monday: a whole working day


def test_local_gives_the_dutch_year_and_day_of_a_utc_moment() -> None:
    # 00:30 on 1 January in Amsterdam is still 31 December in UTC
    moment = datetime(2027, 12, 31, 23, 30, tzinfo=UTC)
    assert local(moment, S).date() == date(2028, 1, 1)
    with pytest.raises(InputError):
        local(datetime(2027, 12, 31, 23, 30), S)
