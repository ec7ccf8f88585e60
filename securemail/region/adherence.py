"""Are the agreements kept? Aggregate answer and delivery figures per team, per practice and
per kind of request (execution request, care request; a nurse's ask for a request, a consult
or a home visit), per calendar month, for the region's coordinators (issue 12, part 5;
issue 22; docs/adherence.md).

Invariants:
- no patient data: the loaders select no BSN, name, reference or content, only team and
  practice identities, the kind of request (a reference's three-letter prefix, never the
  reference), urgencies and times; what leaves this module is counts, percentages
  and durations;
- small counts are suppressed in one place (``publish``): a count of 1 to 4, and any
  percentage, median or 90th percentile computed from fewer than 5 items, becomes "<5" in
  the page, the CSV and the JSON alike; and a cell from which, with the shown ones, a
  suppressed count could be worked out becomes "x" (``protect``);
- one calendar: "within the deadline" is ``deadlines.due`` (the same function the deadline
  watch uses), never a second set of working-day rules.

The unit for the answer figures is a *turn*: one request's stay at one team (a row of
``request_hops``). Its clock starts when the relay accepted that team's sealed message
(the moment ``answer_due`` is computed from) and stops at the team's outcome: accepted,
declined or passed on. A passed-on request is an answered turn (by passing on) for the
first team and a new received turn for the next team.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlite_utils

from securemail import deadlines
from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.config import DeadlineSettings
from securemail.delivery import outbox
from securemail.errors import InputError
from securemail.message import csvsafe

#: Below this, a count (1..MIN_COUNT-1) or a figure derived from so few items is suppressed.
MIN_COUNT = 5
SUPPRESSED = "<5"
#: A cell hidden so that a suppressed one cannot be worked out from the cells shown.
HIDDEN = "x"
ACCEPTED, DECLINED, PASSED_ON = "geaccepteerd", "afgewezen", "doorbemiddeld"
OUTCOMES = (ACCEPTED, DECLINED, PASSED_ON)
T = TypeVar("T")
#: A request's kind by its reference prefix (the form definition's reference_prefix), with
#: the name the figures show; an unknown prefix (a form added later) is shown by its code.
REQUEST_KINDS = {"UVZ": "Uitvoeringsverzoek", "AWV": "Aanmelding wijkverpleging"}
#: A nurse's ask by its kind (securemail.exchange.asks.ASK_KINDS, short names).
ASK_KINDS = {"uitvoeringsverzoek": "Uitvoeringsverzoek", "consult": "Consult",
             "huisbezoek": "Huisbezoek"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Turn:
    """One request's turn at one team: what the figures need, nothing about the patient."""

    team: str  # team entry address
    team_name: str
    practice: str  # practice AGB code
    practice_name: str
    urgency: str  # regulier | spoed
    delivered_at: datetime  # the relay accepted the team's message: the clock starts
    outcome: str = ""  # '' | geaccepteerd | afgewezen | doorbemiddeld
    outcome_at: datetime | None = None
    closed_by_practice: bool = False  # withdrawn or superseded before this team answered
    kind: str = "UVZ"  # the request's kind: its reference prefix (REQUEST_KINDS)
    care_start: datetime | None = None  # the planned start of care an accepting team gave


@dataclass(frozen=True, slots=True)
class AskItem:
    """One nurse's ask to a practice: created (the clock starts), fulfilled (it stops)."""

    practice: str
    practice_name: str
    team: str  # the asking team's address
    team_name: str
    urgency: str
    created_at: datetime
    fulfilled_at: datetime | None = None
    kind: str = "uitvoeringsverzoek"  # ASK_KINDS


