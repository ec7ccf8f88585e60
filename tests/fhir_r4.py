"""Validate what we export as FHIR against the FHIR R4 (4.0.1) definitions, not our own idea.

Two layers:

1. Structure: ``fhir.resources`` 6.4.0, the pydantic models generated from the official R4
   4.0.1 StructureDefinitions (``fhir.resources.__fhir_version__ == "4.0.1"``; later releases
   of that package model R4B/R5). It refuses unknown elements, wrong datatypes (an ``id``,
   ``instant`` or ``code`` that does not match R4's regex, an object where a list belongs),
   missing required elements (min 1, such as AuditEvent.recorded or agent.requestor) and a
   choice element given twice.
2. Terminology: the pydantic models do not check bindings, so this module checks the
   *required* bindings of the elements we fill against the R4 value sets (copied below from
   the pages named beside each, hl7.org/fhir/R4, CC0), that a code in one of the small HL7
   code systems we use exists in that system, and that every coding names a system we know
   (an HL7/DICOM/LOINC system, a Dutch NamingSystem, or our own ``urn:securemail:*``).

Also FHIR JSON's own rules (hl7.org/fhir/R4/json.html): no empty arrays, objects or strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# A test extra (pyproject.toml), never skipped: the export is only checked when it is here.
import fhir.resources as resources
from fhir.resources import construct_fhir_element

assert resources.__fhir_version__ == "4.0.1", "fhir.resources must model R4 4.0.1 (6.4.0)"

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"

#: (resource type, dotted element path) -> the codes of its *required* R4 value set.
REQUIRED_BINDINGS: dict[tuple[str, str], frozenset[str]] = {
    # hl7.org/fhir/R4/valueset-audit-event-action.html
    ("AuditEvent", "action"): frozenset({"C", "R", "U", "D", "E"}),
    # hl7.org/fhir/R4/valueset-audit-event-outcome.html
    ("AuditEvent", "outcome"): frozenset({"0", "4", "8", "12"}),
    # hl7.org/fhir/R4/valueset-network-type.html
    ("AuditEvent", "agent.network.type"): frozenset({"1", "2", "3", "4", "5"}),
    # hl7.org/fhir/R4/valueset-consent-state-codes.html
    ("Consent", "status"): frozenset(
        {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
    ),
    # hl7.org/fhir/R4/valueset-consent-provision-type.html
    ("Consent", "provision.type"): frozenset({"deny", "permit"}),
    # hl7.org/fhir/R4/valueset-task-status.html
    ("Task", "status"): frozenset(
        {
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        }
    ),  # fmt: skip
    # hl7.org/fhir/R4/valueset-task-intent.html
    ("Task", "intent"): frozenset(
        {
            "unknown",
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),  # fmt: skip
    # hl7.org/fhir/R4/valueset-request-status.html
    ("ServiceRequest", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    # hl7.org/fhir/R4/valueset-request-intent.html
    ("ServiceRequest", "intent"): frozenset(
        {
            "proposal",
            "plan",
            "directive",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),  # fmt: skip
    # hl7.org/fhir/R4/valueset-request-priority.html
    ("ServiceRequest", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
    # hl7.org/fhir/R4/valueset-medicationrequest-status.html, -intent.html
    ("MedicationRequest", "status"): frozenset(
        {
            "active",
            "on-hold",
            "cancelled",
            "completed",
            "entered-in-error",
            "stopped",
            "draft",
            "unknown",
        }
    ),  # fmt: skip
    ("MedicationRequest", "intent"): frozenset(
        {
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),  # fmt: skip
    # hl7.org/fhir/R4/valueset-contact-point-system.html, valueset-contact-point-use.html
    ("PractitionerRole", "telecom.system"): frozenset(
        {"phone", "fax", "email", "pager", "url", "sms", "other"}
    ),
    ("PractitionerRole", "telecom.use"): frozenset({"home", "work", "temp", "old", "mobile"}),
    # hl7.org/fhir/R4/valueset-bundle-type.html
    ("Bundle", "type"): frozenset(
        {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        }
    ),
}

#: Code systems we use, with their codes: complete for the small HL7 systems; for the big
#: ones (DICOM, v3 ActReason, v3 ActCode, v3 ParticipationType, LOINC) the part R4 binds the
#: element to (audit-event-type's DICOM codes, PurposeOfUse, ActConsentDirective, ...).
CODE_SYSTEMS: dict[str, frozenset[str]] = {
    # hl7.org/fhir/R4/valueset-audit-event-type.html (DICOM CID 400 "Audit Event ID")
    "http://dicom.nema.org/resources/ontology/DCM": frozenset(
        str(c) for c in range(110100, 110115)
    ),
    # hl7.org/fhir/R4/codesystem-audit-entity-type.html
    TERMINOLOGY + "audit-entity-type": frozenset({"1", "2", "3", "4"}),
    # hl7.org/fhir/R4/codesystem-object-role.html
    TERMINOLOGY + "object-role": frozenset(str(c) for c in range(1, 25)),
    # hl7.org/fhir/R4/codesystem-security-source-type.html
    TERMINOLOGY + "security-source-type": frozenset(str(c) for c in range(1, 10)),
    # hl7.org/fhir/R4/codesystem-consentscope.html
    TERMINOLOGY + "consentscope": frozenset({"adr", "research", "patient-privacy", "treatment"}),
    # terminology.hl7.org/CodeSystem-v3-ActReason.html, PurposeOfUse (valueset-v3-PurposeOfUse)
    TERMINOLOGY + "v3-ActReason": frozenset(
        {
            "PurposeOfUse",
            "HMARKT",
            "HOPERAT",
            "CAREMGT",
            "DONAT",
            "FRAUD",
            "GOV",
            "HACCRED",
            "HCOMPL",
            "HDECD",
            "HDIRECT",
            "HDM",
            "HLEGAL",
            "HOUTCOMS",
            "HPRGRP",
            "HQUALIMP",
            "HSYSADMIN",
            "LABELING",
            "METAMGT",
            "MEMADMIN",
            "MILCDM",
            "PATADMIN",
            "PATSFTY",
            "PERFMSR",
            "RECORDMGT",
            "SYSDEV",
            "HTEST",
            "TRAIN",
            "HPAYMT",
            "CLMATTCH",
            "COVAUTH",
            "COVERAGE",
            "ELIGDTRM",
            "ELIGVER",
            "ENROLLM",
            "MILDCRG",
            "REMITADV",
            "HRESCH",
            "BIORCH",
            "CLINTRCH",
            "CLINTRCHNPC",
            "CLINTRCHPC",
            "PRECLINTRCH",
            "DSRCH",
            "POARCH",
            "TRANSRCH",
            "PATRQT",
            "FAMRQT",
            "PWATRNY",
            "SUPNWK",
            "PUBHLTH",
            "DISASTER",
            "THREAT",
            "TREAT",
            "CLINTRL",
            "COC",
            "ETREAT",
            "BTG",
            "ERTREAT",
            "POPHLTH",
        }
    ),
    # terminology.hl7.org/ValueSet-v3-ActConsentDirective.html (Consent.policyRule)
    TERMINOLOGY + "v3-ActCode": frozenset(
        {
            "EMRGONLY",
            "GRANTORCHOICE",
            "IMPLIED",
            "IMPLIEDD",
            "NOCONSENT",
            "NOPP",
            "OPTIN",
            "OPTINR",
            "OPTOUT",
            "OPTOUTE",
        }
    ),
    # hl7.org/fhir/R4/valueset-participation-role-type.html, v3 ParticipationType part
    TERMINOLOGY + "v3-ParticipationType": frozenset(
        {"AUT", "AUTHEN", "CST", "CUST", "DEV", "INF", "IRCP", "LA", "ORG", "PRF", "RESP", "SBJ"}
    ),
    # hl7.org/fhir/R4/valueset-signature-type.html (ASTM E1762-95, the codes we use)
    "urn:iso-astm:E1762-95:2013": frozenset({"1.2.840.10065.1.12.1.1"}),
    # hl7.org/fhir/R4/valueset-consent-category.html (LOINC part)
    "http://loinc.org": frozenset({"59284-0", "57016-8", "57017-6", "64292-6"}),
}

#: Systems whose codes are not ours to check here, but which are real and meant.
OPEN_SYSTEMS = (
    "http://fhir.nl/fhir/NamingSystem/",  # Dutch NamingSystems (BSN, AGB, URA, UZI role)
    "urn:securemail:",  # our own, documented in docs/audit.md and docs/consent.md
    "urn:ietf:rfc:3986",  # an identifier that is a URI
)


def _at(node: Any, path: list[str]) -> Iterator[Any]:
    """Every value at a dotted path, flattening lists on the way."""
    if isinstance(node, list):
        for item in node:
            yield from _at(item, path)
    elif not path:
        yield node
    elif isinstance(node, dict) and path[0] in node:
        yield from _at(node[path[0]], path[1:])


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{where}.{k}" if where else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}[{i}]")


def _json_rules(resource: dict[str, Any]) -> list[str]:
    return [
        f"{where}: empty {type(v).__name__} (FHIR JSON forbids)"
        for where, v in _walk(resource)
        if v in ("", [], {})
    ]


def _codings(resource: dict[str, Any]) -> list[str]:
    errors = []
    for where, v in _walk(resource):
        if not (isinstance(v, dict) and "code" in v and "system" in v):
            continue
        system, code = v["system"], v["code"]
        if system in CODE_SYSTEMS:
            if code not in CODE_SYSTEMS[system]:
                errors.append(f"{where}: code {code!r} is not in {system}")
        elif not system.startswith(OPEN_SYSTEMS):
            errors.append(f"{where}: unknown code system {system!r}")
    return errors


def _bindings(resource: dict[str, Any]) -> list[str]:
    errors = []
    kind = resource.get("resourceType", "")
    for (rtype, path), codes in REQUIRED_BINDINGS.items():
        if rtype != kind:
            continue
        for value in _at(resource, path.split(".")):
            if value not in codes:
                errors.append(f"{kind}.{path}: {value!r} is not in its required value set")
    return errors


def problems(resource: dict[str, Any]) -> list[str]:
    """Everything wrong with one resource (and, in a Bundle, each entry's); [] when valid."""
    errors: list[str] = []
    try:
        construct_fhir_element(resource.get("resourceType", "?"), resource)
    except Exception as exc:  # pydantic's ValidationError or LookupError: the message is all
        errors.append(f"R4 structure: {exc}")
    errors += _json_rules(resource) + _codings(resource) + _bindings(resource)
    for entry in resource.get("entry", []) if resource.get("resourceType") == "Bundle" else []:
        errors += _bindings(entry.get("resource", {}))
    return errors


def assert_valid(resource: dict[str, Any]) -> None:
    found = problems(resource)
    assert not found, "\n".join(found)
