"""The privacy officer's questions over the audit trail, scoped to the officer's organisation.

Invariants:
- every query goes through ``authorize`` (access policy: audit.view / audit.export) and
  ``Scope.where`` (the one definition of which rows an organisation owns);
- every function that shows rows records ``audit.view`` (or ``audit.export``) in the
  caller's write transaction, so reading the trail always leaves a row; a refusal is
  recorded as ``access.denied`` by ``run``/``run_sync`` in a transaction of its own;
- each query is driven by an index (patient, user, event code, organisation + time), so
  answers stay fast on a trail of tens of millions of rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlite_utils
from sqlite_utils import Migrations

from securemail import config
from securemail.access import Actor, Resource, require
from securemail.audit import plain
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.errors import AccessDeniedError, InputError, NotFoundError
from securemail.form.fields import is_valid_bsn
from securemail.store import Store

T = TypeVar("T")

MIGRATIONS = Migrations("securemail.audit_report")


@MIGRATIONS(name="0001_report_indexes")
def _m1(db: sqlite_utils.Database) -> None:
    # Driving indexes for the scope's OR terms and for event-kind queries (EXPLAIN QUERY
    # PLAN in tests/test_audit.py shows each one used).
    db.execute("CREATE INDEX audit_sender ON audit_events (sender_org, occurred_at)")
    db.execute("CREATE INDEX audit_recipient ON audit_events (recipient_org, occurred_at)")
    db.execute("CREATE INDEX audit_code ON audit_events (event_code, occurred_at)")


#: Columns a report row carries (everything but the hashes).
COLUMNS = (
    "seq",
    "event_id",
    "event_code",
    "action",
    "occurred_at",
    "recorded_at",
    "nature",
    "emergency_reason",
    "outcome",
    "outcome_detail",
    "check_authz",
    "check_consent",
    "user_id",
    "user_name",
    "user_role",
    "org_id",
    "responsible_user_id",
    "access_point",
    "purpose",
    "patient_id",
    "object_type",
    "object_id",
    "data_categories",
    "consent_id",
    "sender_org",
    "recipient_org",
    "source_id",
    # Migration 0002 of the trail (empty on older rows): the authorisation protocol, the
    # coded role, the access point's type.
    "policy_id",
    "policy_version",
    "role_code",
    "access_point_type",
)
_SELECT = ", ".join(f"e.{c}" for c in COLUMNS)
DISCLOSURE_CODES = (
    "request.create",
    "request.view",
    "request.sign",
    "request.send",
    "request.deliver",
    "request.answer",
    "request.pass_on",
    "request.withdraw",
    "request.stop",
    "request.fail",
)
FAILURE_CODES = ("request.fail", "request.retry", "request.uncertain", "notice.fail")
PAIR_CODES = ("request.send", "request.deliver", "request.fail", "request.stop")
LIMIT = 500


# -- scope and access ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows an organisation owns: it acted (org_id), sent (sender_org) or received
    (recipient_org is its code or one of its team addresses)."""

    org_id: int
    org_code: str
    org_name: str
    team_addresses: tuple[str, ...] = ()

    def where(
        self, alias: str = "e", start: str | None = None, end: str | None = None
    ) -> tuple[str, list[Any]]:
        """SQL predicate and parameters; with a period, the period sits inside every OR
        term so that each term can use its (column, occurred_at) index."""
        window, wparams = "", []
        if start is not None and end is not None:
            window, wparams = (
                f" AND {alias}.occurred_at >= ? AND {alias}.occurred_at < ?",
                [start, end],
            )
        receivers = (self.org_code, *self.team_addresses)
        marks = ", ".join("?" for _ in receivers)
        sql = (
            f"(({alias}.org_id = ?{window}) OR ({alias}.sender_org = ?{window}) "
            f"OR ({alias}.recipient_org IN ({marks}){window}))"
        )
        return sql, [self.org_code, *wparams, self.org_code, *wparams, *receivers, *wparams]


def scope_for(db: sqlite_utils.Database, actor: Actor) -> Scope:
    if actor.org_id is None:
        raise AccessDeniedError("the audit console needs an organisation", action="audit.view")
    row = db.execute("SELECT code, name FROM organisations WHERE id = ?", [actor.org_id]).fetchone()
    if row is None:
        raise NotFoundError("organisation not found", org_id=actor.org_id)
    teams = tuple(
        r[0]
        for r in db.execute(
            "SELECT address FROM teams WHERE org_id = ? ORDER BY address", [actor.org_id]
        )
    )
    return Scope(actor.org_id, str(row[0]), str(row[1]), teams)


