"""Lists and counts of the register for the GP and privacy-officer screens.

Invariant: scoped to one holder organisation; ``list_records`` and
``register_overview`` are pure reads, ``view_records`` is the one a person's screen
uses: access checked and audited ``consent.view``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from securemail import access
from securemail.access import Actor, Resource
from securemail.audit import trail as audit
from securemail.consent.model import (
    STATUSES,
    ConsentRecord,
    Recipient,
    parse_bsn,
    parse_choice,
    parse_id,
    ts,
)
from securemail.consent.table import CURRENT, query


# -- queries for the GP and privacy-officer screens ---------------------------------------------
def list_records(
    db: sqlite_utils.Database,
    *,
    source_org_id: int,
    patient_bsn: str | None = None,
    status: str | None = None,
    now: datetime,
    history: bool = False,
) -> list[ConsentRecord]:
    """Current versions (every version with history=True) held by one organisation, newest
    first; ``status`` filters on ``status_at(now)``. A pure read: see view_records."""
    org = parse_id("source_org_id", source_org_id)
    if status is not None:
        parse_choice("status", status, STATUSES)
    sql = "SELECT c.* FROM consents c WHERE c.source_org_id = ?"
    params: list[Any] = [org]
    if patient_bsn is not None:
        sql += " AND c.patient_bsn = ?"
        params.append(parse_bsn(patient_bsn))
    if not history:
        sql += f" AND {CURRENT}"
    rows = query(db, sql + " ORDER BY c.recorded_at DESC, c.consent_id, c.version DESC", params)
    return [r for r in rows if status is None or r.status_at(now) == status]


def view_records(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    source_org_id: int,
    patient_bsn: str | None = None,
    status: str | None = None,
    now: datetime,
    history: bool = False,
) -> list[ConsentRecord]:
    """list_records for a person: access checked and audited ``consent.view`` (writer only)."""
    org = parse_id("source_org_id", source_org_id)
    access.require(actor, "consent.view", Resource("consent", org_id=org))
    rows = list_records(
        db, source_org_id=org, patient_bsn=patient_bsn, status=status, now=now, history=history
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "consent.view",
            patient_id=patient_bsn or "",
            object_type="consent_register",
            object_id=str(org),
            outcome_detail=f"{len(rows)} records" + (f", status {status}" if status else ""),
            occurred_at=ts(now),
        ),
    )
    return rows


def in_force(rec: ConsentRecord, now: datetime) -> bool:
    """Active and not yet ended: counting now or from its valid_from on."""
    return rec.status == "active" and (rec.valid_until is None or rec.valid_until > now)


def left_standing(
    current: Sequence[ConsentRecord],
    objection: ConsentRecord,
    now: datetime,
    covers: Callable[[Recipient, Recipient], bool],
) -> list[ConsentRecord]:
    """The narrower permits an objection leaves in force: the most specific record decides
    (team over organisation over category), so a permit for a team or organisation that the
    broader objection covers still lets requests go there. ``current`` are one patient's
    current versions at one holder; ``covers(broad, narrow)`` says whether a recipient lies
    within another (the directory knows: securemail.region.directory.covers). A permit whose
    own recipient also carries an objection is not standing (at equal specificity the
    objection wins). A pure function of its arguments: no read, no audit row."""
    if objection.decision != "deny" or not in_force(objection, now):
        return []
    live = [r for r in current if in_force(r, now)]
    denied = {r.recipient for r in live if r.decision == "deny"}
    return [
        r
        for r in live
        if r.decision == "permit"
        and r.recipient.level > objection.recipient.level
        and r.recipient not in denied
        and covers(objection.recipient, r.recipient)
    ]


def register_overview(
    db: sqlite_utils.Database, source_org_id: int, now: datetime, *, expiring_days: int = 30
) -> dict[str, int]:
    """Counts over current versions: active (incl. not yet valid), withdrawn, expired,
    expiring (active, ending within expiring_days), without_evidence (active, no reference
    and no hash), entered_in_error."""
    org = parse_id("source_org_id", source_org_id)
    now_s = ts(now, "now")
    soon_s = ts(now + timedelta(days=expiring_days))
    live = "c.status = 'active' AND (c.valid_until IS NULL OR c.valid_until > :now)"
    row = db.execute(
        f"""SELECT
            coalesce(sum({live}), 0),
            coalesce(sum(c.status = 'withdrawn'), 0),
            coalesce(sum(c.status = 'active' AND c.valid_until <= :now), 0),
            coalesce(sum({live} AND c.valid_until <= :soon), 0),
            coalesce(sum({live} AND c.evidence_ref IS NULL AND c.evidence_sha256 IS NULL), 0),
            coalesce(sum(c.status = 'entered-in-error'), 0)
        FROM consents c WHERE c.source_org_id = :org AND {CURRENT}""",  # noqa: S608 (constant SQL fragments)
        {"now": now_s, "soon": soon_s, "org": org},
    ).fetchone()
    keys = ("active", "withdrawn", "expired", "expiring", "without_evidence", "entered_in_error")
    return dict(zip(keys, (int(v) for v in row), strict=True))
