"""The NEN 7513 audit trail: one append-only, hash-chained table.

Invariants: ``record()`` runs inside the caller's write transaction, so an event and
the change it records commit together or not at all; rows are never updated or
deleted (triggers refuse it); each row's hash covers its canonical JSON, its
sequence number and the previous row's hash, so an edit, deletion, insertion or
reordering breaks the chain at a row that ``scan`` names. The one verifier of the chain
is ``securemail.audit.integrity.verify`` (anchor, every row by ``scan``, the signed heads).

Columns added later (migration 0002: the authorisation policy's id and version, the
coded role, the access point's type) are NULL on rows written before them and always
set on rows written after; the canonical form covers them exactly when they are set, so
old rows keep their hashes and nobody can strip or add them on a row unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from json.encoder import encode_basestring as _json_str
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import access
from securemail.access import Actor
from securemail.errors import SecuremailError
from securemail.store import source_id_of

#: The source_id of a store opened without one ([gateway] source_id's default).
DEFAULT_SOURCE_ID = "gateway-1"

DOMAIN = b"securemail.audit.trail.row.v1\x00"
GENESIS = "0" * 64

#: event_code -> (action C/R/U/D/E, meaning). docs/audit-actions.md lists these; a test checks.
EVENT_CODES: dict[str, tuple[str, str]] = {
    "request.create": ("C", "a request was validated and stored"),
    "draft.save": ("C", "a request form was saved as a draft (sealed; the draft id as object)"),
    "draft.view": ("R", "a draft's form values were opened"),
    "draft.delete": ("D", "a draft was deleted (sent, or thrown away)"),
    "request.view": ("R", "a request's content was shown"),
    "request.list": ("R", "a work list row (patient name, reference) was shown; one per row"),
    "request.sign": ("E", "the GP signed a request with their personal key"),
    "request.send": ("E", "a request was sealed and queued for delivery (or refused)"),
    "request.deliver": ("E", "the relay accepted a sealed request (250)"),
    "request.retry": ("E", "a delivery attempt failed temporarily and will be retried"),
    "request.uncertain": (
        "E",
        "a delivery attempt may have delivered (no answer after DATA); sent again, same Message-ID",
    ),
    "request.fail": ("E", "a delivery failed for good"),
    "request.stop": ("U", "a queued request was stopped before it left"),
    "request.answer": ("U", "the team answered a request"),
    "request.pass_on": ("U", "the team passed a request on to another team"),
    "request.reply": ("C", "an encrypted, signed reply of a team member was taken by SMTP"),
    "request.answer_copy": (
        "E",
        "the team's answer was sealed to the practice's key and queued for the practice",
    ),
    "request.record_export": (
        "R",
        "a request and its answer were exported for the practice's record (PDF or JSON)",
    ),
    "request.withdraw": ("U", "a request was withdrawn"),
    "request.overdue": ("E", "a request passed its answer deadline and was escalated"),
    "request.remind": ("E", "the GP was reminded of an order's evaluation or end date"),
    "request.expire": ("U", "an order passed its end date (verlopen); the team was told to stop"),
    "order.end_by_team": (
        "U",
        "the team that accepted an order ended it (reason sealed, sent to the practice)",
    ),
    "ask.create": ("C", "a nurse asked a practice for an execution request"),
    "ask.view": ("R", "an ask was shown"),
    "ask.fulfil": ("U", "a practice sent the request a nurse asked for"),
    "ask.answer": ("U", "a GP answered a nurse's consult or home-visit ask"),
    "thread.post": ("C", "a message was posted on a request's or ask's conversation"),
    "thread.read": ("R", "a request's or ask's conversation was shown"),
    "ask.overdue": ("E", "an ask passed its deadline and was escalated"),
    "consent.record": ("C", "a consent or objection was recorded"),
    "consent.withdraw": ("U", "a consent was withdrawn"),
    "consent.check": ("E", "the consent register was consulted for a send"),
    "consent.view": ("R", "consent records were shown"),
    "consent.export": ("R", "consent records were exported"),
    "consent.purge": ("D", "a consent's history past its retention was deleted (no BSN)"),
    "adherence.view": ("R", "aggregate adherence figures (no patient data) were shown"),
    "adherence.export": ("R", "aggregate adherence figures were exported (CSV, JSON)"),
    "audit.view": ("R", "the audit trail was read"),
    "audit.export": ("R", "the audit trail was exported"),
    "audit.verify": ("E", "the chain was verified"),
    "audit.checkpoint": ("E", "the chain head was signed"),
    "audit.purge": ("D", "rows past retention were purged"),
    "retention.purge": ("D", "content and metadata past their retention were purged (counts)"),
    "audit.review": ("C", "a privacy officer signed off a review"),
    "privacy.disclosure_pdf": (
        "R",
        "the patient's version of the disclosure report was downloaded as a PDF",
    ),
    "key.import": ("C", "a public key was imported"),
    "key.generate": ("C", "a key pair was generated in the gateway keyring"),
    "key.revoke": ("U", "a key was revoked"),
    "key.confirm": ("U", "a quarantined key was confirmed by phone code (refused: wrong code)"),
    "key.quarantine": ("U", "a changed key was pinned but held back until confirmed by phone"),
    "key.remove": ("U", "a pinned key was removed from a team (no longer in the manifest)"),
    "key.passphrase": ("U", "a signing passphrase was changed"),
    "org.create": ("C", "an organisation was created"),
    "team.create": ("C", "a team was created"),
    "team.map_update": ("U", "a team's entry on the regional map was changed (and confirmed)"),
    "team.map_confirm": ("U", "a team confirmed its entry on the regional map is current"),
    "team.contact_nurse": ("U", "a team set its fixed contact nurse for a partner practice"),
    "practice.entry_update": ("U", "a practice changed its one entry for nursing providers"),
    "practice.preferred_update": ("U", "a practice changed its preferred nursing providers"),
    "user.create": ("C", "a user was created"),
    "user.update": ("U", "a user was changed (password reset, unlock)"),
    "role.change": ("U", "a user's role changed"),
    "auth.login": ("E", "a login succeeded"),
    "auth.fail": ("E", "a login failed"),
    "auth.logout": ("E", "a session ended"),
    "auth.lockout": ("E", "an account was locked after repeated failures"),
    "auth.totp_enrol": ("U", "a second factor was enrolled"),
    "auth.token": ("C", "an API token was created or revoked"),
    "access.denied": ("E", "an action was refused by the access policy"),
    "outbox.retry": ("U", "an admin re-queued a failed message"),
    "outbox.cancel": ("U", "an admin cancelled a queued message"),
    "notice.send": ("E", "a status notice (reference only, no patient data) was queued"),
    "notice.deliver": ("E", "the relay accepted a status notice (250)"),
    "notice.retry": ("E", "a status notice delivery failed temporarily and will be retried"),
    "notice.uncertain": (
        "E",
        "a status notice may have been delivered (no answer after DATA); sent again",
    ),
    "notice.fail": ("E", "a status notice could not be delivered"),
    "notice.stop": ("U", "a status notice was stopped before it left"),
    "gateway.init": ("C", "the gateway home was initialised"),
    "gateway.backup": ("R", "the whole home was copied into an encrypted backup (or refused)"),
    "gateway.restore": ("C", "this home was restored from a backup"),
}

NATURES = ("regular", "emergency", "technical")
OUTCOMES = ("success", "refused", "error")
PURPOSES = ("TREAT", "ETREAT", "HOPERAT")


def new_event_id() -> str:
    """A UUID version 7 (RFC 9562): time-ordered, so the unique index on event_id grows at
    its end instead of taking a random insert per row (that matters at tens of millions)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        ((ms & 0xFFFF_FFFF_FFFF) << 80)
        | (0x7 << 76)
        | (((rand >> 62) & 0xFFF) << 64)
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


