"""Exports of the audit trail: CSV, FHIR R4 AuditEvent (NDJSON) and the disclosure report PDF.

Invariants: an export is authorised (audit.export) and its ``audit.export`` row is
committed before the first exported row is read (``begin_export``), so no copy of the
trail leaves without its trace; exports carry only the officer's scope; the FHIR mapping
follows R4 AuditEvent (IHE BALP) with the BSN under the Dutch naming system.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import sqlite_utils
from fpdf import FPDF

from securemail.access import ROLE_CODES, Actor
from securemail.audit import plain
from securemail.audit.report import (
    COLUMNS,
    DisclosureReport,
    Line,
    PatientDisclosure,
    Scope,
    _view,
    authorize,
)
from securemail.message import csvsafe, pdfdoc

FORMATS = ("csv", "fhir")
BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
AGB_SYSTEM = "http://fhir.nl/fhir/NamingSystem/agb-z"
URA_SYSTEM = "http://fhir.nl/fhir/NamingSystem/ura"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SUBTYPE_SYSTEM = "urn:securemail:audit-event-code"
ACCESS_POINT_TYPE_URL = "urn:securemail:access-point-type"
OUTCOME_CODES = {"success": "0", "refused": "4", "error": "8"}
EXPORT_COLUMNS = (*COLUMNS, "prev_hash", "row_hash")
_EXPORT_SELECT = ", ".join(f"e.{c}" for c in EXPORT_COLUMNS)


def begin_export(
    db: sqlite_utils.Database,
    actor: Actor,
    fmt: str,
    start: str,
    end: str,
) -> Scope:
    """Authorise and record the export (commit this before reading); returns the scope."""
    scope = authorize(db, actor, "audit.export")
    _view(db, actor, f"trail.{fmt}", f"period {start}..{end}", export=True)
    return scope


def export_rows(
    db: sqlite_utils.Database, scope: Scope, start: str, end: str
) -> Iterator[dict[str, Any]]:
    """The scope's rows in [start, end), in chain order, hashes included."""
    where, params = scope.where("e", start, end)
    cur = db.conn.execute(
        f"SELECT {_EXPORT_SELECT} FROM audit_events e WHERE {where} "  # noqa: S608
        "ORDER BY e.seq",
        params,
    )
    for values in cur:
        yield dict(zip(EXPORT_COLUMNS, values, strict=True))


def write_csv(
    rows: Iterable[dict[str, Any]], out: TextIO, columns: tuple[str, ...] = EXPORT_COLUMNS
) -> int:
    """RFC 4180 CSV with a header; returns the number of rows written."""
    w = csvsafe.writer(out)
    w.writerow(columns)
    n = 0
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        n += 1
    return n


# -- FHIR R4 AuditEvent --------------------------------------------------------------------


def _event_type(code: str) -> dict[str, str]:
    domain = code.split(".")[0]
    if domain == "auth":
        return {"system": DCM, "code": "110114", "display": "User Authentication"}
    if domain == "audit":
        return {"system": DCM, "code": "110101", "display": "Audit Log Used"}
    if code.endswith(".export"):
        return {"system": DCM, "code": "110106", "display": "Export"}
    if domain in ("request", "ask", "consent", "notice"):
        return {"system": DCM, "code": "110110", "display": "Patient Record"}
    return {"system": DCM, "code": "110100", "display": "Application Activity"}


def _org_identifier(code: str, kinds: dict[str, str]) -> dict[str, str]:
    system = {"practice": AGB_SYSTEM, "nursing": URA_SYSTEM}.get(
        kinds.get(code, ""), "urn:securemail:organisation"
    )
    return {"system": system, "value": code}


def policy_uri(row: dict[str, Any]) -> str:
    """The authorisation protocol of a row as a URI (AuditEvent.agent.policy); "" before 0002."""
    if not row.get("policy_id"):
        return ""
    return f"urn:securemail:policy:{row['policy_id']}:{row['policy_version']}"