def authorize(db: sqlite_utils.Database, actor: Actor, action: str = "audit.view") -> Scope:
    """The actor's scope, or AccessDeniedError (run/run_sync record the refusal)."""
    require(actor, action, Resource("audit", org_id=actor.org_id))
    return scope_for(db, actor)


def record_denial(
    db: sqlite_utils.Database,
    actor: Actor,
    action: str,
    exc: Exception,
    *,
    what: str = "",
) -> int:
    code = getattr(exc, "code", "access.denied")
    return audit.record(
        db,
        AuditEvent.of(
            actor,
            "access.denied",
            outcome="refused",
            outcome_detail=f"{action}: {code}",
            object_type="audit",
            object_id=what,
            check_authz=f"deny:{action}",
        ),
    )


def run_sync(
    store: Store,
    actor: Actor,
    action: str,
    fn: Callable[[sqlite_utils.Database], T],
    *,
    what: str = "",
) -> T:
    """store.write_sync(fn); on AccessDeniedError also write the access.denied row."""
    try:
        return store.write_sync(fn)
    except AccessDeniedError as exc:
        denied: Exception = exc
        store.write_sync(lambda db: record_denial(db, actor, action, denied, what=what))
        raise


async def run(
    store: Store,
    actor: Actor,
    action: str,
    fn: Callable[[sqlite_utils.Database], T],
    *,
    what: str = "",
    source_id: str | None = None,
) -> T:
    """Async run_sync, on the store's writer thread."""
    try:
        return await store.write(fn)
    except AccessDeniedError as exc:
        denied: Exception = exc
        await store.write(lambda db: record_denial(db, actor, action, denied, what=what))
        raise


def _view(
    db: sqlite_utils.Database,
    actor: Actor,
    what: str,
    detail: str,
    *,
    patient: str = "",
    export: bool = False,
) -> int:
    return audit.record(
        db,
        AuditEvent.of(
            actor,
            "audit.export" if export else "audit.view",
            patient_id=patient,
            object_type="audit",
            object_id=what,
            outcome_detail=detail,
            check_authz=f"permit:{actor.role}",
        ),
    )


