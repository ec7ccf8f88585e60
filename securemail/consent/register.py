"""Writing the register: record a permit or objection, withdraw, mark entered-in-error.

Invariant: each function validates everything and checks access before its first
INSERT; each writes only new versions (never an UPDATE) and its audit row(s) in the
caller's transaction, so a record and its ``consent.record``/``consent.withdraw`` row
commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlite_utils

from securemail import access
from securemail.access import Actor, Resource
from securemail.audit import trail as audit
from securemail.consent.evaluate import evaluate
from securemail.consent.model import (
    BASES,
    CHANNELS,
    DATA_CATEGORIES,
    DECISIONS,
    PERFORMERS,
    PURPOSES,
    ConsentRecord,
    NothingToWithdrawError,
    Recipient,
    Specificity,
    StopPending,
    Target,
    WithdrawResult,
    bad,
    parse_bsn,
    parse_categories,
    parse_choice,
    parse_id,
    parse_recipient,
    parse_text,
    ts,
)
from securemail.consent.table import (
    CURRENT,
    RECIPIENT_IS_SQL,
    columns_of,
    insert_version,
    query,
)

#: The directory's "does this team/organisation exist" check, passed in (no import of directory).
RecipientKnown = Callable[[sqlite_utils.Database, Recipient], bool]


def _event(
    actor: Actor, code: str, rec: ConsentRecord, now: datetime, detail: str
) -> audit.AuditEvent:
    """The consent.record / consent.withdraw row for one new version."""
    return audit.AuditEvent.of(
        actor,
        code,
        patient_id=rec.patient_bsn,
        object_type="consent",
        object_id=rec.consent_id,
        consent_id=rec.consent_id,
        purpose=rec.purpose,
        data_categories=",".join(rec.data_categories),
        outcome_detail=detail,
        occurred_at=ts(now),
    )


# -- record -----------------------------------------------------------------------------------
def record(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    patient_bsn: str,
    source_org_id: int,
    recipient: Recipient,
    decision: str,
    basis: str,
    purpose: str = "TREAT",
    data_categories: tuple[str, ...] | list[str] = DATA_CATEGORIES,
    valid_from: datetime,
    valid_until: datetime | None = None,
    given_at: datetime,
    channel: str,
    performer: str,
    performer_name: str | None = None,
    evidence: bytes | None = None,
    evidence_ref: str | None = None,
    now: datetime,
    recipient_known: RecipientKnown | None = None,
) -> ConsentRecord:
    """Record a permit or an objection; audited ``consent.record``.

    A record with the same patient, holder, recipient, purpose and data categories as a
    current active one is a change: it becomes that consent's next version. Otherwise it
    starts a new consent at version 1. ``recipient_known(db, recipient)``, when given, is
    the directory's check that the team/organisation exists (the CLI and web resolve the
    recipient through the directory, which checks this already).
    ``data_categories`` defaults to every category: a patient who objects (or agrees)
    without naming what is sent means all of it, so a care request is never sent past an
    objection recorded with an execution request in mind (issue 22).
    """
    org = parse_id("source_org_id", source_org_id)
    access.require(actor, "consent.record", Resource("consent", org_id=org))
    bsn = parse_bsn(patient_bsn)
    rcpt = parse_recipient(recipient)
    decision = parse_choice("decision", decision, DECISIONS)
    basis = parse_choice("basis", basis, BASES)
    if (basis == "objection") != (decision == "deny"):
        raise bad("basis", "basis 'objection' goes with decision 'deny', and only with it")
    if basis == "implied_referral" and rcpt.level is Specificity.CATEGORY:
        raise bad("recipient", "implied_referral needs a named team or organisation")
    purpose = parse_choice("purpose", purpose, PURPOSES)
    cats = parse_categories(data_categories)
    now_s = ts(now, "now")
    from_s = ts(valid_from, "valid_from")
    until_s = None if valid_until is None else ts(valid_until, "valid_until")
    if until_s is not None and until_s <= from_s:
        raise bad("valid_until", "valid_until must be after valid_from")
    given_s = ts(given_at, "given_at")
    if given_s > now_s:
        raise bad("given_at", "given_at lies in the future")
    channel = parse_choice("channel", channel, CHANNELS)
    performer = parse_choice("performer", performer, PERFORMERS)
    name = parse_text("performer_name", performer_name, required=performer == "representative")
    if performer == "patient" and name is not None:
        raise bad("performer_name", "performer_name is for a representative only")
    if evidence is not None and (not isinstance(evidence, bytes) or not evidence):
        raise bad("evidence", "evidence must be the non-empty bytes of the proof")
    ref = parse_text("evidence_ref", evidence_ref, required=False, limit=255)
    if basis == "implied_referral" and ref is None and evidence is None:
        raise bad("evidence_ref", "implied_referral is recorded with the referral as evidence")
    if recipient_known is not None and not recipient_known(db, rcpt):
        raise bad("recipient", f"unknown recipient {rcpt.label}")

    prev = _current_same_scope(db, bsn, org, rcpt, purpose, cats)
    row: dict[str, Any] = {
        "consent_id": prev.consent_id if prev else str(uuid.uuid4()),
        "version": prev.version + 1 if prev else 1,
        "supersedes": prev.row_id if prev else None,
        "status": "active",
        "decision": decision,
        "basis": basis,
        "patient_bsn": bsn,
        "source_org_id": org,
        "recipient_team_id": rcpt.team_id,
        "recipient_org_id": rcpt.org_id,
        "recipient_category": rcpt.category,
        "purpose": purpose,
        "data_categories": json.dumps(list(cats)),
        "valid_from": from_s,
        "valid_until": until_s,
        "given_at": given_s,
        "channel": channel,
        "performer": performer,
        "performer_name": name,
        "recorded_by": actor.user_id,
        "recorded_at": now_s,
        "evidence_ref": ref,
        "evidence_sha256": hashlib.sha256(evidence).hexdigest() if evidence else None,
    }
    rec = insert_version(db, row)
    detail = f"{rec.ref} {decision} ({basis}) for {rcpt.label}"
    if prev:
        detail += f", supersedes v{prev.version}"
    audit.record(db, _event(actor, "consent.record", rec, now, detail))
    return rec


def _current_same_scope(
    db: sqlite_utils.Database,
    bsn: str,
    org: int,
    rcpt: Recipient,
    purpose: str,
    cats: tuple[str, ...],
) -> ConsentRecord | None:
    rows = query(
        db,
        f"SELECT c.* FROM consents c WHERE c.patient_bsn = ? AND c.source_org_id = ? "  # noqa: S608 (constant SQL fragments)
        f"AND {RECIPIENT_IS_SQL} AND c.purpose = ? AND c.data_categories = ? "
        f"AND c.status = 'active' AND {CURRENT} ORDER BY c.recorded_at DESC LIMIT 1",
        [bsn, org, rcpt.team_id, rcpt.org_id, rcpt.category, purpose, json.dumps(list(cats))],
    )
    return rows[0] if rows else None


# -- withdraw ---------------------------------------------------------------------------------
def withdraw(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    patient_bsn: str,
    source_org_id: int,
    recipient: Recipient,
    channel: str,
    reason: str | None = None,
    now: datetime,
    stop_pending: StopPending,
    policy: str = "explicit",
) -> WithdrawResult:
    """Withdraw every current, unexpired record (permit or objection) of the patient at this
    holder for exactly this recipient, effective at once; then let ``stop_pending`` stop the
    requests that have not left and are no longer permitted under ``policy`` (under
    direct care, withdrawing a permit leaves the presumed consent: nothing stops unless an
    objection now decides). Audited ``consent.withdraw``
    per record, naming the stopped requests. Nothing to withdraw: NothingToWithdrawError.
    """
    org = parse_id("source_org_id", source_org_id)
    access.require(actor, "consent.withdraw", Resource("consent", org_id=org))
    bsn = parse_bsn(patient_bsn)
    rcpt = parse_recipient(recipient)
    channel = parse_choice("channel", channel, CHANNELS)
    why = parse_text("reason", reason, required=False)
    now_s = ts(now, "now")
    current = query(
        db,
        f"SELECT c.* FROM consents c WHERE c.patient_bsn = ? AND c.source_org_id = ? "  # noqa: S608 (constant SQL fragments)
        f"AND {RECIPIENT_IS_SQL} AND c.status = 'active' "
        f"AND (c.valid_until IS NULL OR c.valid_until > ?) AND {CURRENT} ORDER BY c.id",
        [bsn, org, rcpt.team_id, rcpt.org_id, rcpt.category, now_s],
    )
    if not current:
        raise NothingToWithdrawError(
            f"no active consent or objection for {rcpt.label} at organisation {org} to withdraw",
            field="recipient",
            recipient=rcpt.label,
        )
    new = [
        insert_version(
            db,
            {
                **columns_of(rec),
                "version": rec.version + 1,
                "supersedes": rec.row_id,
                "status": "withdrawn",
                "recorded_by": actor.user_id,
                "recorded_at": now_s,
                "withdrawn_at": now_s,
                "withdrawn_by": actor.user_id,
                "withdrawal_channel": channel,
                "reason": why,
            },
        )
        for rec in current
    ]

    def still_permitted(
        target: Target, purpose: str = "TREAT", data_category: str = "execution_request"
    ) -> bool:
        return evaluate(
            db,
            patient_bsn=bsn,
            source_org_id=org,
            target=target,
            purpose=purpose,
            data_category=data_category,
            now=now,
            policy=policy,
        ).permitted

    stopped = tuple(
        stop_pending(
            db, bsn, rcpt, source_org_id=org, still_permitted=still_permitted, now=now.timestamp()
        )
    )
    listed = ", ".join(stopped) if stopped else "none"
    for rec in new:
        detail = f"{rec.ref} withdrawn ({channel}); stopped requests: {listed}"
        audit.record(db, _event(actor, "consent.withdraw", rec, now, detail))
    return WithdrawResult(records=tuple(new), stopped=stopped)


def mark_entered_in_error(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    consent_id: str,
    source_org_id: int,
    reason: str,
    now: datetime,
) -> ConsentRecord:
    """Supersede a consent's current version with one marked 'entered-in-error' (it no longer
    counts; requests already queued are caught by the check before delivery)."""
    org = parse_id("source_org_id", source_org_id)
    access.require(actor, "consent.record", Resource("consent", org_id=org))
    why = parse_text("reason", reason, required=True)
    now_s = ts(now, "now")
    rows = query(
        db,
        f"SELECT c.* FROM consents c WHERE c.consent_id = ? AND c.source_org_id = ? AND {CURRENT}",  # noqa: S608 (constant SQL fragment)
        [consent_id, org],
    )
    if not rows or rows[0].status == "entered-in-error":
        raise bad("consent_id", "no consent with this id to correct at this organisation")
    prev = rows[0]
    row = {
        **columns_of(prev),
        "version": prev.version + 1,
        "supersedes": prev.row_id,
        "status": "entered-in-error",
        "recorded_by": actor.user_id,
        "recorded_at": now_s,
        "reason": why,
    }
    rec = insert_version(db, row)
    audit.record(db, _event(actor, "consent.record", rec, now, f"{rec.ref} entered-in-error"))
    return rec