@dataclass(frozen=True, slots=True)
class Figures:
    """Raw figures for one group in one month (before suppression; never shown as is).

    ``received``: turns (asks) that started in the month. ``answered``: those with an
    outcome (asks: fulfilled). ``within``: answered no later than ``deadlines.due``.
    ``assessed`` = answered + open past the deadline: the base of the percentage (an open
    turn still inside its deadline, or one the practice withdrew unanswered, is not yet
    judged). Times are clock minutes from start to outcome, over the answered ones."""

    received: int
    answered: int
    within: int
    assessed: int
    open_overdue: int
    accepted: int = 0
    declined: int = 0
    passed_on: int = 0
    withdrawn: int = 0
    minutes: tuple[float, ...] = ()
    #: Clock minutes from delivery to the planned start of care, over the accepted turns
    #: that gave one (time to start of care, next to time to answer).
    start_minutes: tuple[float, ...] = ()

    @property
    def median(self) -> float | None:
        return nearest_rank(self.minutes, 50)

    @property
    def p90(self) -> float | None:
        return nearest_rank(self.minutes, 90)

    @property
    def start_median(self) -> float | None:
        return nearest_rank(self.start_minutes, 50)

    @property
    def start_p90(self) -> float | None:
        return nearest_rank(self.start_minutes, 90)


@dataclass(frozen=True, slots=True)
class Report:
    """The month's figures, raw; ``publish`` turns it into what people may see."""

    month: str  # YYYY-MM
    generated_at: datetime
    teams: dict[tuple[str, str], Figures]  # (address, name)
    practices: dict[tuple[str, str], Figures]  # (code, name)
    ask_practices: dict[tuple[str, str], Figures]
    ask_teams: dict[tuple[str, str], Figures]
    kinds: dict[tuple[str, str], Figures] = field(default_factory=dict)  # (prefix, name)
    ask_kinds: dict[tuple[str, str], Figures] = field(default_factory=dict)  # (kind, name)


# -- pure functions ------------------------------------------------------------------------


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile by the nearest-rank method: the value at rank ceil(p/100 * n) of
    the sorted values (1-based). Always an observed value; the median (p=50) of an even
    count is the lower of the two middle values. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_month(text: str) -> str:
    """'YYYY-MM' (2000-01 .. 2099-12), or InputError naming the field."""
    text = (text or "").strip()
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        parsed = None
    if parsed is None or len(text) != 7 or not 2000 <= parsed.year <= 2099:
        raise InputError("month must be YYYY-MM, e.g. 2026-11", field="maand")
    return text


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in the calendar's time zone, as aware datetimes."""
    zone = ZoneInfo(tz)
    first = date.fromisoformat(parse_month(month) + "-01")
    nxt = (first + timedelta(days=32)).replace(day=1)
    return datetime.combine(first, datetime.min.time(), zone), datetime.combine(
        nxt, datetime.min.time(), zone
    )


def month_of(moment: datetime, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).strftime("%Y-%m")