def _rows(db: sqlite_utils.Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = db.conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


# -- periods -------------------------------------------------------------------------------


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_period(
    start: str | None,
    end: str | None,
    *,
    tz: str = "Europe/Amsterdam",
    now: datetime | None = None,
    default_days: int = 30,
) -> tuple[str, str]:
    """Local dates (YYYY-MM-DD, end inclusive) to a UTC [start, end) in the trail's format."""
    zone = ZoneInfo(tz)
    today = (now or datetime.now(UTC)).astimezone(zone).date()

    def day(value: str | None, fallback: date, name: str) -> date:
        if not value:
            return fallback
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            raise InputError(f"{name} must be a date (YYYY-MM-DD)", field=name) from None

    last = day(end, today, "to")
    first = day(start, last - timedelta(days=default_days - 1), "from")
    if first > last:
        raise InputError("the period ends before it starts", field="from")
    lo = datetime.combine(first, time(), zone)
    hi = datetime.combine(last + timedelta(days=1), time(), zone)
    return utc_iso(lo), utc_iso(hi)


def parse_bsn(value: str) -> str:
    """A BSN for a lookup: 9 digits passing the 11-test (the reason never repeats it)."""
    bsn = value.strip().replace(" ", "").replace(".", "")
    if len(bsn) == 8 and bsn.isdigit():
        bsn = "0" + bsn
    if not is_valid_bsn(bsn):
        raise InputError("not a valid BSN (9 digits, 11-test)", field="bsn")
    return bsn


# -- names for codes and addresses ---------------------------------------------------------


def names(db: sqlite_utils.Database) -> dict[str, str]:
    """Organisation code or team address -> a name a person recognises."""
    out: dict[str, str] = {}
    if "organisations" not in db.table_names():
        return out
    for code, name in db.execute("SELECT code, name FROM organisations"):
        out[str(code)] = str(name)
    for addr, team, org in db.execute(
        "SELECT t.address, t.name, o.name FROM teams t JOIN organisations o ON o.id = t.org_id"
    ):
        out[str(addr)] = f"{team} ({org})"
    return out


def team_orgs(db: sqlite_utils.Database) -> dict[str, str]:
    """Team address -> its organisation's code."""
    if "teams" not in db.table_names():
        return {}
    return {
        str(a): str(c)
        for a, c in db.execute(
            "SELECT t.address, o.code FROM teams t JOIN organisations o ON o.id = t.org_id"
        )
    }


# -- 1. patient disclosure report ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DisclosureReport:
    bsn: str
    start: str
    end: str
    organisation: str
    rows: list[dict[str, Any]]
    names: dict[str, str]
    generated_at: str
    generated_by: str
    view_seq: int
    lines: list[Line] = field(default_factory=list)


def disclosure_report(
    db: sqlite_utils.Database,
    actor: Actor,
    bsn: str,
    start: str,
    end: str,
    *,
    export: str = "",
) -> DisclosureReport:
    """Every event about the patient in [start, end) that the officer's organisation owns
    (AVG art. 15, Wabvpz art. 15e); export="csv"/"pdf" records audit.export instead."""
    scope = authorize(db, actor, "audit.export" if export else "audit.view")
    bsn = parse_bsn(bsn)
    rows = _patient_rows(db, scope, bsn, start, end)
    seq = _view(
        db,
        actor,
        "disclosure",
        f"period {start}..{end}; {len(rows)} rows; {export or 'page'}",
        patient=bsn,
        export=bool(export),
    )
    return DisclosureReport(
        bsn,
        start,
        end,
        scope.org_name,
        rows,
        names(db),
        audit.now_ms(),
        actor.name or actor.username,
        seq,
        group_rows(rows, names(db), people(db)),
    )


# -- one line per action (the console and the patient's report) --------------------------

#: Rows that belong to one action, by family: the send (its consent checks apart, as the
#: one line that says whether the register allowed it), the delivery attempts of one message,
#: the notices, and reads. A family with no window gathers its rows whatever time lies
#: between (a retry an hour later is the same delivery).
FAMILIES: dict[str, str] = {
    "request.create": "send",
    "request.sign": "send",
    "request.send": "send",
    "consent.check": "consent.check",
    "request.deliver": "delivery",
    "request.retry": "delivery",
    "request.uncertain": "delivery",
    "request.fail": "delivery",
    "request.answer_copy": "delivery",
    "notice.send": "notice",
    "notice.deliver": "notice",
    "notice.retry": "notice",
    "notice.uncertain": "notice",
    "notice.fail": "notice",
    "request.view": "request.view",
    "request.list": "request.list",
    "ask.view": "ask.view",
    "consent.view": "consent.view",
    "draft.view": "draft.view",
}
#: How far apart two rows of a family may lie and still be one action (None: any distance).
WINDOWS: dict[str, timedelta | None] = {"delivery": None, "notice": None}
GROUP_WINDOW = timedelta(minutes=1)
#: The row whose sentence speaks for its group: the last step of the action reached.
_LEAD = {"request.send": 3, "request.sign": 2, "request.deliver": 3, "request.fail": 2}


@dataclass(frozen=True, slots=True)
class Person:
    """Who acted, as a reader knows them: name, Dutch role, organisation name."""

    name: str
    role: str
    organisation: str


@dataclass
class Line:
    """One action as one line: who, what (one Dutch sentence), which request, when, why;
    the raw rows it stands for in ``rows`` (the fold), oldest first."""

    occurred_at: str
    last_at: str
    who: Person
    sentence: str
    reference: str
    reason: str
    emergency: str
    refused: bool
    rows: list[dict[str, Any]]
    #: The raw rows as the fold shows them: (time, event code, sentence, detail without ids).
    fold: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.rows)


def people(db: sqlite_utils.Database) -> dict[int, tuple[str, str]]:
    """User id -> (name, role) from the accounts (the trail holds the username)."""
    if "users" not in db.table_names():
        return {}
    return {int(i): (str(n or u), str(r)) for i, u, n, r in db.execute(
        "SELECT id, username, name, role FROM users"
    )}  # fmt: skip