def now_ms() -> str:
    """UTC timestamp with milliseconds, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event, with the NEN 7513 columns of docs/audit-consent.md."""

    event_code: str
    user_id: int | None = None
    user_name: str = ""
    user_role: str = ""
    org_id: str = ""
    responsible_user_id: int | None = None
    access_point: str = ""
    purpose: str = "TREAT"
    nature: str = "regular"
    emergency_reason: str = ""
    outcome: str = "success"
    outcome_detail: str = ""
    check_authz: str = ""
    check_consent: str = ""
    patient_id: str = ""
    object_type: str = ""
    object_id: str = ""
    data_categories: str = ""
    consent_id: str = ""
    sender_org: str = ""
    recipient_org: str = ""
    occurred_at: str = field(default_factory=now_ms)
    #: Coded role (``system|code``) and access point type; record() fills them when empty.
    role_code: str = ""
    access_point_type: str = ""

    @classmethod
    def of(cls, actor: Actor, event_code: str, **kw: Any) -> AuditEvent:
        """An event for actor (who, role, organisation, from where) plus the given columns."""
        base: dict[str, Any] = {
            "user_id": actor.user_id,
            "user_name": actor.username,
            "user_role": actor.role,
            "org_id": actor.org_code,
            "access_point": actor.access_point,
            "access_point_type": access.access_point_type(
                actor.access_point, token=actor.token_actions is not None
            ),
        }
        if actor.is_system:
            base["nature"] = "technical"
        responsible = getattr(actor, "responsible_user_id", None)
        if responsible is not None:
            base["responsible_user_id"] = responsible  # a practice assistant's GP
        base.update(kw)
        return cls(event_code=event_code, **base)