def _minutes(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 60


def answer_due(turn: Turn, calendar: DeadlineSettings) -> datetime:
    """The turn's deadline: the gateway's own rule (deadlines.due), from the delivery."""
    return deadlines.due(turn.delivered_at, turn.urgency, "answer", calendar)


def answer_figures(
    turns: Iterable[Turn],
    *,
    now: datetime,
    calendar: DeadlineSettings,
    due_of: Callable[[Turn], datetime] | None = None,
) -> Figures:
    """Figures for a group of turns: answered within ``deadlines.due(delivered_at, urgency,
    'answer')``; an open turn is overdue when ``now`` is past that deadline. ``due_of``:
    the deadlines computed once per turn (a turn counts for its team and its practice)."""
    received = answered = within = open_overdue = withdrawn = 0
    by_outcome = dict.fromkeys(OUTCOMES, 0)
    minutes: list[float] = []
    start_minutes: list[float] = []
    for t in turns:
        received += 1
        due = due_of(t) if due_of else answer_due(t, calendar)
        if t.outcome in OUTCOMES and t.outcome_at is not None:
            answered += 1
            by_outcome[t.outcome] += 1
            minutes.append(_minutes(t.delivered_at, t.outcome_at))
            if t.outcome == ACCEPTED and t.care_start is not None:
                # care planned before the message arrived (agreed by phone) started on time: 0
                start_minutes.append(max(0.0, _minutes(t.delivered_at, t.care_start)))
            within += not deadlines.is_overdue(due, t.outcome_at)
        elif t.closed_by_practice:
            withdrawn += 1
        elif deadlines.is_overdue(due, now):
            open_overdue += 1
    return Figures(
        received=received,
        answered=answered,
        within=within,
        assessed=answered + open_overdue,
        open_overdue=open_overdue,
        accepted=by_outcome[ACCEPTED],
        declined=by_outcome[DECLINED],
        passed_on=by_outcome[PASSED_ON],
        withdrawn=withdrawn,
        minutes=tuple(minutes),
        start_minutes=tuple(start_minutes),
    )


def ask_figures(asks: Iterable[AskItem], *, now: datetime, calendar: DeadlineSettings) -> Figures:
    """Figures for a group of asks: delivered (the practice sent the request) within
    ``deadlines.due(created_at, urgency, 'ask')``: 2 working days, urgent 2 clock hours."""
    received = delivered = within = open_overdue = 0
    minutes: list[float] = []
    for a in asks:
        received += 1
        due = deadlines.due(a.created_at, a.urgency, "ask", calendar)
        if a.fulfilled_at is not None:
            delivered += 1
            minutes.append(_minutes(a.created_at, a.fulfilled_at))
            within += not deadlines.is_overdue(due, a.fulfilled_at)
        elif deadlines.is_overdue(due, now):
            open_overdue += 1
    return Figures(
        received=received,
        answered=delivered,
        within=within,
        assessed=delivered + open_overdue,
        open_overdue=open_overdue,
        minutes=tuple(minutes),
    )


def _group(
    items: Iterable[T],
    key: Callable[[T], tuple[str, str]],
    seed: Iterable[tuple[str, str]] = (),
) -> dict[tuple[str, str], list[T]]:
    out: dict[tuple[str, str], list[T]] = {k: [] for k in seed}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][1].lower(), kv[0][0])))


def build_report(
    month: str,
    turns: Iterable[Turn],
    asks: Iterable[AskItem],
    *,
    now: datetime,
    calendar: DeadlineSettings,
    teams: Iterable[tuple[str, str]] = (),
    practices: Iterable[tuple[str, str]] = (),
) -> Report:
    """The month's report over rows: only turns delivered, and asks created, in ``month``
    (Europe/Amsterdam, or the calendar's time zone) count. ``teams`` and ``practices``
    ((code, name) pairs) get a row even with nothing in the month: a row of zeros is
    itself a finding (a team nobody sends to, a practice that sends nothing)."""
    teams, practices = list(teams), list(practices)
    tz = calendar.timezone
    month = parse_month(month)
    turns = [t for t in turns if month_of(t.delivered_at, tz) == month]
    asks = [a for a in asks if month_of(a.created_at, tz) == month]
    dues = {id(t): answer_due(t, calendar) for t in turns}

    def answers(groups: dict[tuple[str, str], list[Turn]]) -> dict[tuple[str, str], Figures]:
        return {
            k: answer_figures(v, now=now, calendar=calendar, due_of=lambda t: dues[id(t)])
            for k, v in groups.items()
        }

    def delivered(groups: dict[tuple[str, str], list[AskItem]]) -> dict[tuple[str, str], Figures]:
        return {k: ask_figures(v, now=now, calendar=calendar) for k, v in groups.items()}

    return Report(
        month=month,
        generated_at=now,
        teams=answers(_group(turns, lambda t: (t.team, t.team_name), teams)),
        practices=answers(_group(turns, lambda t: (t.practice, t.practice_name), practices)),
        ask_practices=delivered(_group(asks, lambda a: (a.practice, a.practice_name), practices)),
        ask_teams=delivered(_group(asks, lambda a: (a.team, a.team_name), teams)),
        kinds=answers(_group(turns, lambda t: (t.kind, kind_name(t.kind)), REQUEST_KINDS.items())),
        ask_kinds=delivered(
            _group(asks, lambda a: (a.kind, ASK_KINDS.get(a.kind, a.kind)), ASK_KINDS.items())
        ),
    )