def person(row: dict[str, Any], who: dict[int, tuple[str, str]], orgs: dict[str, str]) -> Person:
    organisation = orgs.get(str(row.get("org_id") or ""), "")
    if row.get("user_id") is None:
        # The gateway itself (delivery, the worker's checks): its name says what it is.
        return Person(plain.SYSTEM_NAME, "", organisation)
    name, role = who.get(int(row["user_id"]), (str(row.get("user_name") or ""), ""))
    return Person(name, plain.role_nl(row.get("user_role") or role), organisation)


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _group_key(row: dict[str, Any]) -> tuple[Any, ...]:
    family = FAMILIES.get(str(row["event_code"]), "")
    if not family:
        return ("row", row["seq"])  # not grouped: every other row is its own line
    receiver = "" if family in ("delivery", "notice") else row.get("recipient_org") or ""
    return (family, row.get("user_id"), plain.reference(row), receiver, row.get("nature"))


def _lead(rows: list[dict[str, Any]]) -> dict[str, Any]:
    refused = [r for r in rows if r.get("outcome") != "success"]
    if refused:
        return refused[-1]
    return max(rows, key=lambda r: (_LEAD.get(str(r["event_code"]), 0), r["seq"]))


def group_rows(
    rows: list[dict[str, Any]],
    names: dict[str, str],
    who: dict[int, tuple[str, str]],
    *,
    window: timedelta = GROUP_WINDOW,
) -> list[Line]:
    """Rows (in time order) as lines: rows of one family, by the same person, about the same
    request and receiver, within ``window`` of the group's previous row (any distance for a
    delivery) become one line; every other row is a line of its own. Nothing is dropped:
    the lines' rows together are the input rows."""
    open_groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        key = _group_key(row)
        group = open_groups.get(key)
        limit = WINDOWS.get(str(key[0]), window)
        if group is not None and (
            limit is None
            or _moment(row["occurred_at"]) - _moment(group[-1]["occurred_at"]) <= limit
        ):
            group.append(row)
            continue
        group = [row]
        open_groups[key] = group
        groups.append(group)
    return [_line(g, names, who) for g in groups]


def _line(
    group: list[dict[str, Any]], names: dict[str, str], who: dict[int, tuple[str, str]]
) -> Line:
    lead = _lead(group)
    emergency = next((r for r in group if r.get("nature") == "emergency"), None)
    reasons = dict.fromkeys(plain.reason(r) for r in group)
    return Line(
        occurred_at=group[0]["occurred_at"],
        last_at=group[-1]["occurred_at"],
        who=person(lead, who, names),
        sentence=plain.sentence(lead, names),
        reference=next((plain.reference(r) for r in group if plain.reference(r)), ""),
        reason="; ".join(r for r in reasons if r),
        emergency=(emergency.get("emergency_reason") or "geen reden opgegeven")
        if emergency
        else "",
        refused=any(r.get("outcome") != "success" for r in group),
        rows=group,
        fold=[
            (
                str(r["occurred_at"]),
                str(r["event_code"]),
                plain.sentence(r, names),
                plain.scrub(str(r.get("outcome_detail") or "")),
            )
            for r in group
        ],
    )


def _patient_rows(
    db: sqlite_utils.Database, scope: Scope, bsn: str, start: str, end: str
) -> list[dict[str, Any]]:
    """The scope's rows about one patient in [start, end), in time order."""
    where, params = scope.where()
    return _rows(
        db,
        f"SELECT {_SELECT} FROM audit_events e INDEXED BY audit_patient "  # noqa: S608
        f"WHERE e.patient_id = ? AND e.occurred_at >= ? AND e.occurred_at < ? "
        f"AND {where} ORDER BY e.occurred_at, e.seq",
        [bsn, start, end, *params],
    )


@dataclass(frozen=True, slots=True)
class PatientDisclosure:
    """The disclosure report for the patient (Wabvpz art. 15e, "wie heeft mijn gegevens
    ingezien"): per organisation, per person (name and function), the lines of what they did.
    Holds no BSN, user id or UUID: it is made to be handed over."""

    start: str
    end: str
    organisation: str
    generated_at: str
    by_org: list[tuple[str, list[tuple[Person, list[Line]]]]]

    @property
    def count(self) -> int:
        return sum(len(lines) for _, persons in self.by_org for _, lines in persons)