def _role(row: dict[str, Any]) -> list[dict[str, Any]]:
    """agent.role: the coded role (UZI role code or the local system) plus the local name."""
    name = row["user_role"] or "system"
    concept: dict[str, Any] = {"text": name}
    system, _, code = str(row.get("role_code") or "").partition("|")
    if code:
        display = next((d for s, c, d in ROLE_CODES.values() if (s, c) == (system, code)), name)
        concept["coding"] = [{"system": system, "code": code, "display": display}]
    return [concept]


def to_fhir(row: dict[str, Any], kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """One audit row as a FHIR R4 AuditEvent resource."""
    kinds = kinds or {}
    agent: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP" if row["event_code"] == "request.deliver" else "AUT",
                    }
                ]
            },
            "role": _role(row),
            "who": {
                "identifier": {
                    "system": "urn:securemail:user",
                    "value": str(row["user_id"] or row["user_name"] or "system"),
                },
                "display": row["user_name"] or "system",
            },
            "requestor": True,
        }
    ]
    if policy_uri(row):
        agent[0]["policy"] = [policy_uri(row)]
    if row.get("access_point_type"):
        agent[0]["extension"] = [
            {"url": ACCESS_POINT_TYPE_URL, "valueCode": row["access_point_type"]}
        ]
    if row["access_point"]:
        agent[0]["network"] = {
            "address": row["access_point"],
            "type": "2" if row["access_point"][:1].isdigit() else "1",
        }
    if row["org_id"]:
        agent.append(
            {
                "type": {"text": "organisation"},
                "requestor": False,
                "who": {"identifier": _org_identifier(row["org_id"], kinds)},
            }
        )
    if row["responsible_user_id"]:
        agent.append(
            {
                "type": {"text": "responsible"},
                "requestor": False,
                "who": {
                    "identifier": {
                        "system": "urn:securemail:user",
                        "value": str(row["responsible_user_id"]),
                    }
                },
            }
        )
    entity: list[dict[str, Any]] = []
    if row["patient_id"]:
        entity.append(
            {
                "what": {"identifier": {"system": BSN_SYSTEM, "value": row["patient_id"]}},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    if row["object_type"]:
        detail = [
            {"type": k, "valueString": str(row[k])}
            for k in (
                "data_categories",
                "consent_id",
                "sender_org",
                "recipient_org",
                "check_authz",
                "check_consent",
            )
            if row[k]
        ]
        obj: dict[str, Any] = {
            "what": {
                "identifier": {
                    "system": f"urn:securemail:{row['object_type']}",
                    "value": str(row["object_id"]),
                }
            },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "description": row["object_type"],
        }
        if detail:
            obj["detail"] = detail
        entity.append(obj)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": row["event_id"],
        "type": _event_type(row["event_code"]),
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": row["event_code"]}],
        "action": row["action"],
        "period": {"start": row["occurred_at"], "end": row["occurred_at"]},
        "recorded": row["recorded_at"],
        "outcome": OUTCOME_CODES.get(row["outcome"], "8"),
        "purposeOfEvent": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": row["purpose"],
                    }
                ]
            }
        ],
        "agent": agent,
        "source": {
            "observer": {"display": row["source_id"]},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "extension": [
            {
                "url": "urn:securemail:audit-chain",
                "extension": [
                    {"url": "seq", "valueInteger": row["seq"]},
                    {"url": "rowHash", "valueString": row.get("row_hash", "")},
                ],
            }
        ],
    }
    if row["outcome_detail"]:
        resource["outcomeDesc"] = row["outcome_detail"]
    if row["nature"] == "emergency":
        resource["purposeOfEvent"].append({"text": f"break-the-glass: {row['emergency_reason']}"})
    if entity:
        resource["entity"] = entity
    return resource


def org_kinds(db: sqlite_utils.Database) -> dict[str, str]:
    if "organisations" not in db.table_names():
        return {}
    return {str(c): str(k) for c, k in db.execute("SELECT code, kind FROM organisations")}


