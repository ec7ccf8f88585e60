"""The answered request in FHIR R4: a Bundle (collection) with the GP's ServiceRequest, the
GP as Practitioner (BIG, AGB) and the practice as Organization (AGB), a MedicationRequest
per procedure's medication, a Provenance for the GP's signature, the team's Task and the
nurse in charge as a PractitionerRole with her direct phone. Base R4 resources with the
Dutch identifier systems nl-core uses (BSN, BIG, AGB); no nl-core meta.profile claimed.

Built from the "voor het dossier" JSON (``record.record_document``), so it says nothing the
practice's own export does not; it leaves the gateway only through that export (same
access rule, same audit row). docs/loop.md has the mapping.

Invariants: every dateTime carries its offset (a local time without one is Amsterdam's);
statuses come from the R4 required value sets (task-status, request-status, request-intent,
request-priority); ids are stable per reference (uuid5), so a re-export updates, not adds.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
BIG = "http://fhir.nl/fhir/NamingSystem/big"
#: The AGB register (Vektis): a care provider's or practice's AGB code, as nl-core uses it
#: for HealthProfessional and HealthcareProvider (docs/loop.md, "nl-core").
AGB = "http://fhir.nl/fhir/NamingSystem/agb-z"
REFERENCE = "urn:securemail:request-reference"
#: hl7.org/fhir/R4/valueset-signature-type.html: the author's signature (ASTM E1762).
SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                  "display": "Author's Signature"}  # fmt: skip

#: The team's answer -> Task.status (hl7.org/fhir/R4/valueset-task-status.html).
TASK_STATUS = {
    "geaccepteerd": "accepted",
    "afgewezen": "rejected",
    "doorbemiddeld": "rejected",  # this team did not take it; the next team's Task follows
}

#: The request's state -> ServiceRequest.status (hl7.org/fhir/R4/valueset-request-status.html).
REQUEST_STATUS = {
    "open": "active",
    "answered": "active",
    "withdrawn": "revoked",
    "superseded": "revoked",
}


def _instant(text: str | None) -> str | None:
    """An ISO date-time with its offset (FHIR dateTime with a time needs one)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=AMSTERDAM)
    return moment.isoformat(timespec="seconds")


def _url(reference: str, kind: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:securemail:{reference}:{kind}')}"


def _identifier(reference: str) -> list[dict[str, str]]:
    return [{"system": REFERENCE, "value": reference}]


def _service_request(record: dict[str, Any]) -> dict[str, Any]:
    req, order = record["request"], record.get("order") or {}
    status = REQUEST_STATUS.get(record["state"], "unknown")
    if order.get("expired") or order.get("ended"):  # ran out, or the team ended it
        status = "completed"
    procedures = [str(p.get("code", "")) for p in req.get("procedures", [])]
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": _identifier(record["reference"]),
        "status": status,
        "intent": "order",
        "priority": "urgent" if req.get("urgency") == "spoed" else "routine",
        "code": {"text": "Uitvoeringsverzoek: " + "; ".join(procedures) if procedures else ""},
        "subject": {"identifier": {"system": BSN, "value": req["patient"]["bsn"]}},
        "authoredOn": _instant(req.get("issued_at")),
        "requester": _requester(record),
    }
    period = {"start": order.get("start_date"), "end": order.get("end_date")}
    out["occurrencePeriod"] = {k: v for k, v in period.items() if v}
    return _pruned(out)


def _requester(record: dict[str, Any]) -> dict[str, Any]:
    principal = record["request"].get("principal", {})
    return {
        "reference": _url(record["reference"], "Practitioner"),
        "identifier": {"system": BIG, "value": str(principal.get("big", ""))},
        "display": str(principal.get("name", "")),
    }


def _practitioner(record: dict[str, Any]) -> dict[str, Any]:
    """The signing GP with the identifiers nl-core-HealthProfessional-Practitioner slices
    on (BIG, AGB); no meta.profile: we cannot validate against the profile here."""
    principal = record["request"].get("principal", {})
    return _pruned(
        {
            "resourceType": "Practitioner",
            "identifier": [
                {"system": BIG, "value": str(principal.get("big") or "")},
                {"system": AGB, "value": str(principal.get("agb") or "")},
            ],
            "name": [{"text": str(principal.get("name") or "")}],
        }
    )


def _organization(record: dict[str, Any]) -> dict[str, Any]:
    """The practice (nl-core-HealthcareProvider-Organization's AGB slice): its AGB code as
    signed in the order, else the gateway's organisation code (an AGB for practices)."""
    principal = record["request"].get("principal", {})
    practice = record.get("practice") or {}
    agb = str(principal.get("practice_agb") or practice.get("code") or "")
    return _pruned(
        {
            "resourceType": "Organization",
            "identifier": [{"system": AGB, "value": agb}],
            "name": str(principal.get("practice_name") or practice.get("name") or ""),
        }
    )