def patient_disclosure(
    db: sqlite_utils.Database, actor: Actor, bsn: str, start: str, end: str
) -> PatientDisclosure:
    """The patient's version of the disclosure report; records ``privacy.disclosure_pdf``
    (with the BSN, as every access to patient data) in the caller's transaction."""
    scope = authorize(db, actor, "privacy.disclosure_pdf")
    bsn = parse_bsn(bsn)
    rows = _patient_rows(db, scope, bsn, start, end)
    audit.record(
        db,
        AuditEvent.of(
            actor,
            "privacy.disclosure_pdf",
            patient_id=bsn,
            object_type="audit",
            object_id="disclosure",
            outcome_detail=f"period {start}..{end}; {len(rows)} rows; patient pdf",
            check_authz=f"permit:{actor.role}",
        ),
    )
    grouped: dict[str, dict[Person, list[Line]]] = defaultdict(lambda: defaultdict(list))
    for line in group_rows(rows, names(db), people(db)):
        grouped[line.who.organisation or scope.org_name][line.who].append(line)
    by_org = [(org, list(persons.items())) for org, persons in grouped.items()]
    return PatientDisclosure(start, end, scope.org_name, audit.now_ms(), by_org)


# -- 2. per-user activity ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserActivity:
    user_id: int
    user_name: str
    start: str
    end: str
    by_patient: dict[str, list[dict[str, Any]]]
    total: int
    lines_by_patient: dict[str, list[Line]] = field(default_factory=dict)


def org_users(db: sqlite_utils.Database, actor: Actor) -> list[dict[str, Any]]:
    """The officer's organisation's accounts (to pick one for the activity report)."""
    authorize(db, actor)
    return _rows(
        db,
        "SELECT id, username, name, role, active FROM users WHERE org_id = ? ORDER BY username",
        [actor.org_id],
    )


def user_activity(
    db: sqlite_utils.Database,
    actor: Actor,
    user_id: int,
    start: str,
    end: str,
    *,
    source_id: str | None = None,
) -> UserActivity:
    """Everything user_id did in [start, end) within the officer's scope, by patient."""
    scope = authorize(db, actor)
    where, params = scope.where()
    rows = _rows(
        db,
        f"SELECT {_SELECT} FROM audit_events e INDEXED BY audit_user "  # noqa: S608
        f"WHERE e.user_id = ? AND e.occurred_at >= ? AND e.occurred_at < ? "
        f"AND {where} ORDER BY e.occurred_at, e.seq",
        [user_id, start, end, *params],
    )
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    orgs, who = names(db), people(db)
    # The name only when the user acted in scope: another organisation's people stay unnamed.
    name = who.get(user_id, (rows[0]["user_name"], ""))[0] if rows else ""
    _view(
        db,
        actor,
        f"user:{user_id}",
        f"period {start}..{end}; {len(rows)} rows",
    )
    lines = {p: group_rows(r, orgs, who) for p, r in by_patient.items()}
    return UserActivity(user_id, name, start, end, dict(by_patient), len(rows), lines)


# -- 3. exceptions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anomaly:
    user_id: int
    user_name: str
    count: int
    baseline_daily_median: float
    threshold: float


@dataclass
class Exceptions:
    refusals: list[dict[str, Any]] = field(default_factory=list)
    consent_stops: list[dict[str, Any]] = field(default_factory=list)
    emergencies: list[dict[str, Any]] = field(default_factory=list)
    failed_logins: list[dict[str, Any]] = field(default_factory=list)
    outside_hours: list[dict[str, Any]] = field(default_factory=list)
    outside_hours_total: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            len(self.refusals)
            + len(self.consent_stops)
            + len(self.emergencies)
            + len(self.failed_logins)
            + self.outside_hours_total
            + len(self.anomalies)
        )


Window = tuple[time, time]


def _hours(spec: str) -> Window:
    try:
        return config.parse_hours(spec)
    except ValueError:
        raise InputError(
            "working_hours must look like 07:00-19:00", field="working_hours"
        ) from None


def _hours_map(spec: str, name: str) -> dict[str, Window]:
    try:
        return config.parse_hours_map(spec)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}", field=name) from None