def _migrate(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE audit_events (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            event_code TEXT NOT NULL,
            action TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            nature TEXT NOT NULL,
            emergency_reason TEXT NOT NULL,
            outcome TEXT NOT NULL,
            outcome_detail TEXT NOT NULL,
            check_authz TEXT NOT NULL,
            check_consent TEXT NOT NULL,
            user_id INTEGER,
            user_name TEXT NOT NULL,
            user_role TEXT NOT NULL,
            org_id TEXT NOT NULL,
            responsible_user_id INTEGER,
            access_point TEXT NOT NULL,
            purpose TEXT NOT NULL,
            patient_id TEXT NOT NULL,
            object_type TEXT NOT NULL,
            object_id TEXT NOT NULL,
            data_categories TEXT NOT NULL,
            consent_id TEXT NOT NULL,
            sender_org TEXT NOT NULL,
            recipient_org TEXT NOT NULL,
            source_id TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            row_hash TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX audit_patient ON audit_events (patient_id, occurred_at)")
    db.execute("CREATE INDEX audit_user ON audit_events (user_id, occurred_at)")
    db.execute("CREATE INDEX audit_org ON audit_events (org_id, occurred_at)")
    db.execute("CREATE INDEX audit_object ON audit_events (object_type, object_id)")
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
    )


#: Columns of migration 0002: NULL on older rows (see the module docstring).
V2_COLUMNS = ("policy_id", "policy_version", "role_code", "access_point_type")


def _migrate_v2(db: sqlite_utils.Database) -> None:
    # ADD COLUMN rewrites no row (and fires no update trigger): old rows read NULL.
    for column in V2_COLUMNS:
        db.execute(f"ALTER TABLE audit_events ADD COLUMN {column} TEXT")
    # The consent retention asks "does a row still name this consent?" per candidate.
    db.execute(
        "CREATE INDEX audit_consent ON audit_events (consent_id, seq) WHERE consent_id != ''"
    )


MIGRATIONS = Migrations("securemail.audit")
MIGRATIONS(name="0001_audit_events")(_migrate)
MIGRATIONS(name="0002_policy_role_access_point")(_migrate_v2)

_FIELDS = tuple(f.name for f in fields(AuditEvent))
_HASHED_V1 = tuple(f for f in _FIELDS if f not in V2_COLUMNS) + (
    "seq",
    "event_id",
    "action",
    "recorded_at",
    "source_id",
)
_HASHED = _HASHED_V1 + V2_COLUMNS
_SORTED_V1 = tuple(sorted(_HASHED_V1))
_SORTED = tuple(sorted(_HASHED))
_COLUMNS = (*_HASHED, "prev_hash", "row_hash")
_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_COLUMNS)}) "  # noqa: S608 (column names are ours)
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
# The canonical form as a %-template over the sorted keys: the same bytes as
# json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False), without
# json's per-call machinery (record() and the verifier's fallback run it per row).
_TEMPLATE = "{" + ",".join(f'"{k}":%s' for k in _SORTED) + "}"
_TEMPLATE_V1 = "{" + ",".join(f'"{k}":%s' for k in _SORTED_V1) + "}"


def _json_value(v: Any) -> str:
    if v.__class__ is str:
        return _json_str(v)
    if v is None:
        return "null"
    if v.__class__ is int:
        return int.__repr__(v)
    try:
        return json.dumps(v, ensure_ascii=False)
    except TypeError:  # a BLOB smuggled into a column: it can never match a recorded hash
        return '"\u0000<not json>"'


def canonical(row: dict[str, Any]) -> bytes:
    """Sorted-key compact JSON of the hashed columns: the bytes the chain commits to.

    A row from before migration 0002 (policy_id NULL) commits to the original columns only.
    """
    if row.get("policy_id") is None:
        return (_TEMPLATE_V1 % tuple(_json_value(row[k]) for k in _SORTED_V1)).encode("utf-8")
    return (_TEMPLATE % tuple(_json_value(row[k]) for k in _SORTED)).encode("utf-8")


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the domain tag, the previous row's hash (32 bytes) and the canonical row."""
    return hashlib.sha256(DOMAIN + bytes.fromhex(prev_hash) + canonical(row)).hexdigest()


