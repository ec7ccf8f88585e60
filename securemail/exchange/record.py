""" "Voor het dossier": an answered request as the practice files it in its information system
(HIS): one PDF to read and one JSON to import, with the GP's signature to verify.

The gateway is a transport, not a record (docs/retention.md): its content goes after the
retention period, so what the GP relies on must reach the practice's own record first.

Invariants:
- only the request's own practice opens it (``request.record``, a GP of that practice or
  its HIS token); anyone else gets the same 404 as a missing request, with an
  ``access.denied`` row;
- every export writes one ``request.record_export`` audit row (which format) in the same
  transaction that read the content; a purged request gives ``retention.content_purged``;
- nothing about the patient is in the file name or the URL: both carry the reference only
  (``file_name``);
- the JSON holds the canonical request exactly as signed, the GP's RFC 3156 signed order as
  the signed bytes (base64) and the detached armored signature, so the HIS can verify the GP
  with its own gpg; the team's answer is the same document the practice's sealed copy holds
  (``answer_copy.answer_document``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlite_utils

from securemail import contentbox
from securemail.access import Actor
from securemail.errors import InputError
from securemail.exchange import answer_copy, fhir, orders, send
from securemail.exchange.view import (
    RequestRow,
    answer_of,
    audit_read,
    document,
    document_bytes,
    hops,
    permitted_row,
)
from securemail.message import mime, pdfdoc
from securemail.region import directory
from securemail.services import Services

#: The forms of the export, by the extension the URL carries (fhir: an R4 Bundle, fhir.py).
FORMATS = ("pdf", "json", "fhir")

#: What the JSON says it is (a HIS can dispatch on it, as on the answer's document).
DOCUMENT = "uitvoeringsverzoek.dossier"


@dataclass(frozen=True, slots=True)
class RecordExport:
    """One export: the bytes, their media type and a file name without patient data."""

    body: bytes
    content_type: str
    file_name: str


def file_name(reference: str, fmt: str) -> str:
    """``dossier-UVZ-2026-000001.pdf``: the reference only (it names no patient)."""
    return f"dossier-{reference}.{'fhir.json' if fmt == 'fhir' else fmt}"


def _signed_order(db: sqlite_utils.Database, row: RequestRow) -> dict[str, str] | None:
    """The GP's RFC 3156 order as what a verifier needs: the signed bytes and the detached
    signature; for a request from before signed orders, its detached JSON signature."""
    order = contentbox.open_value(
        db, "requests", "signed_order", row["reference"], row.get("signed_order", "")
    )
    if order:
        content, signature = mime.signed_parts(order.encode("ascii"))
        return {
            "kind": "rfc3156_multipart_signed",
            "signed_content_base64": base64.b64encode(content).decode("ascii"),
            "signature": signature.decode("ascii"),
        }
    legacy = bytes(row["json_signature"] or b"")
    if legacy:
        return {
            "kind": "detached_over_request_json",
            "signed_content_base64": base64.b64encode(document_bytes(db, row)).decode("ascii"),
            "signature": legacy.decode("ascii", "replace"),
        }
    return None


def record_document(db: sqlite_utils.Database, row: RequestRow, now: str) -> dict[str, Any]:
    """The JSON export: request as signed, its signature, the answer, the teams and dates."""
    stored = answer_of(db, row)
    practice = directory.org_by_id(db, row["practice_org_id"])
    return {
        "document": DOCUMENT,
        "reference": row["reference"],
        "exported_at": now,
        "practice": {"code": practice.code, "name": practice.name},
        "state": row["state"],
        "signer_fingerprint": row["signer_fingerprint"],
        "request": document(db, row),
        "signed_order": _signed_order(db, row),
        "answer": (
            answer_copy.answer_document(
                row["reference"], stored, str(stored.get("form_version", ""))
            )
            if stored is not None
            else None
        ),
        "hops": [
            {k: h[k] for k in ("team_name", "team_address", "sent_at", "outcome", "outcome_at")}
            for h in hops(db, row["reference"])
        ],
        "order": orders.order_state(db, row["reference"]),
    }


def _pdf(request_text: str, answer_text: str, record: dict[str, Any], created: datetime) -> bytes:
    doc = pdfdoc.Document(f"Voor het dossier: {record['reference']}", created)
    heading, body = doc.heading, doc.body

    heading(f"Voor het dossier: uitvoeringsverzoek {record['reference']}")
    body(f"Uitgevoerd {record['exported_at']} door de gateway voor {record['practice']['name']}.")
    heading("Het ondertekende verzoek")
    body(request_text)
    order = record["signed_order"]
    if order is not None:
        body(f"Ondertekend door de huisarts met sleutel {record['signer_fingerprint']}.")
        body("Handtekening en ondertekende inhoud staan in het JSON-bestand (signed_order).")
    heading("Reactie van het wijkteam")
    body(answer_text or "Nog geen reactie.")
    if record["hops"]:
        heading("Teams")
        body("\n".join(f"{h['team_name']} ({h['team_address']}): {h['outcome'] or 'open'}"
                       for h in record["hops"]))  # fmt: skip
    return doc.output()


def export(
    db: sqlite_utils.Database, svc: Services, actor: Actor, reference: str, fmt: str
) -> RecordExport:
    """The export in ``fmt`` for the request's own practice; audited. Run in a write."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", field="format")
    row = permitted_row(db, actor, reference, "request.record", "record")
    contentbox.require_content(row)
    record = record_document(db, row, svc.now_iso())
    audit_read(db, actor, row, "request.record_export", f"format={fmt}")
    if fmt == "fhir":
        body = json.dumps(fhir.bundle(record), ensure_ascii=False, indent=2).encode("utf-8")
        return RecordExport(body, "application/fhir+json", file_name(reference, fmt))
    if fmt == "json":
        body = json.dumps(record, ensure_ascii=False, sort_keys=True, indent=2).encode("utf-8")
        return RecordExport(body, "application/json", file_name(reference, fmt))
    answer = record["answer"]
    answer_text = answer_copy.answer_text(answer) if answer is not None else ""
    request_text = send.render_text(svc, {"document": record["request"]})
    return RecordExport(
        _pdf(request_text, answer_text, record, svc.now()),
        "application/pdf",
        file_name(reference, fmt),
    )


__all__ = ["DOCUMENT", "FORMATS", "RecordExport", "export", "file_name", "record_document"]