def in_window(moment: time, window: Window) -> bool:
    """Inside [start, end); a window whose start lies after its end runs past midnight."""
    start, end = window
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def is_outside_hours(occurred_at: str, hours: Window | list[Window], zone: ZoneInfo) -> bool:
    """True when the local time of occurred_at lies in none of the windows."""
    moment = datetime.fromisoformat(occurred_at.replace("Z", "+00:00")).astimezone(zone)
    windows = hours if isinstance(hours, list) else [hours]
    return not any(in_window(moment.time(), w) for w in windows)


class WorkingHours:
    """Whose working time is when: a user's teams' hours (``[audit] working_hours_by_team``,
    so a night team's night is its working time), else the role's
    (``working_hours_by_role``), else ``working_hours``. A user in several teams works in
    any of their windows; a team without its own hours counts with the role's."""

    def __init__(
        self, db: sqlite_utils.Database, default: str, by_role: str = "", by_team: str = ""
    ) -> None:
        self.default = _hours(default)
        self.by_role = _hours_map(by_role, "working_hours_by_role")
        self.by_team = _hours_map(by_team, "working_hours_by_team")
        self.teams: dict[int, list[str]] = defaultdict(list)
        if self.by_team and {"user_teams", "teams"} <= set(db.table_names()):
            for user_id, address in db.execute(
                "SELECT ut.user_id, t.address FROM user_teams ut JOIN teams t ON t.id = ut.team_id"
            ):
                self.teams[int(user_id)].append(str(address))

    def windows(self, user_id: int | None, role: str) -> list[Window]:
        own = self.by_role.get(role, self.default)
        addresses = self.teams.get(user_id, []) if user_id is not None else []
        if not addresses:
            return [own]
        return [self.by_team.get(a, own) for a in addresses]


def exceptions(
    db: sqlite_utils.Database,
    actor: Actor,
    start: str,
    end: str,
    *,
    working_hours: str = "07:00-19:00",
    working_hours_by_role: str = "",
    working_hours_by_team: str = "",
    tz: str = "Europe/Amsterdam",
    anomaly_factor: float = 3.0,
    anomaly_min: int = 20,
) -> Exceptions:
    """Refusals, consent stops, break-the-glass, failed logins, access outside working
    hours and users far above their own usual volume, in [start, end)."""
    scope = authorize(db, actor)
    where, params = scope.where("e", start, end)
    out = Exceptions()
    for r in _rows(
        db,
        f"SELECT {_SELECT} FROM audit_events e WHERE {where} AND "  # noqa: S608
        "(e.outcome != 'success' OR e.nature = 'emergency' OR e.event_code IN "
        "('request.stop', 'auth.fail', 'auth.lockout')) ORDER BY e.seq",
        params,
    ):
        if r["event_code"] in ("auth.fail", "auth.lockout"):
            out.failed_logins.append(r)
        elif r["event_code"] == "request.stop" and "consent.withdrawn" in r["outcome_detail"]:
            out.consent_stops.append(r)
        elif r["outcome"] != "success":
            out.refusals.append(r)
        if r["nature"] == "emergency":
            out.emergencies.append(r)
    hours = WorkingHours(db, working_hours, working_hours_by_role, working_hours_by_team)
    zone = ZoneInfo(tz)
    for r in _rows(
        db,
        f"SELECT {_SELECT} FROM audit_events e WHERE {where} AND "  # noqa: S608
        "e.user_id IS NOT NULL AND e.patient_id != '' AND e.nature != 'technical' "
        "ORDER BY e.seq",
        params,
    ):
        if is_outside_hours(r["occurred_at"], hours.windows(r["user_id"], r["user_role"]), zone):
            out.outside_hours_total += 1
            if len(out.outside_hours) < LIMIT:
                out.outside_hours.append(r)
    out.anomalies = volume_anomalies(
        db, scope, start, end, factor=anomaly_factor, minimum=anomaly_min
    )
    _view(
        db,
        actor,
        "exceptions",
        f"period {start}..{end}; {out.total} exceptions",
    )
    return out


