"""Reading the register for a send: evaluate (pure), check (+ audit row), require (+ raise).

The one place the consent policy is applied ([consent] policy, docs/consent.md):

- ``direct_care`` (the default): a send within the treatment relationship to those who
  will carry it out needs no recorded permit; consent is presumed (WGBO 7:457, AVG
  9(2)(h) with UAVG 30(3)) with the signed request as evidence (basis
  ``implied_referral``, named in the audit row's consent profile). An objection that
  wins always stops it.
- ``explicit``: no matching permit means no; the refusal names what to record.

Invariants: the most specific current, active, in-period
record matching purpose and data category wins (team over organisation over category),
and at equal specificity a deny beats a permit; the answer never depends on the order
in which records were written. ``check``/``require`` write one ``consent.check`` row
naming the record used, in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlite_utils

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.consent.model import (
    DATA_CATEGORIES,
    NEVER_GATED,
    POLICIES,
    PURPOSES,
    ConsentDecision,
    Specificity,
    Target,
    parse_bsn,
    parse_choice,
    parse_id,
    parse_target,
    ts,
)
from securemail.consent.table import CURRENT, SPECIFICITY_SQL, query

# -- evaluate ---------------------------------------------------------------------------------
_MATCH = (
    "c.patient_bsn = ? AND c.source_org_id = ? AND c.purpose = ? "  # noqa: S608 (constant SQL)
    "AND (c.recipient_team_id = ? OR c.recipient_org_id = ? OR c.recipient_category = ?) "
    "AND EXISTS (SELECT 1 FROM json_each(c.data_categories) j WHERE j.value = ?) "
    f"AND {CURRENT}"
)
_EVALUATE_SQL = (
    f"SELECT c.* FROM consents c WHERE {_MATCH} AND c.status = 'active' "  # noqa: S608 (constant SQL fragments)
    "AND c.valid_from <= ? AND (c.valid_until IS NULL OR c.valid_until > ?) "
    f"ORDER BY {SPECIFICITY_SQL} DESC, c.decision = 'deny' DESC, "
    "c.valid_from DESC, c.given_at DESC, c.consent_id LIMIT 1"
)
_EXPLAIN_SQL = (
    f"SELECT c.* FROM consents c WHERE {_MATCH} "  # noqa: S608 (constant SQL fragments)
    f"ORDER BY {SPECIFICITY_SQL} DESC, c.recorded_at DESC LIMIT 1"
)


def evaluate(
    db: sqlite_utils.Database,
    *,
    patient_bsn: str,
    source_org_id: int,
    target: Target,
    purpose: str = "TREAT",
    data_category: str = "execution_request",
    now: datetime,
    policy: str = "explicit",
    evidence: str = "",
) -> ConsentDecision:
    """The register's answer for one send: a pure read (one indexed query when permitted).

    ``policy`` says what no matching record means ('explicit', the strict reading, unless
    the caller passes the configured one); ``evidence`` names the signed request a presumed
    consent rests on (its reference)."""
    policy = parse_choice("policy", policy, POLICIES)
    bsn = parse_bsn(patient_bsn)
    org = parse_id("source_org_id", source_org_id)
    tgt = parse_target(target)
    purpose = parse_choice("purpose", purpose, PURPOSES)
    data_category = parse_choice("data_category", data_category, DATA_CATEGORIES)
    now_s = ts(now, "now")
    match = [bsn, org, purpose, tgt.team_id, tgt.org_id, tgt.category, data_category]
    found = query(db, _EVALUATE_SQL, [*match, now_s, now_s])
    what = f"{purpose} {data_category}"
    if not found and policy == "direct_care":
        reason = (
            f"consent presumed for direct care (implied_referral, evidence "
            f"{evidence or 'the signed request'}); no objection for {tgt.description}"
        )
        return ConsentDecision(
            True, None, reason, Specificity.NONE, tgt, purpose, data_category, policy, evidence
        )
    if not found:
        reason = (
            f"no consent of patient for {tgt.description} for {what} (holder organisation {org})"
            "; record the patient's consent (permit) for this team, its organisation or "
            "'wijkverpleging' before sending"
        )
        latest = query(db, _EXPLAIN_SQL, match)
        if latest:
            state = latest[0].status_at(now)
            state = "not yet valid" if state == "active" else state
            reason += f"; the latest matching record {latest[0].ref} is {state}"
        return ConsentDecision(
            False, None, reason, Specificity.NONE, tgt, purpose, data_category, policy, evidence
        )
    rec = found[0]
    if rec.decision == "deny":
        reason = f"objection {rec.ref} ({rec.recipient.label}) refuses {what} to {tgt.description}"
    else:
        reason = f"permitted by consent {rec.ref} ({rec.recipient.label}, {rec.basis}) for {what}"
    return ConsentDecision(
        rec.decision == "permit",
        rec,
        reason,
        rec.recipient.level,
        tgt,
        purpose,
        data_category,
        policy,
        evidence,
    )


def exempt(
    target: Target, why: str, *, data_category: str = "execution_request"
) -> ConsentDecision:
    """The decision for a send the register never gates (``why`` one of NEVER_GATED): a
    risk-reducing message goes even after an objection or a withdrawn consent. Nothing is
    read and no ``consent.check`` row is written; the send's own rows say ``exempt:<why>``."""
    why = parse_choice("why", why, NEVER_GATED)
    return ConsentDecision(
        True,
        None,
        f"{why} is never gated by consent",
        Specificity.NONE,
        parse_target(target),
        "TREAT",
        data_category,
        exempt=why,
    )


def check(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    patient_bsn: str,
    source_org_id: int,
    target: Target,
    purpose: str = "TREAT",
    data_category: str = "execution_request",
    now: datetime,
    audit_object: tuple[str, str],
    sender_org: str | None = None,
    policy: str = "explicit",
) -> ConsentDecision:
    """evaluate + a ``consent.check`` audit row (in the caller's transaction); never raises
    for a "no". A refusal is audited for the organisation that asked (the actor's, and
    ``sender_org``) only: its row names no recipient organisation, so it never appears in
    the console of the organisation that was refused (which received nothing). Use this
    when the refusal must be committed: call it inside store.write, return the decision,
    and ``raise_if_refused()`` after the write has committed."""
    decision = evaluate(
        db,
        patient_bsn=patient_bsn,
        source_org_id=source_org_id,
        target=target,
        purpose=purpose,
        data_category=data_category,
        now=now,
        policy=policy,
        evidence=audit_object[1] if audit_object[0] == "request" else "",
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "consent.check",
            outcome="success" if decision.permitted else "refused",
            outcome_detail=decision.reason,
            check_consent=decision.audit_value,
            consent_id=decision.consent_ref,
            patient_id=patient_bsn,
            object_type=audit_object[0],
            object_id=audit_object[1],
            purpose=decision.purpose,
            data_categories=decision.data_category,
            sender_org=actor.org_code if sender_org is None else sender_org,
            recipient_org=decision.target.org_code if decision.permitted else "",
            occurred_at=ts(now),
        ),
    )
    return decision


def require(db: sqlite_utils.Database, actor: Actor, **kw: Any) -> ConsentDecision:
    """check (same arguments) and raise ConsentMissingError / ConsentDeniedError on a "no".

    Inside ``store.write`` the raise rolls back the whole transaction, the refused
    ``consent.check`` row included: fine for the check just before a send that must not
    happen, but where the refusal itself must stay on record use ``check`` and raise after
    the commit.
    """
    decision = check(db, actor, **kw)
    decision.raise_if_refused()
    return decision
