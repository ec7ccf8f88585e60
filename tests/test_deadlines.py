"""Deadlines in the Dutch working calendar, with the clock as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.config import DeadlineSettings
from securemail.deadlines import due, is_working_day
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