def _medication_requests(record: dict[str, Any], status: str) -> list[dict[str, Any]]:
    """One MedicationRequest per procedure with a medication, based on the ServiceRequest."""
    req = record["request"]
    out = []
    for procedure in req.get("procedures", []):
        med = procedure.get("medication") or {}
        if not med.get("name"):
            continue
        dose = {"value": med.get("dose_value"), "unit": med.get("dose_unit") or ""}
        out.append(
            _pruned(
                {
                    "resourceType": "MedicationRequest",
                    # request-status's "revoked" is medicationrequest-status's "cancelled"
                    "status": {"revoked": "cancelled", "unknown": "unknown"}.get(status, status),
                    "intent": "order",
                    "medicationCodeableConcept": {"text": str(med["name"])},
                    "subject": {"identifier": {"system": BSN, "value": req["patient"]["bsn"]}},
                    "authoredOn": _instant(req.get("issued_at")),
                    "requester": _requester(record),
                    "basedOn": [{"reference": _url(record["reference"], "ServiceRequest")}],
                    "dosageInstruction": [
                        {
                            "text": str(procedure.get("schedule") or ""),
                            "asNeededBoolean": bool(med.get("as_needed")),
                            "route": {"text": str(med.get("route") or "")},
                            "doseAndRate": [{"doseQuantity": dose}]
                            if dose["value"] is not None
                            else [],
                        }
                    ],
                }
            )
        )
    return out


def _provenance(record: dict[str, Any]) -> dict[str, Any] | None:
    """The GP's signature over the order (the detached OpenPGP signature, base64)."""
    order = record.get("signed_order")
    when = _instant(record["request"].get("issued_at"))
    if not order or not when:
        return None
    return _pruned(
        {
            "resourceType": "Provenance",
            "target": [{"reference": _url(record["reference"], "ServiceRequest")}],
            "recorded": when,
            "agent": [{"who": _requester(record)}],
            "signature": [
                {
                    "type": [SIGNATURE_TYPE],
                    "when": when,
                    "who": _requester(record),
                    "sigFormat": "application/pgp-signature",
                    "data": base64.b64encode(order["signature"].encode("ascii")).decode(),
                }
            ],
        }
    )


def _practitioner_role(answer: dict[str, Any]) -> dict[str, Any]:
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "practitioner": {
            "identifier": {"system": BIG, "value": answer.get("nurse_big") or ""},
            "display": answer.get("nurse_in_charge") or "",
        },
        "organization": {"display": answer.get("team_name") or ""},
        "code": [{"text": answer.get("performer_level") or ""}],
        "telecom": [{"system": "phone", "value": answer.get("nurse_phone") or "", "use": "work"}],
        "availabilityExceptions": answer.get("nurse_reachability") or "",
    }
    return _pruned(role)


def _task(record: dict[str, Any], owner_url: str | None) -> dict[str, Any]:
    answer = record.get("answer") or {}
    status = TASK_STATUS.get(answer.get("status") or "", "requested")
    if record["state"] in ("withdrawn", "superseded") and not answer:
        status = "cancelled"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": _identifier(record["reference"]),
        "status": status,
        "statusReason": {"text": answer.get("reason") or ""},
        "intent": "order",
        "focus": {"reference": _url(record["reference"], "ServiceRequest")},
        "for": {"identifier": {"system": BSN, "value": record["request"]["patient"]["bsn"]}},
        "lastModified": _instant(answer.get("answered_at")),
        "owner": {"reference": owner_url} if owner_url else {},
        "executionPeriod": {"start": _instant(answer.get("care_start"))},
    }
    return _pruned(task)


def _pruned(node: dict[str, Any]) -> dict[str, Any]:
    """FHIR JSON allows no empty string, object or array: drop them, bottom up."""
    out: dict[str, Any] = _prune(node)
    return out


def _prune(node: Any) -> Any:
    if isinstance(node, dict):
        kept = {k: _prune(v) for k, v in node.items()}
        return {k: v for k, v in kept.items() if v not in ("", None, {}, [])}
    if isinstance(node, list):
        return [v for v in (_prune(x) for x in node) if v not in ("", None, {}, [])]
    return node


def bundle(record: dict[str, Any]) -> dict[str, Any]:
    """The Bundle (type collection) for one "voor het dossier" record."""
    reference = record["reference"]
    service = _service_request(record)
    entries = [(_url(reference, "ServiceRequest"), service)]
    entries.append((_url(reference, "Practitioner"), _practitioner(record)))
    entries.append((_url(reference, "Organization"), _organization(record)))
    entries += [
        (_url(reference, f"MedicationRequest-{i}"), med)
        for i, med in enumerate(_medication_requests(record, service["status"]))
    ]
    provenance = _provenance(record)
    if provenance is not None:
        entries.append((_url(reference, "Provenance"), provenance))
    answer = record.get("answer")
    owner_url = None
    if answer and answer.get("nurse_in_charge"):
        owner_url = _url(reference, "PractitionerRole")
        entries.append((owner_url, _practitioner_role(answer)))
    entries.append((_url(reference, "Task"), _task(record, owner_url)))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(record["exported_at"]),
        "entry": [{"fullUrl": url, "resource": res} for url, res in entries],
    }


__all__ = ["AGB", "BIG", "BSN", "REQUEST_STATUS", "TASK_STATUS", "bundle"]