def kind_name(prefix: str) -> str:
    return REQUEST_KINDS.get(prefix, prefix)


# -- suppression: the only way out ------------------------------------------------------------


def count_cell(n: int) -> int | str:
    """0 stays 0 (it singles out no one, and 'nothing arrived' is itself what a coordinator
    needs to see); 1 to 4 become '<5'; 5 and more are shown."""
    return SUPPRESSED if 0 < n < MIN_COUNT else n


def derived_cell(base: int, value: float | None, fmt: Callable[[float], str]) -> str:
    """A percentage or duration computed from ``base`` items: '' without items, '<5' from
    fewer than 5, else the formatted value."""
    if base == 0 or value is None:
        return ""
    if base < MIN_COUNT:
        return SUPPRESSED
    return fmt(value)


def hours_minutes(minutes: float) -> str:
    """Clock duration as H:MM (hours may exceed 24), rounded to the minute."""
    total = round(minutes)
    return f"{total // 60}:{total % 60:02d}"


def percent(value: float) -> str:
    return f"{value:.0f}%"


#: Published columns in order: key -> (Dutch header, applies to answers, applies to asks).
COLUMNS: dict[str, tuple[str, bool, bool]] = {
    "received": ("ontvangen", True, True),
    "answered": ("beantwoord / geleverd", True, True),
    "within": ("binnen termijn", True, True),
    "within_pct": ("% binnen termijn", True, True),
    "median": ("mediaan (u:mm)", True, True),
    "p90": ("90e percentiel (u:mm)", True, True),
    "start_median": ("tot start zorg, mediaan (u:mm)", True, False),
    "start_p90": ("tot start zorg, 90e percentiel (u:mm)", True, False),
    "accepted": ("geaccepteerd", True, False),
    "declined": ("afgewezen", True, False),
    "passed_on": ("doorbemiddeld", True, False),
    "open_overdue": ("open, termijn verstreken", True, True),
    "withdrawn": ("ingetrokken voor antwoord", True, False),
}
TABLES = {
    "teams": "Antwoorden per wijkteam",
    "practices": "Antwoorden per huisartsenpraktijk (verzoeken van de praktijk)",
    "ask_practices": "Vragen van verpleegkundigen, geleverd per huisartsenpraktijk",
    "ask_teams": "Vragen van verpleegkundigen, per vragend team",
    "kinds": "Antwoorden per soort verzoek",
    "ask_kinds": "Vragen van verpleegkundigen, per soort vraag",
}
#: What a table's rows are (the page's first column).
ROW_SUBJECTS = {"teams": "Team", "practices": "Praktijk", "ask_practices": "Praktijk",
                "ask_teams": "Team", "kinds": "Soort", "ask_kinds": "Soort"}  # fmt: skip


def table_columns(table: str) -> list[str]:
    """The published column keys of a table, in order."""
    return [k for k, (_, answers, asks) in COLUMNS.items() if (asks if table.startswith("ask_")
            else answers)]  # fmt: skip