def write_fhir(rows: Iterable[dict[str, Any]], out: TextIO, kinds: dict[str, str]) -> int:
    """NDJSON: one AuditEvent per line; returns the number written."""
    n = 0
    for r in rows:
        out.write(json.dumps(to_fhir(r, kinds), ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        n += 1
    return n


# -- the disclosure report as a page-ready table, CSV and PDF --------------------------------

LABELS_NL = {
    "request.create": "verzoek aangemaakt",
    "request.view": "verzoek ingezien",
    "request.list": "lijst ingezien",
    "request.sign": "verzoek ondertekend",
    "request.send": "verzoek verzonden",
    "request.deliver": "verzoek afgeleverd",
    "request.retry": "aflevering opnieuw",
    "request.uncertain": "aflevering onzeker, opnieuw verzonden",
    "request.fail": "aflevering mislukt",
    "request.stop": "verzending gestopt",
    "request.answer": "verzoek beantwoord",
    "request.pass_on": "verzoek doorgezet",
    "request.withdraw": "verzoek ingetrokken",
    "consent.record": "toestemming vastgelegd",
    "consent.withdraw": "toestemming ingetrokken",
    "consent.check": "toestemming gecontroleerd",
    "consent.view": "toestemming ingezien",
    "audit.view": "auditlog ingezien",
    "audit.export": "auditlog geëxporteerd",
    "audit.review": "beoordeling vastgelegd",
}
DISCLOSURE_HEADINGS = (
    "Datum en tijd",
    "Handeling",
    "Door",
    "Rol",
    "Organisatie",
    "Verzender",
    "Ontvanger",
    "Verantwoordelijke",
    "Gegevens",
    "Toestemming",
    "Noodtoegang",
    "Uitkomst",
)


def disclosure_table(report: DisclosureReport, tz: str = "Europe/Amsterdam") -> list[list[str]]:
    """The report's rows as Dutch table cells (local time, names for codes)."""
    zone = ZoneInfo(tz)
    names = report.names
    out = []
    for r in report.rows:
        when = datetime.fromisoformat(r["occurred_at"].replace("Z", "+00:00")).astimezone(zone)
        out.append(
            [
                when.strftime("%d-%m-%Y %H:%M"),
                LABELS_NL.get(r["event_code"], r["event_code"]),
                r["user_name"],
                r["user_role"],
                names.get(r["org_id"], r["org_id"]),
                names.get(r["sender_org"], r["sender_org"]),
                names.get(r["recipient_org"], r["recipient_org"]),
                str(r["responsible_user_id"] or ""),
                r["data_categories"],
                r["consent_id"],
                f"ja: {r['emergency_reason']}" if r["nature"] == "emergency" else "nee",
                {"success": "gelukt", "refused": "geweigerd", "error": "fout"}.get(
                    r["outcome"], r["outcome"]
                )
                + (f" ({r['outcome_detail']})" if r["outcome"] != "success" else ""),
            ]
        )
    return out


def disclosure_csv(report: DisclosureReport, out: TextIO, tz: str = "Europe/Amsterdam") -> int:
    w = csvsafe.writer(out)
    w.writerow(DISCLOSURE_HEADINGS)
    rows = disclosure_table(report, tz)
    w.writerows(rows)
    return len(rows)


def _latin1(text: str) -> str:
    # The PDF core fonts cover latin-1 only; anything else becomes "?" rather than failing.
    return text.encode("latin-1", "replace").decode("latin-1")


def disclosure_pdf(report: DisclosureReport, tz: str = "Europe/Amsterdam") -> bytes:
    """The disclosure report as a landscape A4 PDF with Dutch headings."""
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.set_title(_latin1("Overzicht verstrekkingen en inzage"))
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(
        0,
        8,
        _latin1("Overzicht verstrekkingen en inzage (AVG art. 15, Wabvpz art. 15e)"),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_font("Helvetica", "", 9)
    zone = ZoneInfo(tz)

    def local(iso: str) -> str:
        return (
            datetime.fromisoformat(iso.replace("Z", "+00:00"))
            .astimezone(zone)
            .strftime("%d-%m-%Y %H:%M")
        )

    for line in (
        f"Patiënt (BSN): {report.bsn}",
        f"Periode: {local(report.start)} tot {local(report.end)}",
        f"Organisatie: {report.organisation}",
        f"Opgesteld: {local(report.generated_at)} door {report.generated_by}",
        f"Aantal gebeurtenissen: {len(report.rows)}",
    ):
        pdf.cell(0, 5, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    cols = (0, 1, 2, 4, 5, 6, 8, 9, 10, 11)
    widths = (25, 32, 28, 34, 34, 38, 26, 22, 16, 22)
    headings = [DISCLOSURE_HEADINGS[i] for i in cols]
    pdf.set_font("Helvetica", "", 7)
    with pdf.table(
        col_widths=widths, text_align="LEFT", line_height=3.6, first_row_as_headings=True
    ) as table:
        row = table.row()
        for h in headings:
            row.cell(_latin1(h))
        for cells in disclosure_table(report, tz):
            row = table.row()
            for i in cols:
                row.cell(_latin1(cells[i]))
    if not report.rows:
        pdf.cell(
            0, 6, _latin1("Geen gebeurtenissen in deze periode."), new_x="LMARGIN", new_y="NEXT"
        )
    return bytes(pdf.output())


# -- the patient's version (Wabvpz art. 15e) -----------------------------------------------


def local_time(
    iso: str, tz: str = "Europe/Amsterdam", *, date_only: bool = False, inclusive_end: bool = False
) -> str:
    """A trail time as people read it: Amsterdam time with its zone (as the web's filter);
    inclusive_end: the day before a period's exclusive end (midnight), as people count."""
    here = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    if inclusive_end:
        here -= timedelta(milliseconds=1)
    if date_only:
        return here.strftime("%d-%m-%Y")
    return f"{here.strftime('%d-%m-%Y %H:%M')} {here.tzname()}"


def patient_line(line: Line, tz: str = "Europe/Amsterdam") -> str:
    """One line of the patient's report: when, which request, what happened, why."""
    reasons = dict.fromkeys(plain.reason(r, for_patient=True) for r in line.rows)
    why = "; ".join(r for r in reasons if r)
    ref = (
        f" (verzoek {line.reference})"
        if line.reference and line.reference not in line.sentence
        else ""
    )
    return f"{local_time(line.occurred_at, tz)}: {line.sentence}{ref}" + (f". {why}" if why else "")


def patient_pdf(
    report: PatientDisclosure,
    tz: str = "Europe/Amsterdam",
    *,
    created: datetime,
    compress: bool = True,
) -> bytes:
    """The patient's disclosure report as a PDF: per organisation, per person (name and
    function), what they did with the patient's data and when. No BSN, no ids: the file
    names nobody but the people who acted, so a lost copy tells little."""
    doc = pdfdoc.Document("Wie heeft uw gegevens ingezien?", created, compress=compress)
    doc.heading("Wie heeft uw gegevens ingezien?", 15)
    doc.body(
        f"Overzicht van {report.organisation} over de periode "
        f"{local_time(report.start, tz, date_only=True)} tot en met "
        f"{local_time(report.end, tz, date_only=True, inclusive_end=True)}, opgesteld op "
        f"{local_time(report.generated_at, tz)}.\n"
        "U heeft het recht te weten wie uw gegevens heeft ingezien of ontvangen "
        "(Wet aanvullende bepalingen verwerking persoonsgegevens in de zorg, artikel 15e; "
        "AVG artikel 15). Hieronder staat per organisatie en per persoon wat er met uw "
        "gegevens is gedaan, met het kenmerk van het verzoek."
    )
    if not report.by_org:
        doc.gap()
        doc.body("In deze periode heeft niemand uw gegevens via de beveiligde berichtendienst "
                 "ingezien of ontvangen.")  # fmt: skip
    for organisation, persons in report.by_org:
        doc.gap(3)
        doc.heading(organisation or "Onbekende organisatie", 12)
        for who, lines in persons:
            doc.heading(f"{who.name} ({who.role})" if who.role else who.name, 10)
            doc.body("\n".join(patient_line(line, tz) for line in lines))
    doc.gap(4)
    doc.body(
        "Vragen over dit overzicht? Neem contact op met de privacyfunctionaris van "
        f"{report.organisation}."
    )
    return doc.output()
