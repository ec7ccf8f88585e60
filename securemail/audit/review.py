"""The privacy officer's oversight: integrity status, breach scope and review sign-off.

Invariants: a sign-off is an append-only row in audit_reviews written together with its
``audit.review`` event; it stores a keyed hash (HMAC under the home's secrets.key) of the
report's parameters (never a BSN in clear, nor a plain hash that can be reversed)
so that a later reader can tell which report was reviewed; every read here is audited
like the queries in securemail.audit.report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlite_utils import Migrations

from securemail.access import Actor
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.audit.integrity import Checkpoint
from securemail.audit.report import _rows, _view, authorize, parse_bsn, utc_iso
from securemail.audit.trail import AuditEvent
from securemail.errors import InputError
from securemail.secretbox import SecretBox

REPORT_KINDS = (
    "disclosure",
    "user",
    "exceptions",
    "delivery_failures",
    "volume",
    "integrity",
    "breach",
)
REVIEW_OUTCOMES = ("no_findings", "findings", "action_required")
BREACH_HOURS = 72  # AVG art. 33: notify the Autoriteit Persoonsgegevens within 72 hours

MIGRATIONS = Migrations("securemail.audit_review")


@MIGRATIONS(name="0001_reviews")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE audit_reviews (
            id INTEGER PRIMARY KEY,
            org_code TEXT NOT NULL,
            report_kind TEXT NOT NULL,
            params_hash TEXT NOT NULL,     -- keyed hash of the report's parameters (BSN included)
            period_start TEXT NOT NULL,
            period_end TEXT NOT NULL,
            subject TEXT NOT NULL,         -- e.g. user:12; never a BSN
            reviewer_id INTEGER,
            reviewer_name TEXT NOT NULL,
            reviewed_at TEXT NOT NULL,
            outcome TEXT NOT NULL,
            findings TEXT NOT NULL,
            audit_seq INTEGER NOT NULL)"""
    )
    db.execute("CREATE INDEX audit_reviews_org ON audit_reviews (org_code, reviewed_at)")
    audit_integrity._append_only(db, "audit_reviews")


# -- 4. integrity status -------------------------------------------------------------------


@dataclass
class IntegrityStatus:
    head_seq: int
    head_hash: str
    anchor_seq: int
    last_checkpoint: Checkpoint | None
    unsigned_rows: int
    checkpoint_ok: bool | None  # quick check of the last checkpoint; None: there is none
    last_verify: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


def integrity_status(
    db: sqlite_utils.Database,
    actor: Actor,
    keys: Mapping[str, Ed25519PublicKey],
) -> IntegrityStatus:
    """A cheap status (no full recomputation): head, last checkpoint checked against its
    signature and the row it signed, rows not yet signed, the last full verification."""
    authorize(db, actor)
    head_seq, head_hash = audit.head(db)
    anchor_seq = audit.anchor(db.conn)[0]
    cp = audit_integrity.last_checkpoint(db)
    problems: list[str] = []
    ok: bool | None = None
    if cp is not None:
        ok = True
        public = keys.get(cp.key_id)
        try:
            if public is None:
                raise InvalidSignature
            public.verify(bytes.fromhex(cp.signature), cp.message())
        except (InvalidSignature, ValueError):
            ok = False
            problems.append(f"the last checkpoint (row {cp.seq}) has no valid signature")
        row = db.conn.execute(
            "SELECT row_hash FROM audit_events WHERE seq = ?", [cp.seq]
        ).fetchone()
        if cp.seq > anchor_seq and (row is None or row[0] != cp.head_hash):
            ok = False
            problems.append(f"row {cp.seq} no longer matches the last signed checkpoint")
    signed = max(cp.seq if cp else 0, anchor_seq)
    last = _rows(
        db,
        "SELECT occurred_at, outcome, outcome_detail, user_name FROM audit_events "
        "INDEXED BY audit_code WHERE event_code = 'audit.verify' "
        "ORDER BY occurred_at DESC LIMIT 1",
        [],
    )
    if last and last[0]["outcome"] != "success":
        problems.append("the last full verification failed")
    _view(db, actor, "integrity", f"head {head_seq}")
    return IntegrityStatus(
        head_seq,
        head_hash,
        anchor_seq,
        cp,
        max(0, head_seq - signed),
        ok,
        last[0] if last else None,
        problems,
    )


def record_verification(db: sqlite_utils.Database, actor: Actor, *, ok: bool, detail: str) -> int:
    """The audit.verify row for a full verification (success, or error with the reason)."""
    return audit.record(
        db,
        AuditEvent.of(
            actor,
            "audit.verify",
            object_type="audit",
            object_id="chain",
            outcome="success" if ok else "error",
            outcome_detail=detail[:500],
        ),
    )


# -- 7. breach scope -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreachScope:
    start: str
    end: str
    patients: int
    patient_ids: list[str]
    categories: dict[str, int]
    recipients: dict[str, int]
    aware_at: str
    notify_by: str