def publish_figures(f: Figures, *, asks: bool = False) -> dict[str, int | str]:
    """One group's figures as they may be shown: every count and derived figure suppressed
    by the rule above. The only function that turns Figures into something visible."""
    pct = f.within / f.assessed * 100 if f.assessed else None
    cells: dict[str, int | str] = {
        "received": count_cell(f.received),
        "answered": count_cell(f.answered),
        "within": count_cell(f.within),
        "within_pct": derived_cell(f.assessed, pct, percent),
        "median": derived_cell(f.answered, f.median, hours_minutes),
        "p90": derived_cell(f.answered, f.p90, hours_minutes),
        "start_median": derived_cell(len(f.start_minutes), f.start_median, hours_minutes),
        "start_p90": derived_cell(len(f.start_minutes), f.start_p90, hours_minutes),
        "accepted": count_cell(f.accepted),
        "declined": count_cell(f.declined),
        "passed_on": count_cell(f.passed_on),
        "open_overdue": count_cell(f.open_overdue),
        "withdrawn": count_cell(f.withdrawn),
    }
    return {k: v for k, v in cells.items() if COLUMNS[k][2 if asks else 1]}


#: A row's parts that add up to its total.
ROW_SUMS: dict[str, tuple[str, ...]] = {"answered": ("accepted", "declined", "passed_on")}
#: Counts that add up down a column: the teams' received add up to what the practices
#: received (every turn counts for its team and its practice), and so on.
COLUMN_SUMS = (
    "received", "answered", "within", "accepted", "declined", "passed_on", "open_overdue",
    "withdrawn",
)  # fmt: skip


def protect(rows: list[dict[str, int | str]], figures: Sequence[Figures]) -> None:
    """Secondary suppression, in place, of one table's published rows (``figures`` their
    raw figures, in the same order).

    A suppressed cell must not be the only hidden cell of a sum whose other terms are shown:
    a row's answered = accepted + declined + passed on, and a column's total, which the
    other table shows (the teams' column adds up to the practices'). So where a sum has
    exactly one hidden cell, its smallest non-zero shown term is hidden too (``HIDDEN``),
    until no sum has exactly one; and a percentage within the deadline goes with a hidden
    count within the deadline (the count is the percentage times its base, which is shown).
    Zeros stay shown: they single out no one.
    """

    def hidden(i: int, key: str) -> bool:
        return rows[i][key] in (SUPPRESSED, HIDDEN)

    def hide_one_more(cells: list[tuple[int, str]]) -> bool:
        if sum(hidden(i, k) for i, k in cells) != 1:
            return False
        shown = [(getattr(figures[i], k), i, k) for i, k in cells if not hidden(i, k)]
        candidates = [c for c in shown if c[0] > 0]
        if not candidates:
            return False
        _, i, k = min(candidates)
        rows[i][k] = HIDDEN
        return True

    changed = bool(rows)
    while changed:
        changed = False
        for i, row in enumerate(rows):
            if "within_pct" in row and hidden(i, "within") and row["within_pct"] not in (
                "", SUPPRESSED, HIDDEN
            ):  # fmt: skip
                row["within_pct"] = HIDDEN
                changed = True
            for total, parts in ROW_SUMS.items():
                if all(k in row for k in (total, *parts)):
                    changed |= hide_one_more([(i, k) for k in (total, *parts)])
        for key in COLUMN_SUMS:
            if key in rows[0]:
                changed |= hide_one_more([(i, key) for i in range(len(rows))])


def publish(report: Report) -> dict[str, Any]:
    """The report as people may see it (page, CSV, JSON): suppressed, no patient data."""
    tables: dict[str, list[dict[str, int | str]]] = {}
    for table in TABLES:
        groups: dict[tuple[str, str], Figures] = getattr(report, table)
        asks = table.startswith("ask_")
        rows = [
            {"code": code, "name": name, **publish_figures(f, asks=asks)}
            for (code, name), f in groups.items()
        ]
        protect(rows, list(groups.values()))
        tables[table] = rows
    return {
        "month": report.month,
        "generated_at": report.generated_at.astimezone(UTC).isoformat(timespec="seconds"),
        "min_count": MIN_COUNT,
        "hidden": HIDDEN,
        "tables": tables,
    }