def volume_anomalies(
    db: sqlite_utils.Database,
    scope: Scope,
    start: str,
    end: str,
    *,
    factor: float = 3.0,
    minimum: int = 20,
    baseline_days: int = 30,
) -> list[Anomaly]:
    """The organisation's users whose patient-data events in [start, end) exceed factor x
    their daily median over the baseline_days before start (times the period's days), and
    at least `minimum`."""
    lo = datetime.fromisoformat(start.replace("Z", "+00:00"))
    hi = datetime.fromisoformat(end.replace("Z", "+00:00"))
    base_lo = utc_iso(lo - timedelta(days=baseline_days))
    period_days = max(1.0, (hi - lo).total_seconds() / 86400)
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    in_period: dict[int, int] = defaultdict(int)
    who: dict[int, str] = {}
    for uid, uname, day, n in db.conn.execute(
        "SELECT user_id, max(user_name), substr(occurred_at, 1, 10), count(*) "
        "FROM audit_events INDEXED BY audit_org WHERE org_id = ? AND occurred_at >= ? "
        "AND occurred_at < ? AND user_id IS NOT NULL AND patient_id != '' "
        "GROUP BY user_id, 3",
        [scope.org_code, base_lo, end],
    ):
        who[uid] = uname
        if day < start[:10]:
            counts[uid][day] = n
    for uid, n in db.conn.execute(
        "SELECT user_id, count(*) FROM audit_events INDEXED BY audit_org WHERE org_id = ? "
        "AND occurred_at >= ? AND occurred_at < ? AND user_id IS NOT NULL "
        "AND patient_id != '' GROUP BY user_id",
        [scope.org_code, start, end],
    ):
        in_period[uid] = n
    out = []
    for uid, n in sorted(in_period.items()):
        daily = list(counts[uid].values()) + [0] * (baseline_days - len(counts[uid]))
        median = statistics.median(daily) if daily else 0.0
        threshold = max(float(minimum), factor * median * period_days)
        if n >= minimum and n > factor * median * period_days:
            out.append(Anomaly(uid, who.get(uid, ""), n, float(median), threshold))
    return out


# -- 6. delivery failures, 9. volume per organisation pair ----------------------------------


def delivery_failures(
    db: sqlite_utils.Database, actor: Actor, start: str, end: str
) -> list[dict[str, Any]]:
    """Failed and retried deliveries in [start, end), newest first."""
    scope = authorize(db, actor)
    where, params = scope.where()
    marks = ", ".join("?" for _ in FAILURE_CODES)
    rows = _rows(
        db,
        f"SELECT {_SELECT} FROM audit_events e INDEXED BY audit_code "  # noqa: S608
        f"WHERE e.event_code IN ({marks}) AND e.occurred_at >= ? AND "
        f"e.occurred_at < ? AND {where} ORDER BY e.seq DESC LIMIT {LIMIT}",
        [*FAILURE_CODES, start, end, *params],
    )
    _view(
        db,
        actor,
        "delivery_failures",
        f"period {start}..{end}; {len(rows)} rows",
    )
    return rows


@dataclass(frozen=True, slots=True)
class PairVolume:
    sender: str
    receiver: str  # organisation code of the receiving team
    sent: int
    refused: int
    delivered: int
    failed: int
    stopped: int


def volume_by_org_pair(
    db: sqlite_utils.Database, actor: Actor, start: str, end: str
) -> list[PairVolume]:
    """Requests per (sending practice, receiving organisation) in [start, end), for the DPIA."""
    scope = authorize(db, actor)
    where, params = scope.where()
    marks = ", ".join("?" for _ in PAIR_CODES)
    to_org = team_orgs(db)
    tally: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for sender, receiver, code, outcome, n in db.conn.execute(
        "SELECT e.sender_org, e.recipient_org, e.event_code, e.outcome, count(*) "  # noqa: S608
        f"FROM audit_events e INDEXED BY audit_code WHERE e.event_code IN ({marks}) "
        f"AND e.occurred_at >= ? AND e.occurred_at < ? AND {where} GROUP BY 1, 2, 3, 4",
        [*PAIR_CODES, start, end, *params],
    ):
        key = (sender, to_org.get(receiver, receiver))
        kind = {
            "request.send": "sent" if outcome == "success" else "refused",
            "request.deliver": "delivered",
            "request.fail": "failed",
            "request.stop": "stopped",
        }[code]
        tally[key][kind] += n
    out = [
        PairVolume(s, r, t["sent"], t["refused"], t["delivered"], t["failed"], t["stopped"])
        for (s, r), t in sorted(tally.items())
    ]
    _view(db, actor, "volume", f"period {start}..{end}; {len(out)} pairs")
    return out