def breach_scope(
    db: sqlite_utils.Database,
    actor: Actor,
    start: str,
    end: str,
    aware_at: datetime,
    *,
    limit: int = 1000,
) -> BreachScope:
    """For a window: which patients, which data categories, which recipients were involved
    in the organisation's exchanges, and the 72-hour clock from awareness (AVG art. 33)."""
    scope = authorize(db, actor)
    where, params = scope.where("e", start, end)
    base = (
        f"FROM audit_events e WHERE {where} AND e.patient_id != '' AND e.event_code IN "
        "('request.send', 'request.deliver', 'request.view', 'request.answer', "
        "'request.pass_on') AND e.outcome = 'success'"
    )
    patients = int(
        db.conn.execute(f"SELECT count(DISTINCT e.patient_id) {base}", params).fetchone()[0]
    )
    ids = [
        r[0]
        for r in db.conn.execute(
            f"SELECT DISTINCT e.patient_id {base} ORDER BY 1 LIMIT {int(limit)}", params
        )
    ]
    cats = {
        str(c): int(n)
        for c, n in db.conn.execute(
            f"SELECT e.data_categories, count(DISTINCT e.patient_id) {base} GROUP BY 1", params
        )
    }
    recips = {
        str(c): int(n)
        for c, n in db.conn.execute(
            f"SELECT e.recipient_org, count(DISTINCT e.patient_id) {base} GROUP BY 1", params
        )
    }
    _view(db, actor, "breach", f"period {start}..{end}; {patients} patients")
    return BreachScope(
        start,
        end,
        patients,
        ids,
        cats,
        recips,
        utc_iso(aware_at),
        utc_iso(aware_at + timedelta(hours=BREACH_HOURS)),
    )


# -- 8. review sign-off --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Review:
    id: int
    report_kind: str
    params_hash: str
    period_start: str
    period_end: str
    subject: str
    reviewer_name: str
    reviewed_at: str
    outcome: str
    findings: str
    audit_seq: int


def params_hash(
    db: sqlite_utils.Database,
    kind: str,
    start: str,
    end: str,
    subject: str = "",
    bsn: str = "",
) -> str:
    """A keyed hash (HMAC-SHA256 under the home's secrets.key) of the report's parameters.

    Keyed because the BSN is one of them: a plain SHA-256 over 9 digits and a known period
    is reversed by trying every BSN in seconds. ``hmac:`` tells these from the plain
    SHA-256 hashes of sign-offs made before (kept as they were)."""
    body = json.dumps(
        {"kind": kind, "start": start, "end": end, "subject": subject, "bsn": bsn},
        sort_keys=True,
        separators=(",", ":"),
    )
    box = SecretBox.for_db(db)
    return "hmac:" + box.keyed_hash(body.encode(), purpose="securemail.audit.trail.review.v2")


def sign_off(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    kind: str,
    start: str,
    end: str,
    outcome: str,
    findings: str,
    subject: str = "",
    bsn: str = "",
) -> Review:
    """Record that actor reviewed report `kind` for the period, with what they found."""
    scope = authorize(db, actor)
    if kind not in REPORT_KINDS:
        raise InputError(f"report must be one of {', '.join(REPORT_KINDS)}", field="kind")
    if outcome not in REVIEW_OUTCOMES:
        raise InputError(f"outcome must be one of {', '.join(REVIEW_OUTCOMES)}", field="outcome")
    findings = findings.strip()
    if outcome != "no_findings" and not findings:
        raise InputError("describe the findings", field="findings")
    if len(findings) > 4000:
        raise InputError("findings: at most 4000 characters", field="findings")
    bsn = parse_bsn(bsn) if bsn else ""
    subject = subject.strip()[:100]
    digest = params_hash(db, kind, start, end, subject, bsn)
    now = audit.now_ms()
    cur = db.conn.execute(
        "INSERT INTO audit_reviews (org_code, report_kind, params_hash, period_start, "
        "period_end, subject, reviewer_id, reviewer_name, reviewed_at, outcome, findings, "
        "audit_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            scope.org_code,
            kind,
            digest,
            start,
            end,
            subject,
            actor.user_id,
            actor.name or actor.username,
            now,
            outcome,
            findings,
            audit.head(db)[0] + 1,
        ],
    )
    review_id = int(cur.lastrowid or 0)
    seq = audit.record(
        db,
        AuditEvent.of(
            actor,
            "audit.review",
            patient_id=bsn,
            object_type="review",
            object_id=str(review_id),
            outcome_detail=f"{kind} {start}..{end}: {outcome}",
            check_authz=f"permit:{actor.role}",
        ),
    )
    return Review(
        review_id,
        kind,
        digest,
        start,
        end,
        subject,
        actor.name or actor.username,
        now,
        outcome,
        findings,
        seq,
    )


def list_reviews(db: sqlite_utils.Database, actor: Actor, *, limit: int = 200) -> list[Review]:
    """The organisation's sign-offs, newest first."""
    scope = authorize(db, actor)
    out = [
        Review(*r)
        for r in db.conn.execute(
            "SELECT id, report_kind, params_hash, period_start, period_end, subject, "
            "reviewer_name, reviewed_at, outcome, findings, audit_seq FROM audit_reviews "
            "WHERE org_code = ? "
            "ORDER BY reviewed_at DESC, id DESC LIMIT ?",
            [scope.org_code, limit],
        )
    ]
    _view(db, actor, "reviews", f"{len(out)} reviews")
    return out