def to_csv(published: dict[str, Any]) -> str:
    """One CSV for the month: a row per group and table, the published (suppressed) cells;
    cells that do not apply to a table stay empty."""
    buf = io.StringIO()
    writer = csvsafe.writer(buf)
    writer.writerow(["maand", "tabel", "code", "naam", *(h for h, _, _ in COLUMNS.values())])
    for table, rows in published["tables"].items():
        for row in rows:
            writer.writerow(
                [published["month"], table, row["code"], row["name"],
                 *(row.get(k, "") for k in COLUMNS)]
            )  # fmt: skip
    return buf.getvalue()


# -- loading rows (no patient columns) and the audited read ------------------------------------


def _parse_iso(text: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: A hop is looked at only if queued at most this long before the month began: the scan of
#: request_hops stays near one month (delivery gives up after [delivery]
#: give_up_after_seconds, a day by default, long before this).
QUEUED_MARGIN = timedelta(days=31)


def _text_window(
    start: datetime, end: datetime, *, before: timedelta = timedelta(days=2)
) -> tuple[str, str]:
    """Bounds for ISO 8601 text columns whose offsets vary (Z, +01:00): whole days with a
    margin on both sides, so a text comparison never drops a row; the exact test follows."""
    return (
        (start - before).date().isoformat(),
        (end + timedelta(days=2)).date().isoformat(),
    )


def load_turns(db: sqlite_utils.Database, start: datetime, end: datetime) -> list[Turn]:
    """Turns whose message the relay accepted in [start, end). A turn whose message never
    left (failed, stopped) was never received by the team; a withdrawal message is not a
    request to answer. Selects no patient column."""
    # When the relay took each message (the outbox's own read; message_id is unique there).
    delivered = outbox.sent_between(db, start.timestamp(), end.timestamp())
    cur = db.execute(
        "SELECT t.address, t.name, p.code, p.name, r.urgency, h.message_id, h.outcome, "
        "h.outcome_at, r.state, substr(r.reference, 1, 3) AS kind, h.care_start, "
        # only an unanswered hop of a withdrawn request needs to know whether it is the last
        "CASE WHEN h.outcome = '' AND r.state IN ('withdrawn', 'superseded') THEN "
        "  h.id = (SELECT MAX(id) FROM request_hops x WHERE x.reference = h.reference) "
        "ELSE 0 END AS last_hop "
        "FROM request_hops h JOIN requests r ON r.reference = h.reference "
        "JOIN teams t ON t.id = h.team_id JOIN organisations p ON p.id = r.practice_org_id "
        "WHERE r.kind != 'intrekking' AND h.sent_at >= ? AND h.sent_at < ?",
        _text_window(start, end, before=QUEUED_MARGIN),
    )
    return [
        Turn(
            team=address,
            team_name=team_name,
            practice=code,
            practice_name=practice_name,
            urgency=urgency,
            delivered_at=datetime.fromtimestamp(delivered[message_id], UTC),
            outcome=outcome,
            outcome_at=_parse_iso(outcome_at),
            closed_by_practice=bool(last_hop)
            and not outcome
            and state in ("withdrawn", "superseded"),
            kind=kind,
            care_start=_parse_iso(care_start),
        )  # fmt: skip
        for (
            address,
            team_name,
            code,
            practice_name,
            urgency,
            message_id,
            outcome,
            outcome_at,
            state,
            kind,
            care_start,
            last_hop,
        ) in cur
        if message_id in delivered  # the team received only what the relay took
    ]


def load_asks(db: sqlite_utils.Database, start: datetime, end: datetime) -> list[AskItem]:
    """Asks created in [start, end). Selects no patient column (no BSN, name, reason)."""
    lo, hi = _text_window(start, end)
    cur = db.execute(
        "SELECT p.code, p.name, t.address, t.name, a.urgency, a.created_at, a.fulfilled_at, "
        "a.ask_kind "
        "FROM asks a JOIN teams t ON t.id = a.team_id "
        "JOIN organisations p ON p.id = a.practice_org_id "
        "WHERE a.created_at >= ? AND a.created_at < ?",
        [lo, hi],
    )
    out = []
    for code, practice_name, address, team_name, urgency, created, fulfilled, kind in cur:
        created_at = _parse_iso(created)
        if created_at is None or not start <= created_at < end:
            continue
        out.append(
            AskItem(code, practice_name, address, team_name, urgency, created_at,
                    _parse_iso(fulfilled), kind)
        )  # fmt: skip
    return out


def report_for(
    db: sqlite_utils.Database, month: str, *, now: datetime, calendar: DeadlineSettings
) -> Report:
    """Load the month's rows and build its raw report (no audit row, nothing suppressed:
    for tests and benchmarks; people get ``record_read`` + ``load_month`` + ``figures``)."""
    return load_month(db, month, calendar).report(now=now, calendar=calendar)


@dataclass(frozen=True, slots=True)
class MonthRows:
    """A month's rows as read (under its audit row); ``figures`` makes the published report."""

    month: str
    turns: list[Turn]
    asks: list[AskItem]
    teams: list[tuple[str, str]]  # active teams (address, name): a row even when empty
    practices: list[tuple[str, str]]  # practices (code, name)

    def report(self, *, now: datetime, calendar: DeadlineSettings) -> Report:
        """The raw report (never shown as is)."""
        return build_report(self.month, self.turns, self.asks, now=now, calendar=calendar,
                            teams=self.teams, practices=self.practices)  # fmt: skip

    def figures(self, *, now: datetime, calendar: DeadlineSettings) -> dict[str, Any]:
        """The published (suppressed) report: pure, so it can run off the writer thread."""
        return publish(self.report(now=now, calendar=calendar))


def record_read(
    db: sqlite_utils.Database,
    actor: Actor,
    month: str,
    *,
    export: str = "",
) -> str:
    """Check that actor may read the month's figures and write the audit row of the read
    (``adherence.view``, or ``adherence.export`` with the format): a non-patient read, so
    the row names the month and the format, never a patient. Run in a write, before the
    read (``load_month``): the attempt is on record even if the read then fails, and the
    month's SQL runs on a reader snapshot, not on the single writer."""
    month = parse_month(month)
    require(actor, "adherence.view", Resource("adherence", ref=month))
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "adherence.export" if export else "adherence.view",
            object_type="adherence",
            object_id=month,
            outcome_detail=f"format={export or 'page'}",
            data_categories="aggregate",
            purpose="HOPERAT",  # operations: figures about the service, not care for a patient
            check_authz=f"permit:{actor.role}",
        ),
    )
    return month


def load_month(db: sqlite_utils.Database, month: str, calendar: DeadlineSettings) -> MonthRows:
    """The month's turns and asks (no patient column); after ``record_read``."""
    start, end = month_bounds(month, calendar.timezone)
    teams = [
        (str(a), str(n)) for a, n in db.execute("SELECT address, name FROM teams WHERE active = 1")
    ]
    practices = [(str(c), str(n)) for c, n in db.execute(
        "SELECT code, name FROM organisations WHERE kind = 'practice'")]  # fmt: skip
    return MonthRows(
        parse_month(month), load_turns(db, start, end), load_asks(db, start, end), teams,
        practices,
    )  # fmt: skip


def record_denial(db: sqlite_utils.Database, actor: Actor, month: str) -> None:
    """The access.denied row of a refused read (written in its own transaction, since the
    refused read's transaction rolls back)."""
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "access.denied",
            outcome="refused",
            outcome_detail="adherence.view: access.denied",
            object_type="adherence",
            object_id=month,
            check_authz="deny:adherence.view",
        ),
    )


def previous_month(now: datetime, tz: str) -> str:
    """The last complete calendar month before now (the page's default)."""
    first = now.astimezone(ZoneInfo(tz)).date().replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")
