"""FHIR R4 Consent resources, and a collection Bundle of a register or one patient.

Invariants: ``to_fhir`` is a pure mapping of one stored version (the logical id is the
consent_id, ``meta.versionId`` the version); ``export_fhir`` exports the current version
of each consent held by one organisation, checks access and writes one
``consent.export`` audit row in the caller's transaction.

Where R4 has no code for a securemail notion we use our own ``urn:securemail:*``
systems (team, organisation without a resolver, recipient category, data category).
``sourceAttachment.hash`` carries the evidence's SHA-256 (base64): R4 defines that
element as SHA-1, so a receiver must not check it as SHA-1; docs/consent.md says so.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlite_utils

from securemail import access
from securemail.access import Actor, Resource
from securemail.audit import trail as audit
from securemail.consent.model import ConsentRecord, Recipient, parse_id, ts
from securemail.consent.queries import list_records

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
AGB_SYSTEM = "http://fhir.nl/fhir/NamingSystem/agb-z"
URA_SYSTEM = "http://fhir.nl/fhir/NamingSystem/ura"
TEAM_SYSTEM = "urn:securemail:team"
ORG_SYSTEM = "urn:securemail:organisation"
CATEGORY_SYSTEM = "urn:securemail:recipient-category"
DATA_CATEGORY_SYSTEM = "urn:securemail:data-category"
SCOPE = {
    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
    "code": "patient-privacy",
    "display": "Privacy Consent",
}
CATEGORY = {"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: basis -> v3 ActConsentDirective code
POLICY_RULE = {"explicit": "OPTIN", "implied_referral": "IMPLIED", "objection": "OPTOUT"}
_STATUS = {
    "active": "active",
    "expired": "inactive",
    "withdrawn": "inactive",
    "entered-in-error": "entered-in-error",
}
_RECIPIENT_ROLE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP",
            "display": "information recipient",
        }
    ]
}
_PURPOSE = {"TREAT": "treatment"}

#: ("organisation" | "team", id) -> a FHIR Identifier such as {"system": URA_SYSTEM,
#: "value": "12345678"}, or None to fall back to our own urn:securemail:* identifier.
Identify = Callable[[str, int], dict[str, str] | None]


def _ref(kind: str, ident: int, identify: Identify | None) -> dict[str, Any]:
    found = identify(kind, ident) if identify is not None else None
    system = ORG_SYSTEM if kind == "organisation" else TEAM_SYSTEM
    return {
        "type": "Organization" if kind == "organisation" else "CareTeam",
        "identifier": found or {"system": system, "value": str(ident)},
    }


def _recipient_ref(r: Recipient, identify: Identify | None) -> dict[str, Any]:
    if r.team_id is not None:
        return _ref("team", r.team_id, identify)
    if r.org_id is not None:
        return _ref("organisation", r.org_id, identify)
    return {
        "identifier": {"system": CATEGORY_SYSTEM, "value": str(r.category)},
        "display": f"category {r.category}",
    }


def to_fhir(
    record: ConsentRecord, *, now: datetime, identify: Identify | None = None
) -> dict[str, Any]:
    """One FHIR R4 Consent for one stored version; status as of now."""
    patient = {"type": "Patient", "identifier": {"system": BSN_SYSTEM, "value": record.patient_bsn}}
    if record.performer == "patient":
        performer = patient
    else:
        performer = {"type": "RelatedPerson", "display": record.performer_name or ""}
    period = {"start": ts(record.valid_from)}
    if record.valid_until is not None:
        period["end"] = ts(record.valid_until)
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": record.consent_id,
        "meta": {"versionId": str(record.version), "lastUpdated": ts(record.recorded_at)},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{record.consent_id}"}],
        "status": _STATUS[record.status_at(now)],
        # Copies: a caller that edits the resource must not edit the next one's constants.
        "scope": {"coding": [dict(SCOPE)]},
        "category": [{"coding": [dict(CATEGORY)]}],
        "patient": patient,
        "dateTime": ts(record.given_at),
        "performer": [performer],
        "organization": [_ref("organisation", record.source_org_id, identify)],
        "policyRule": {
            "coding": [{"system": _ACT_CODE, "code": POLICY_RULE[record.basis]}],
            "text": record.basis,
        },
        "provision": {
            "type": record.decision,
            "period": period,
            "actor": [
                {
                    "role": copy.deepcopy(_RECIPIENT_ROLE),
                    "reference": _recipient_ref(record.recipient, identify),
                }
            ],
            "purpose": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    "code": record.purpose,
                    "display": _PURPOSE.get(record.purpose, record.purpose),
                }
            ],
            "class": [{"system": DATA_CATEGORY_SYSTEM, "code": c} for c in record.data_categories],
        },
    }
    if record.evidence_ref or record.evidence_sha256:
        attachment: dict[str, str] = {}
        if record.evidence_ref:
            attachment["title"] = record.evidence_ref
        if record.evidence_sha256:
            attachment["hash"] = base64.b64encode(bytes.fromhex(record.evidence_sha256)).decode()
        resource["sourceAttachment"] = attachment
    return resource


def export_fhir(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    source_org_id: int,
    patient_bsn: str | None = None,
    now: datetime,
    identify: Identify | None = None,
) -> dict[str, Any]:
    """A Bundle (type collection) of the current version of every consent the organisation
    holds, or one patient's; access checked and audited ``consent.export``."""
    org = parse_id("source_org_id", source_org_id)
    access.require(actor, "consent.view", Resource("consent", org_id=org))
    records = list_records(db, source_org_id=org, patient_bsn=patient_bsn, now=now)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": ts(now, "now"),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r.consent_id}",
                "resource": to_fhir(r, now=now, identify=identify),
            }
            for r in records
        ],
    }
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "consent.export",
            patient_id=patient_bsn or "",
            object_type="consent_register",
            object_id=str(org),
            outcome_detail=f"{len(records)} FHIR R4 Consent resources",
            occurred_at=ts(now),
        ),
    )
    return bundle