class AuditError(SecuremailError):
    code = "audit.invalid"
    nl = "De audittrail kon niet worden bijgewerkt."


def head(db: sqlite_utils.Database) -> tuple[int, str]:
    """(last seq, its hash); for an empty trail the anchor: (0, GENESIS) or the purge anchor."""
    row = db.conn.execute(
        "SELECT seq, row_hash FROM audit_events ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return anchor(db.conn)
    return int(row[0]), str(row[1])


def anchor(conn: sqlite3.Connection) -> tuple[int, str]:
    """Where the chain starts: (0, GENESIS), or after a retention purge (last purged seq, its hash).

    The purge (securemail.audit.integrity) keeps the purged head in audit_anchor, signed by
    a checkpoint, so that the remaining rows still verify from there.
    """
    try:
        row = conn.execute(
            "SELECT seq, head_hash FROM audit_anchor ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError:  # no audit_anchor table: nothing was ever purged
        return 0, GENESIS
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def _genesis(db: sqlite_utils.Database) -> str:
    return anchor(db.conn)[1]


def record(db: sqlite_utils.Database, event: AuditEvent, *, source_id: str | None = None) -> int:
    """Append event inside the caller's transaction; return its sequence number.

    The row's source_id is the gateway's own, from the store (``store.source_id_of``); a
    caller's ``source_id`` that differs is refused (AuditError), never written. A store
    opened without one (a bare store in a test or a tool) takes the caller's, else the
    default "gateway-1"."""
    known = source_id_of(db)
    if known is not None and source_id is not None and source_id != known:
        raise AuditError(f"source_id {source_id!r} is not this gateway's ({known!r})")
    source = known or source_id or DEFAULT_SOURCE_ID
    if event.event_code not in EVENT_CODES:
        raise AuditError(f"unknown audit event code {event.event_code!r}")
    if event.outcome not in OUTCOMES or event.nature not in NATURES:
        raise AuditError(f"bad outcome/nature for {event.event_code}")
    ap_type = event.access_point_type or access.access_point_type(event.access_point)
    if ap_type not in access.ACCESS_POINT_TYPES:
        raise AuditError(f"bad access point type for {event.event_code}")
    seq, prev = head(db)
    row: dict[str, Any] = {name: getattr(event, name) for name in _FIELDS}
    row.update(
        seq=seq + 1,
        event_id=new_event_id(),
        action=EVENT_CODES[event.event_code][0],
        recorded_at=now_ms(),
        source_id=source,
        # The protocol that decided this access: the one in force as the row is written.
        policy_id=access.POLICY_ID,
        policy_version=access.POLICY_VERSION,
        role_code=event.role_code or access.role_code(event.user_role),
        access_point_type=ap_type,
    )
    row["prev_hash"] = prev
    row["row_hash"] = row_hash(prev, row)
    db.conn.execute(_INSERT, [row[c] for c in _COLUMNS])
    return seq + 1


class ChainBrokenError(SecuremailError):
    """The chain check (``scan``) found a row that does not fit; says which and what was
    expected."""

    code = "audit.chain_broken"
    nl = "De audittrail is gewijzigd: regel {seq} klopt niet ({why})."


@dataclass(frozen=True, slots=True)
class ChainReport:
    rows: int
    first_seq: int
    last_seq: int
    head_hash: str
    first_prev: str = GENESIS


# SQLite builds the canonical JSON in C (json_object with the sorted keys gives the same
# bytes as canonical() for ordinary text); a row whose bytes differ is re-checked with
# canonical() before it is called altered, so an encoder difference can never hide or
# invent a change: both are exact JSON encoders, equal bytes mean equal rows.
_SCAN = (
    "SELECT seq, prev_hash, row_hash, CASE WHEN policy_id IS NULL "  # noqa: S608 (ours)
    + "THEN CAST(json_object("
    + ", ".join(f"'{k}', {k}" for k in _SORTED_V1)
    + ") AS BLOB) ELSE CAST(json_object("
    + ", ".join(f"'{k}', {k}" for k in _SORTED)
    + ") AS BLOB) END FROM audit_events WHERE seq >= ? AND seq <= ? ORDER BY seq"
)


def _recheck(conn: sqlite3.Connection, seq: int, prev: str) -> str:
    cur = conn.execute(f"SELECT {', '.join(_HASHED)} FROM audit_events WHERE seq = ?", [seq])  # noqa: S608
    values = cur.fetchone()
    return row_hash(prev, dict(zip(_HASHED, values, strict=True)))


def scan(
    conn: sqlite3.Connection,
    lo: int,
    hi: int,
    *,
    start_prev: str | None,
    checkpoints: Mapping[int, str] | None = None,
) -> ChainReport:
    """Verify rows lo..hi (every one must exist): sequence, link, hash and signed heads.

    start_prev is the hash row lo must follow; None accepts row lo's stored prev_hash (a
    parallel verifier checks that link when it joins the pieces). checkpoints maps a
    seq to the head hash a checkpoint signed there. Raises ChainBrokenError at the first
    row that does not fit.
    """
    base = hashlib.sha256(DOMAIN)
    cps = checkpoints or {}
    expected_seq = lo
    expected_prev = start_prev
    first_prev = start_prev or ""
    n = 0
    for seq, prev, stored, canon in conn.execute(_SCAN, (lo, hi)):
        if seq != expected_seq:
            raise ChainBrokenError(
                f"sequence gap: expected row {expected_seq}, found {seq} (row deleted?)",
                seq=expected_seq,
                why="missing",
            )
        if expected_prev is None:
            expected_prev = first_prev = prev
        elif prev != expected_prev:
            raise ChainBrokenError(
                f"row {seq} does not follow row {seq - 1}: prev_hash {str(prev)[:16]}… "
                f"expected {expected_prev[:16]}… (inserted, deleted or reordered)",
                seq=seq,
                why="link",
            )
        try:
            h = base.copy()
            h.update(bytes.fromhex(prev))
            h.update(canon)
            computed = h.hexdigest()
        except (TypeError, ValueError):
            computed = ""
        if computed != stored and (not computed or _recheck(conn, seq, prev) != stored):
            raise ChainBrokenError(
                f"row {seq} was altered: stored hash {str(stored)[:16]}…, "
                f"computed {computed[:16] or 'none'}…",
                seq=seq,
                why="edited",
            )
        if seq in cps and cps[seq] != stored:
            raise ChainBrokenError(
                f"row {seq} is not the head a checkpoint signed there: signed {cps[seq][:16]}…, "
                f"found {str(stored)[:16]}… (the chain up to row {seq} was rewritten)",
                seq=seq,
                why="checkpoint",
            )
        expected_prev = stored
        expected_seq = seq + 1
        n += 1
    if expected_seq <= hi:
        raise ChainBrokenError(
            f"sequence gap: expected row {expected_seq} (row deleted?)",
            seq=expected_seq,
            why="missing",
        )
    return ChainReport(n, lo, hi, expected_prev or first_prev, first_prev)


def bounds(conn: sqlite3.Connection) -> tuple[int, int, str, int]:
    """(first seq to verify, last seq present, hash the first must follow, lowest seq present)."""
    start_seq, start_hash = anchor(conn)
    lo_hi = conn.execute("SELECT min(seq), max(seq) FROM audit_events").fetchone()
    lowest = int(lo_hi[0]) if lo_hi[0] is not None else start_seq + 1
    last = int(lo_hi[1]) if lo_hi[1] is not None else start_seq
    return start_seq + 1, last, start_hash, lowest


# -- reads for other rooms (they never touch audit_events themselves) --------------------------


def seq_range(db: sqlite_utils.Database) -> tuple[int | None, int | None]:
    """(lowest, highest) seq present; (None, None) for an empty trail."""
    lo, hi = db.execute("SELECT min(seq), max(seq) FROM audit_events").fetchone()
    return (int(lo) if lo is not None else None, int(hi) if hi is not None else None)


def last_success_at(db: sqlite_utils.Database, event_code: str) -> str | None:
    """When ``event_code`` last succeeded (its occurred_at), or None."""
    at = db.execute(
        "SELECT max(occurred_at) FROM audit_events WHERE event_code = ? AND outcome = 'success'",
        [event_code],
    ).fetchone()[0]
    return str(at) if at is not None else None


def latest(db: sqlite_utils.Database, event_code: str) -> tuple[str, str] | None:
    """(outcome, occurred_at) of the newest ``event_code`` row, or None."""
    row = db.execute(
        "SELECT outcome, occurred_at FROM audit_events WHERE event_code = ? "
        "ORDER BY occurred_at DESC LIMIT 1",
        [event_code],
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None
