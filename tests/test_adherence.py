"""Are the agreements kept? The figures against a hand count, the Dutch working-day rules
(one calendar: deadlines.due), nearest-rank percentiles, passing on counted for both teams,
small-count suppression in page, CSV and JSON, and who may read them.

The hand-count month is built through the real functions (tests/loop_fixtures.py): GP sends
sealed with real gpg, a real delivery worker on a loopback STARTTLS relay whose clock is
the test's clock (the relay's 250 is when a team's clock starts), nurses' answers and
passing on through answer.record_answer, asks through asks.create and exchange.send(ask=).
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail import access
from securemail.access import SYSTEM, Actor, Person, Resource
from securemail.accounts import auth
from securemail.config import DeadlineSettings
from securemail.errors import AccessDeniedError, InputError
from securemail.exchange import answer, asks
from securemail.exchange import send as exchange
from securemail.region import adherence, directory
from securemail.region.adherence import AskItem, Figures, Turn
from securemail.web import create_app
from tests.auth_fixtures import make_store
from tests.e2e.webflow import login
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, deliver_all, env_for_cli, example
from tests.loop_fixtures import TEAM_B, Loop
from tests.test_asks import ASK, browser

AMS = ZoneInfo("Europe/Amsterdam")
CAL = DeadlineSettings()
ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}
DECLINE = {"status": "afgewezen", "reason": "Geen capaciteit"}
PASS_ON = {"status": "doorbemiddeld", "reason": "Buiten ons gebied", "passed_to": TEAM_B}


def at(day: int, hour: int, minute: int = 0, month: int = 4) -> datetime:
    return datetime(2027, month, day, hour, minute, tzinfo=AMS)


@pytest.fixture
def loop_start() -> datetime:
    """The hand count's month is April 2027 (its weekdays, King's Day on a Tuesday): the
    loop's clock is frozen on 1 April before the gateway records anything, so every stored
    time comes from it and the stories below only move it forward, on any real date."""
    return at(1, 8)


# -- the calendar facts the hand count rests on (deadlines.due, not a second calendar) ------


def test_friday_1500_regular_is_due_monday_1500() -> None:
    # Fri 16 Apr 2027 15:00 + 1 working day (8 working hours, 08:00-16:00):
    # Friday 15:00-16:00 is 1 h, Monday 08:00 + 7 h = Monday 15:00.
    due = adherence.deadlines.due(at(16, 15), "regulier", "answer", CAL)
    assert due == at(19, 15)


def test_kings_day_is_skipped_monday_1400_regular_is_due_wednesday_1400() -> None:
    # Mon 26 Apr 2027 14:00: Monday 14:00-16:00 is 2 h; Tuesday 27 April is King's Day (no
    # working day); Wednesday 08:00 + 6 h = 14:00. Without the holiday it would be Tue 14:00.
    assert adherence.deadlines.due(at(26, 14), "regulier", "answer", CAL) == at(28, 14)


# -- the hand count over a month built through the real functions --------------------------


async def _send(loop: Loop, when: datetime, urgency: str, ask: str | None = None) -> str:
    loop.clock.now = when
    data = example()
    data["urgency"] = urgency
    sent = await exchange.send(loop.gw.svc, loop.gw.gp, data, GP_PASSPHRASE, ask=ask)
    await deliver_all(loop.gw.svc, clock=loop.clock)
    return sent.reference


async def _answer(loop: Loop, nurse: Actor, when: datetime, ref: str, data: dict) -> None:
    loop.clock.now = when
    await answer.record_answer(loop.gw.svc, nurse, ref, data)
    await deliver_all(loop.gw.svc, clock=loop.clock)


@pytest.fixture
async def april(loop: Loop) -> Loop:
    """April 2027 as the hand count below describes it (Europe/Amsterdam, CEST)."""
    nurse_a, nurse_b = loop.nurse_a, loop.nurse_b
    # Asks of team A to the practice: one fulfilled exactly at its deadline (still within),
    # one urgent fulfilled a minute late.
    loop.clock.now = at(6, 9)
    ask_1 = (await asks.create(loop.gw.svc, nurse_a, {**ASK, "urgency": "regulier"})).reference
    # R3, R4: urgent, answered after 1 h 59 (within) and 2 h 01 (late)
    r3 = await _send(loop, at(6, 10), "spoed")
    await _answer(loop, nurse_a, at(6, 11, 59), r3, ACCEPT)
    r4 = await _send(loop, at(6, 13), "spoed")
    await _answer(loop, nurse_a, at(6, 15, 1), r4, ACCEPT)
    # R5: passed on by A after 1 h; B accepts the next day after 23 h (due Thu 11:00)
    r5 = await _send(loop, at(7, 10), "regulier")
    await _answer(loop, nurse_a, at(7, 11), r5, PASS_ON)
    # R6: fulfils ask 1 (created Tue 6 Apr 09:00, due Thu 8 Apr 09:00); never answered
    await _send(loop, at(8, 9), "regulier", ask=ask_1)
    await _answer(loop, nurse_b, at(8, 10), r5, ACCEPT)
    # R1: Friday 15:00, answered Monday 09:00; fulfils ask 2 (urgent, due 14:59) at 15:00
    loop.clock.now = at(16, 12, 59)
    ask_2 = (await asks.create(loop.gw.svc, nurse_a, {**ASK, "urgency": "spoed"})).reference
    r1 = await _send(loop, at(16, 15), "regulier", ask=ask_2)
    await _answer(loop, nurse_a, at(19, 9), r1, ACCEPT)
    # R2: over King's Day, declined Wednesday 13:00
    r2 = await _send(loop, at(26, 14), "regulier")
    await _answer(loop, nurse_a, at(28, 13), r2, DECLINE)
    loop.clock.now = at(30, 12)  # the report is made on Friday 30 April, 12:00
    return loop


def _report(loop: Loop, month: str = "2027-04") -> adherence.Report:
    svc = loop.gw.svc
    return svc.store.read_sync(
        lambda db: adherence.report_for(db, month, now=svc.now(), calendar=svc.settings.deadlines)
    )


async def test_figures_match_the_hand_count(april: Loop) -> None:
    report = _report(april)
    # Team A, turns delivered in April (answer time in clock minutes, start = relay's 250):
    #   R3 spoed   Tue  6 10:00 -> accepted 11:59          119 min  within (due 12:00)
    #   R4 spoed   Tue  6 13:00 -> accepted 15:01          121 min  late   (due 15:00)
    #   R5 regulier Wed 7 10:00 -> passed on 11:00          60 min  within (due Thu 10:00)
    #   R6 regulier Thu 8 09:00 -> open                              overdue since Fri 9 09:00
    #   R1 regulier Fri 16 15:00 -> accepted Mon 19 09:00  3960 min  within (due Mon 15:00)
    #   R2 regulier Mon 26 14:00 -> declined Wed 28 13:00  2820 min  within (due Wed 14:00,
    #                                                                 King's Day skipped)
    # received 6, answered 5, within 4, assessed 5 + 1 open overdue = 6 -> 4/6 = 67 %
    # sorted minutes 60 119 121 2820 3960: median rank ceil(0.5*5)=3 -> 121 (2:01);
    #                                      p90 rank ceil(0.9*5)=5 -> 3960 (66:00)
    a = report.teams[(TEAM, "Wijkteam Centrum")]
    assert (a.received, a.answered, a.within, a.assessed, a.open_overdue) == (6, 5, 4, 6, 1)
    assert (a.accepted, a.declined, a.passed_on, a.withdrawn) == (3, 1, 1, 0)
    assert sorted(a.minutes) == [60, 119, 121, 2820, 3960]
    assert (a.median, a.p90) == (121, 3960)
    # Team B received R5 when A passed it on (Wed 7 11:00) and accepted Thu 8 10:00:
    # 23 h = 1380 min, within (due Thu 11:00).
    b = report.teams[(TEAM_B, "Wijkteam West")]
    assert (b.received, b.answered, b.within, b.accepted, b.minutes) == (1, 1, 1, 1, (1380,))
    # The practice: all 7 turns; within 5 of assessed 7; minutes 60 119 121 1380 2820 3960:
    # median rank 3 -> 121, p90 rank ceil(5.4)=6 -> 3960.
    p = report.practices[("01234567", "Praktijk Test")]
    assert (p.received, p.answered, p.within, p.assessed, p.open_overdue) == (7, 6, 5, 7, 1)
    assert (p.accepted, p.declined, p.passed_on) == (4, 1, 1)
    assert (p.median, p.p90) == (121, 3960)
    # Asks of team A: ask 1 delivered after exactly 2 working days (48 h clock, within);
    # ask 2 urgent, 2 h 01 (late).
    ap = report.ask_practices[("01234567", "Praktijk Test")]
    at_ = report.ask_teams[(TEAM, "Wijkteam Centrum")]
    # Teams and practices with nothing this month still have their row, of zeros
    for zero in (
        report.practices[("11223344", "Andere praktijk")],
        report.ask_teams[(TEAM_B, "Wijkteam West")],
    ):
        assert (zero.received, zero.answered, zero.minutes) == (0, 0, ())
    for f in (ap, at_):
        assert (f.received, f.answered, f.within, f.open_overdue) == (2, 2, 1, 0)
        assert sorted(f.minutes) == [121, 2880]


async def test_published_figures_suppress_small_counts_everywhere(april: Loop) -> None:
    published = adherence.publish(_report(april))
    [a] = [r for r in published["tables"]["teams"] if r["code"] == TEAM]
    # received 6 and answered 5 are hidden (x): next to team B's 1 they would give it away,
    # since the practices' table shows the total (7 and 6)
    assert a["received"] == a["answered"] == "x"
    assert a["within"] == "<5"  # 4
    assert a["within_pct"] == "x"  # 67 % of 6 assessed would give the 4 away
    assert (a["median"], a["p90"]) == ("2:01", "66:00")
    assert (a["accepted"], a["declined"], a["passed_on"], a["open_overdue"]) == ("<5",) * 4
    assert a["withdrawn"] == 0  # a zero singles out no one
    [b] = [r for r in published["tables"]["teams"] if r["code"] == TEAM_B]
    assert {b[k] for k in ("received", "answered", "within", "accepted")} == {"<5"}
    assert (b["within_pct"], b["median"], b["p90"]) == ("<5", "<5", "<5")
    other, p = published["tables"]["practices"]  # sorted by name: Andere, Praktijk Test
    assert (p["received"], p["within"], p["within_pct"]) == (7, 5, "71%")
    # a zero is shown as 0; a figure from no items is empty, not '<5'
    assert (other["received"], other["within_pct"], other["median"]) == (0, "", "")
    for table, code in (("ask_practices", "01234567"), ("ask_teams", TEAM)):
        [row] = [r for r in published["tables"][table] if r["code"] == code]
        assert row["received"] == row["within_pct"] == row["median"] == "<5"
        assert "passed_on" not in row
    # no patient data in what leaves the module
    text = json.dumps(published, ensure_ascii=False) + adherence.to_csv(published)
    for secret in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"], "UVZ-", "ASK-"):
        assert secret not in text


async def test_cli_report_csv_and_json_are_audited_without_a_patient(april: Loop) -> None:
    home = str(april.gw.home)
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "adherence", "report", "--home", home,
         "--month", "2027-04", "--csv"],
        capture_output=True, text=True, check=False, env=env_for_cli(), timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0][:4] == ["maand", "tabel", "code", "naam"]
    assert sorted(r[1] for r in rows[1:]) == sorted(
        ["teams"] * 3
        + ["practices"] * 2
        + ["ask_practices"] * 2
        + ["ask_teams"] * 3
        + ["kinds"] * 2
        + ["ask_kinds"] * 3  # every kind a row, even with nothing
    )
    svc = april.gw.svc
    exports = svc.store.read_sync(
        lambda db: list(db["audit_events"].rows_where("event_code = 'adherence.export'"))
    )
    assert [(e["object_id"], e["outcome_detail"], e["patient_id"]) for e in exports] == [
        ("2027-04", "format=csv", "")
    ]
    assert EXAMPLE["patient"]["bsn"] not in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "securemail", "adherence", "report", "--home", home,
         "--month", "april"],
        capture_output=True, text=True, check=False, env=env_for_cli(), timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "YYYY-MM" in bad.stderr and "Traceback" not in bad.stderr
    # A GP may not read the figures, on the CLI either: one line, and an access.denied row
    gp = subprocess.run(
        [sys.executable, "-m", "securemail", "adherence", "report", "--home", home,
         "--month", "2027-04", "--as", "huisarts"],
        capture_output=True, text=True, check=False, env=env_for_cli(), timeout=120,
    )  # fmt: skip
    assert gp.returncode == 1 and "access.denied" in gp.stderr and not gp.stdout
    denied = svc.store.read_sync(
        lambda db: list(db["audit_events"].rows_where("event_code = 'access.denied'"))
    )
    assert [(d["user_name"], d["object_type"], d["check_authz"]) for d in denied] == [
        ("huisarts", "adherence", "deny:adherence.view")
    ]


# -- pure functions ----------------------------------------------------------------------------


def _turn(delivered: datetime, answered: datetime | None = None, outcome: str = "geaccepteerd",
          urgency: str = "regulier", **kw: Any) -> Turn:  # fmt: skip
    return Turn(
        team=kw.get("team", "a@x.example"), team_name="A", practice="01234567",
        practice_name="P", urgency=urgency, delivered_at=delivered,
        outcome=outcome if answered else "", outcome_at=answered,
        closed_by_practice=kw.get("closed", False),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("values", "median", "p90"),
    [
        ([5], 5, 5),
        ([1, 2], 1, 2),  # even count: the lower middle value
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 5, 9),
        ([10, 1, 7, 3, 5], 5, 10),  # ranks ceil(2.5)=3 and ceil(4.5)=5 of 1 3 5 7 10
        (list(range(1, 21)), 10, 18),
    ],
)
def test_nearest_rank_percentiles(values: list[float], median: float, p90: float) -> None:
    assert adherence.nearest_rank(values, 50) == median
    assert adherence.nearest_rank(values, 90) == p90


def test_nearest_rank_of_nothing_is_none() -> None:
    assert adherence.nearest_rank([], 50) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_nearest_rank_is_an_observed_value_between_min_and_max(values: list[float]) -> None:
    for p in (50, 90):
        v = adherence.nearest_rank(values, p)
        assert v in values
        assert min(values) <= v <= max(values)


def test_four_requests_are_suppressed_five_are_shown() -> None:
    start = at(6, 9)
    four = [_turn(start, start + timedelta(minutes=30 + i)) for i in range(4)]
    five = [*four, _turn(start, start + timedelta(minutes=40))]
    f4 = adherence.publish_figures(adherence.answer_figures(four, now=at(30, 12), calendar=CAL))
    f5 = adherence.publish_figures(adherence.answer_figures(five, now=at(30, 12), calendar=CAL))
    assert (f4["received"], f4["within"], f4["within_pct"], f4["median"], f4["p90"]) == (
        "<5", "<5", "<5", "<5", "<5")  # fmt: skip
    assert (f5["received"], f5["within"], f5["within_pct"], f5["median"], f5["p90"]) == (
        5, 5, "100%", "0:32", "0:40")  # fmt: skip


def test_a_percentage_from_four_assessed_is_suppressed_even_when_received_is_shown() -> None:
    # 6 received, but 2 still open inside their deadline: 4 assessed -> the % is not shown
    now = at(6, 12)
    turns = [_turn(at(6, 9), at(6, 10)) for _ in range(4)] + [_turn(at(6, 11)) for _ in range(2)]
    f = adherence.answer_figures(turns, now=now, calendar=CAL)
    assert (f.received, f.assessed) == (6, 4)
    published = adherence.publish_figures(f)
    assert published["received"] == 6
    assert published["within_pct"] == "<5"


def _figures(received: int, accepted: int = 0, declined: int = 0, passed_on: int = 0,
             within: int | None = None) -> Figures:  # fmt: skip
    answered = accepted + declined + passed_on
    return Figures(
        received=received, answered=answered, within=answered if within is None else within,
        assessed=answered, open_overdue=0, accepted=accepted, declined=declined,
        passed_on=passed_on, minutes=(30.0,) * answered,
    )  # fmt: skip


def _published(figures: list[Figures]) -> list[dict[str, int | str]]:
    rows = [adherence.publish_figures(f) for f in figures]
    adherence.protect(rows, figures)
    return rows


def test_a_lone_small_count_in_a_column_takes_the_smallest_other_count_with_it() -> None:
    # received 1, 12, 7: the other table shows the total 20, so 1 = 20 - 12 - 7 unless one
    # more is hidden; the smallest (7) goes, 12 stays
    rows = _published([_figures(1), _figures(12), _figures(7)])
    assert [r["received"] for r in rows] == ["<5", 12, "x"]


def test_a_lone_small_part_of_a_row_takes_another_part_with_it() -> None:
    # answered 9 = accepted 8 + declined 1 + passed on 0: with 9 and 8 shown, 1 is known
    [row] = _published([_figures(9, accepted=8, declined=1)])
    assert (row["answered"], row["accepted"], row["declined"], row["passed_on"]) == (
        9, "x", "<5", 0)  # fmt: skip


def test_the_percentage_goes_with_a_suppressed_count_within_the_deadline() -> None:
    [row] = _published([_figures(10, accepted=10, within=3)])
    assert (row["answered"], row["within"], row["within_pct"]) == (10, "<5", "x")
    [row] = _published([_figures(10, accepted=10, within=6)])
    assert (row["within"], row["within_pct"]) == (6, "60%")


_group = st.builds(
    lambda r, a, d, p, w: _figures(
        r + a + d + p, accepted=a, declined=d, passed_on=p, within=min(w, a + d + p)
    ),  # fmt: skip
    *(st.integers(0, 12) for _ in range(5)),
)


@given(st.lists(_group, min_size=1, max_size=6))
def test_no_sum_has_exactly_one_hidden_cell_among_shown_non_zero_terms(
    figures: list[Figures],
) -> None:
    rows = _published(figures)
    hidden = ("<5", "x")
    sums = [[(i, k) for i in range(len(rows))] for k in adherence.COLUMN_SUMS] + [
        [(i, k) for k in ("answered", "accepted", "declined", "passed_on")]
        for i in range(len(rows))
    ]
    for cells in sums:
        lone = [c for c in cells if rows[c[0]][c[1]] in hidden]
        if len(lone) == 1:  # then every other term is 0: the sum is the hidden cell itself
            assert all(getattr(figures[i], k) == 0 for i, k in cells if (i, k) != lone[0])
    for row, f in zip(rows, figures, strict=True):
        if row["within"] in hidden:
            assert row["within_pct"] in ("", *hidden)
        for k in adherence.COLUMN_SUMS:  # shown cells are the true counts; 0 always shown
            assert row[k] in hidden or row[k] == getattr(f, k)
            assert getattr(f, k) != 0 or row[k] == 0
            assert row[k] != "<5" or 1 <= getattr(f, k) <= 4


@given(st.integers(min_value=0, max_value=200))
def test_count_cell_never_shows_one_to_four(n: int) -> None:
    cell = adherence.count_cell(n)
    assert cell == ("<5" if 1 <= n <= 4 else n)


def test_withdrawn_before_an_answer_is_not_judged() -> None:
    turns = [_turn(at(6, 9), closed=True), _turn(at(6, 9))]
    f = adherence.answer_figures(turns, now=at(30, 12), calendar=CAL)
    assert (f.received, f.withdrawn, f.open_overdue, f.assessed) == (2, 1, 1, 1)


def test_month_is_counted_by_delivery_in_amsterdam_time() -> None:
    # 30 April 2027 23:30 in Amsterdam is 21:30 UTC: April, not May; 1 May 00:30 is May.
    late_april = datetime(2027, 4, 30, 21, 30, tzinfo=ZoneInfo("UTC"))
    early_may = datetime(2027, 4, 30, 22, 30, tzinfo=ZoneInfo("UTC"))
    report = adherence.build_report(
        "2027-04", [_turn(late_april), _turn(early_may)], [], now=at(5, 12, month=5),
        calendar=CAL,
    )  # fmt: skip
    [f] = report.teams.values()
    assert f.received == 1


def test_ask_urgent_two_hours_exactly_is_within() -> None:
    ask = AskItem("01234567", "P", "a@x.example", "A", "spoed", at(6, 9), at(6, 11))
    late = AskItem("01234567", "P", "a@x.example", "A", "spoed", at(6, 9), at(6, 11, 1))
    f = adherence.ask_figures([ask, late], now=at(30, 12), calendar=CAL)
    assert (f.received, f.answered, f.within) == (2, 2, 1)


@pytest.mark.parametrize("bad", ["", "2026-13", "2026-1", "november", "2026-11-01", "1999-12"])
def test_bad_month_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InputError) as info:
        adherence.parse_month(bad)
    assert info.value.context["field"] == "maand"


def test_csv_has_one_row_per_group_and_only_published_cells() -> None:
    f = Figures(received=3, answered=3, within=3, assessed=3, open_overdue=0, minutes=(1, 2, 3))
    report = adherence.Report("2027-04", at(30, 12), {("a@x.example", "A"): f}, {}, {}, {})
    text = adherence.to_csv(adherence.publish(report))
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 2
    assert rows[1][:6] == ["2027-04", "teams", "a@x.example", "A", "<5", "<5"]


# -- the coordinator role ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Any) -> Any:
    s = make_store(tmp_path)
    yield s
    s.close()


def test_coordinator_belongs_to_a_region(store: Any) -> None:
    now = "2027-04-01T09:00:00Z"

    def add(db: Any, org: str) -> Any:
        return auth.add_user(
            db, SYSTEM, username=f"coord{org}", name="Coördinator", role="coordinator",
            org_code=org, password="correct horse battery staple", now=now,
        )  # fmt: skip

    store.write_sync(
        lambda db: directory.add_org(db, SYSTEM, code="99000002", kind="region",
                                     name="Regio Amsterdam", now=now)
    )  # fmt: skip
    user = store.write_sync(lambda db: add(db, "99000002"))
    assert user.role == "coordinator"
    with pytest.raises(InputError) as info:
        store.write_sync(lambda db: add(db, "01000001"))  # a GP practice
    assert info.value.context["field"] == "org"


def test_gp_reading_figures_is_refused(store: Any) -> None:
    gp = store.read_sync(lambda db: auth.actor_for_cli(db, "gp_a"))
    with pytest.raises(AccessDeniedError):
        store.write_sync(lambda db: adherence.record_read(db, gp, "2027-04"))


# -- the coordinators' page over real HTTP -----------------------------------------------------

COORD_PASSWORD = "coordinator password 12345"
CELL_RE = re.compile(r"<td>([^<]*)</td>")


def _add_coordinator(loop: Loop) -> dict[str, Any]:
    svc = loop.gw.svc
    now = svc.now_iso()

    def add(db: Any) -> str:
        directory.add_org(db, SYSTEM, code="99000002", kind="region", name="Regio", now=now)
        user = auth.add_user(
            db, SYSTEM, username="coordinator", name="Regio Coördinator", role="coordinator",
            org_code="99000002", password=COORD_PASSWORD, now=now,
        )  # fmt: skip
        return auth.enrol_totp_for_demo(db, user.id)

    secret = svc.store.write_sync(add)
    return {"username": "coordinator", "password": COORD_PASSWORD, "totp_secret": secret,
            "clock": loop.clock}  # fmt: skip


@pytest.fixture
async def april_site(april: Loop, aiohttp_server: Any) -> AsyncIterator[str]:
    app = create_app(april.gw.svc.settings, services=april.gw.svc, run_worker=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def _page_rows(html: str, table: str) -> list[list[str]]:
    """The data rows of one table on the page, as cell texts."""
    section = html.split(f'id="tabel-{table}"', 1)[1].split("</table>", 1)[0]
    return [[html_lib.unescape(c) for c in CELL_RE.findall(tr)] for tr in section.split("<tr>")[2:]]


async def test_coordinator_page_and_csv_show_the_same_published_cells(
    april: Loop, april_site: str
) -> None:
    creds = _add_coordinator(april)
    async with browser() as coord:
        await login(coord, april_site, creds)
        async with coord.get(f"{april_site}/") as r:  # the coordinator's home is the page
            assert r.url.path == "/regio/afspraken"
        async with coord.get(f"{april_site}/regio/afspraken?maand=2027-04") as r:
            assert r.status == 200
            html = await r.text()
        async with coord.get(f"{april_site}/regio/afspraken.csv?maand=2027-04") as r:
            assert r.status == 200
            assert r.headers["Content-Disposition"] == (
                'attachment; filename="afspraken-2027-04.csv"'
            )
            text = await r.text()
        async with coord.get(f"{april_site}/regio/afspraken.json?maand=2027-04") as r:
            published = json.loads(await r.text())
        async with coord.get(f"{april_site}/regio/afspraken?maand=2027-4") as r:
            assert r.status == 422
            assert "JJJJ-MM" in await r.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    for table in adherence.TABLES:
        keys = adherence.table_columns(table)
        on_page = _page_rows(html, table)
        in_csv = [
            [row["naam"], row["code"], *(row[adherence.COLUMNS[k][0]] for k in keys)]
            for row in rows
            if row["tabel"] == table
        ]
        in_json = [
            [row["name"], row["code"], *(str(row[k]) for k in keys)]
            for row in published["tables"][table]
        ]
        assert on_page == in_csv == in_json, table
        assert on_page  # every table has a row this month
    assert "&lt;5" in html and "71%" in html and "66:00" in html and ">x<" in html
    for secret in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"], "UVZ-", "ASK-"):
        assert secret not in html + text
    # Each read is audited as a non-patient read, in order, naming month and format
    views = april.gw.svc.store.read_sync(
        lambda db: [
            (r["event_code"], r["user_role"], r["object_id"], r["outcome_detail"], r["patient_id"])
            for r in db["audit_events"].rows_where("event_code LIKE 'adherence.%'", order_by="seq")
        ]
    )
    assert views == [
        # the home page after login, and once more: the last complete month
        ("adherence.view", "coordinator", "2027-03", "format=page", ""),
        ("adherence.view", "coordinator", "2027-03", "format=page", ""),
        ("adherence.view", "coordinator", "2027-04", "format=page", ""),
        ("adherence.export", "coordinator", "2027-04", "format=csv", ""),
        ("adherence.export", "coordinator", "2027-04", "format=json", ""),
    ]


async def test_coordinator_cannot_open_a_request_and_a_gp_cannot_read_the_figures(
    april: Loop, april_site: str
) -> None:
    svc = april.gw.svc
    creds = _add_coordinator(april)
    reference = svc.store.read_sync(
        lambda db: db.execute("SELECT reference FROM requests ORDER BY id LIMIT 1").fetchone()[0]
    )
    async with browser() as coord, browser() as gp:
        await login(coord, april_site, creds)
        for path in (f"/requests/{reference}", "/requests", "/asks", "/privacy",
                     "/privacy/consents", "/admin"):  # fmt: skip
            async with coord.get(f"{april_site}{path}") as r:
                assert r.status == 403, path
                assert EXAMPLE["patient"]["bsn"] not in await r.text()
        await login(gp, april_site, april.credentials("huisarts"))
        async with gp.get(f"{april_site}/regio/afspraken?maand=2027-04") as r:
            assert r.status == 403
            assert "Worden de afspraken" not in await r.text()
    denied = svc.store.read_sync(
        lambda db: [
            (r["user_role"], r["check_authz"])
            for r in db["audit_events"].rows_where("event_code = 'access.denied'", order_by="seq")
        ]
    )
    assert ("coordinator", "deny:request.view") in denied
    assert denied[-1] == ("gp", "deny:adherence.view")
    # the only figures read are the coordinator's own (her home page after login)
    readers = svc.store.read_sync(
        lambda db: {
            r[0]
            for r in db.execute(
                "SELECT user_role FROM audit_events WHERE event_code LIKE 'adherence.%'"
            )
        }
    )
    assert readers == {"coordinator"}


def _who(role: str, org: int | None = 9) -> Actor:
    return Person(user_id=7, username="u", name="U", role=role, org_id=org)


def test_coordinator_policy_opens_only_the_figures_and_the_own_account() -> None:
    opened = {action for action, roles in access.POLICY.items() if "coordinator" in roles}
    # the region map (/regio) is open to every logged-in role and holds no patient data
    assert opened == {"adherence.view", "region.view", "account.self"}


@pytest.mark.parametrize(
    ("who", "action", "resource", "allowed"),
    [
        (_who("coordinator"), "adherence.view", Resource("adherence"), True),
        (_who("coordinator", org=None), "adherence.view", Resource("adherence"), False),
        (_who("admin", org=None), "adherence.view", Resource("adherence"), True),
        (_who("privacy_officer"), "adherence.view", Resource("adherence"), False),
        (_who("gp"), "adherence.view", Resource("adherence"), False),
        (_who("nurse"), "adherence.view", Resource("adherence"), False),
        (_who("coordinator"), "request.view", Resource("request", org_id=9), False),
        (_who("coordinator"), "request.list", Resource("request"), False),
        (_who("coordinator"), "ask.view", Resource("ask"), False),
        (_who("coordinator"), "consent.view", Resource("consent", org_id=9), False),
        (_who("coordinator"), "audit.view", Resource("audit", org_id=9), False),
        (_who("coordinator"), "directory.view", Resource("gp_keys"), False),
    ],
)
def test_adherence_policy_table(who: Actor, action: str, resource: Resource, allowed: bool) -> None:
    assert access.is_allowed(who, action, resource) is allowed


async def test_withdrawn_request_is_not_judged_and_the_withdrawal_is_not_a_turn(
    loop: Loop,
) -> None:
    # Given a request delivered Tue 6 Apr 10:00 and withdrawn by the practice the next week,
    # unanswered (its deadline, Wed 10:00, has passed)
    first = await _send(loop, at(6, 10), "regulier")
    loop.clock.now = at(13, 10)
    withdrawal = example()
    withdrawal.update(kind="intrekking", supersedes=first)
    await exchange.send(loop.gw.svc, loop.gw.gp, withdrawal, GP_PASSPHRASE)
    await deliver_all(loop.gw.svc, clock=loop.clock)
    # Then the team received one turn, withdrawn before an answer: not late, not judged;
    # the withdrawal message itself is no request to answer
    report = _report(loop)
    a = report.teams[(TEAM, "Wijkteam Centrum")]
    assert (a.received, a.withdrawn, a.open_overdue, a.assessed, a.answered) == (1, 1, 0, 0, 0)


# -- per kind of request and of ask (issue 22) --------------------------------------------------


def _wound_care() -> dict[str, Any]:
    from pathlib import Path

    data: dict[str, Any] = json.loads(
        (
            Path(__file__).resolve().parents[1] / "examples" / "aanmelding_wijkverpleging.json"
        ).read_text(encoding="utf-8")
    )
    for key in ("procedures", "period", "instructions"):
        data.pop(key)
    return data


async def test_figures_per_kind_of_request_and_of_ask(loop: Loop) -> None:
    from securemail.exchange import ask_answer

    svc = loop.gw.svc
    # Given an execution request accepted within its day, and a care request accepted late
    uvz = await _send(loop, at(6, 10), "regulier")
    await _answer(loop, loop.nurse_a, at(6, 11), uvz, ACCEPT)
    loop.clock.now = at(7, 9)
    awv = (await exchange.send(svc, loop.gw.gp, _wound_care(), GP_PASSPHRASE)).reference
    await deliver_all(svc, clock=loop.clock)
    await _answer(loop, loop.nurse_a, at(9, 10), awv, ACCEPT)  # Friday: past Thursday 09:00
    assert awv.startswith("AWV-")
    # And a nurse's home-visit ask the GP answered within its 2 hours, and an open request ask
    loop.clock.now = at(12, 9)
    visit = {**ASK, "ask_kind": "huisbezoek", "procedure_code": "", "urgency": "spoed"}
    made = await asks.create(svc, loop.nurse_a, visit)
    loop.clock.now = at(12, 10)
    await ask_answer.answer_ask(svc, loop.gw.gp, made.reference, "Ik kom om 11 uur.")
    await asks.create(svc, loop.nurse_a, ASK)
    loop.clock.now = at(30, 12)
    report = _report(loop)
    # Then the figures are counted per kind, and every kind has a row, even with nothing
    kinds = {code: f for (code, _), f in report.kinds.items()}
    assert (kinds["UVZ"].received, kinds["UVZ"].answered, kinds["UVZ"].within) == (1, 1, 1)
    assert (kinds["AWV"].received, kinds["AWV"].answered, kinds["AWV"].within) == (1, 1, 0)
    ask_kinds = {code: f for (code, _), f in report.ask_kinds.items()}
    assert (ask_kinds["huisbezoek"].received, ask_kinds["huisbezoek"].within) == (1, 1)
    assert (ask_kinds["uitvoeringsverzoek"].received, ask_kinds["uitvoeringsverzoek"].answered) == (
        1, 0,
    )  # fmt: skip
    assert ask_kinds["consult"].received == 0
    # And what is published names the kinds, with small counts suppressed as everywhere
    published = adherence.publish(report)
    rows = {r["code"]: r for r in published["tables"]["kinds"]}
    assert rows["AWV"]["name"] == "Aanmelding wijkverpleging"
    assert rows["AWV"]["received"] == adherence.SUPPRESSED
    assert {r["code"] for r in published["tables"]["ask_kinds"]} == {
        "uitvoeringsverzoek", "consult", "huisbezoek",
    }  # fmt: skip
    assert "kinds,AWV,Aanmelding wijkverpleging" in adherence.to_csv(published)


async def test_time_to_start_of_care_next_to_time_to_answer(loop: Loop) -> None:
    # Five accepted requests, each delivered at 09:00 and accepted at 10:00, with the care
    # planned 2, 4, 6, 24 and 48 hours after the delivery (the team's own clock start);
    # one declined request gives no start of care.
    planned = {6: 2, 7: 4, 8: 6, 9: 24, 12: 48}  # April day (working days) -> hours
    for day, hours in planned.items():
        ref = await _send(loop, at(day, 9), "regulier")
        start = (at(day, 9) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")
        await _answer(loop, loop.nurse_a, at(day, 10), ref, {**ACCEPT, "care_start": start})
    declined = await _send(loop, at(13, 9), "regulier")
    await _answer(loop, loop.nurse_a, at(13, 10), declined, DECLINE)
    loop.clock.now = at(30, 12)
    a = _report(loop).teams[(TEAM, "Wijkteam Centrum")]
    assert a.answered == 6 and sorted(a.minutes) == [60] * 6  # time to answer: 1 h each
    # time to start of care: accepted turns only; nearest rank: median 3rd, p90 5th of 5
    assert sorted(a.start_minutes) == [120, 240, 360, 1440, 2880]
    cells = adherence.publish_figures(a)
    assert (cells["median"], cells["start_median"], cells["start_p90"]) == ("1:00", "6:00", "48:00")
    # published next to the answer times in the CSV's header, never for asks
    assert adherence.table_columns("teams").index("start_median") == (
        adherence.table_columns("teams").index("p90") + 1
    )
    assert "start_median" not in adherence.table_columns("ask_teams")


def test_time_to_start_from_fewer_than_five_accepted_turns_is_suppressed() -> None:
    start = datetime(2027, 4, 6, 9, tzinfo=AMS)
    turns = [
        Turn(TEAM, "A", "01234567", "P", "regulier", start, "geaccepteerd",
             start + timedelta(hours=1), care_start=start + timedelta(hours=h))
        for h in (2, 4, 6, 8)
    ] + [Turn(TEAM, "A", "01234567", "P", "regulier", start, "afgewezen",
              start + timedelta(hours=1))]  # fmt: skip
    f = adherence.answer_figures(turns, now=start + timedelta(days=9), calendar=CAL)
    cells = adherence.publish_figures(f)
    assert cells["median"] == "1:00"  # five answered: shown
    assert (cells["start_median"], cells["start_p90"]) == ("<5", "<5")  # four starts: not


def test_care_planned_before_the_delivery_counts_as_started_at_once() -> None:
    start = datetime(2027, 4, 6, 9, tzinfo=AMS)
    early = Turn(TEAM, "A", "01234567", "P", "spoed", start, "geaccepteerd",
                 start + timedelta(minutes=30), care_start=start - timedelta(hours=3))  # fmt: skip
    f = adherence.answer_figures([early], now=start + timedelta(days=1), calendar=CAL)
    assert f.start_minutes == (0.0,)
