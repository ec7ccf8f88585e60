"""The team's signed answer goes back to the practice: what the GP relies on (Wet BIG art. 38,
"may reasonably assume competence") lands in the practice's mailbox and its information
system, not only in the gateway, whose content is purged after the retention period.

Invariants:
- the answer document (``answer_document``) carries the reference, the decision, the nurse
  in charge with her direct phone, reachability and BIG number, the performer's level, the
  competence confirmation, the planned start of care and the team's reason; it says who
  signed it: the gateway, on the team's behalf (``signed_by``), never the nurse's own key;
- it is sealed to the practice's pinned key only (securemail.keys.practice) and signed by
  the gateway's key; a practice without a usable pinned key gets no sealed copy (the plain
  notice still goes, and the answer stays readable after login and through the API);
- the copy is queued in the answer's own transaction with a ``request.answer_copy`` audit
  row, and its Message-ID is kept in ``answer_copies`` so the delivery worker knows it is
  an answer going home, which the consent register never stops (risk-reducing);
- ``answer_for_practice`` gives the answer's content to the request's practice only
  (another practice's token sees 404, like a missing request), audited ``request.view``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.exchange.view import (
    answer_of,
    audit_read,
    permitted_row,
    status,
)
from securemail.keys import practice as practicekeys
from securemail.openpgp.keyring import (
    Envelope,
    Fingerprint,
    RecipientKeyError,
    SealedMessage,
    SealInput,
)
from securemail.region import directory
from securemail.services import Services
from securemail.store import get_meta

log = logging.getLogger("securemail.answer")

MIGRATIONS = Migrations("securemail.answer_copy")

#: What the document says about its signature (Dutch, for the GP reading it).
SIGNED_BY_NL = "Ondertekend door de gateway namens {team}; vastgelegd door {nurse}."

#: The answer document's fields, in this order (the stored answer's other keys stay out).
FIELDS = (
    "status", "nurse_in_charge", "nurse_phone", "nurse_reachability", "nurse_big",
    "performer_level", "competence_confirmed", "care_start", "reason", "passed_to",
    "team_name", "team_address", "answered_by", "answered_at",
)  # fmt: skip


@MIGRATIONS(name="0001_answer_copies")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE answer_copies (
            message_id TEXT PRIMARY KEY,
            reference TEXT NOT NULL,
            practice_org_id INTEGER NOT NULL,
            recipient_fingerprint TEXT NOT NULL,
            queued_at TEXT NOT NULL)"""
    )


def answer_document(reference: str, stored: dict[str, Any], form_version: str) -> dict[str, Any]:
    """The JSON the practice's system reads: the answer, and who signed it."""
    doc: dict[str, Any] = {
        "document": "uitvoeringsverzoek.reactie",
        "form_version": form_version,
        "reference": reference,
    }
    doc.update({k: stored.get(k) for k in FIELDS})
    doc["signed_by"] = {
        "kind": "gateway_on_behalf_of_team",
        "team_address": stored.get("team_address"),
        "statement_nl": SIGNED_BY_NL.format(
            team=stored.get("team_name"), nurse=stored.get("answered_by")
        ),
    }
    return doc


def answer_text(doc: dict[str, Any]) -> str:
    """The answer document as Dutch text (the sealed copy's text part, the dossier PDF)."""
    lines = [
        f"Reactie van het wijkteam op uitvoeringsverzoek {doc['reference']}",
        "",
        f"Reactie: {doc['status']}",
    ]
    labels = (
        ("nurse_in_charge", "Verantwoordelijk verpleegkundige"),
        ("nurse_phone", "Direct telefoonnummer"),
        ("nurse_reachability", "Bereikbaarheid"),
        ("nurse_big", "BIG-nummer"),
        ("performer_level", "Deskundigheid uitvoerende"),
        ("care_start", "Geplande start van de zorg"),
        ("reason", "Reden"),
        ("passed_to", "Doorbemiddeld naar"),
    )
    lines += [f"{label}: {doc[key]}" for key, label in labels if doc.get(key)]
    if doc["status"] == "geaccepteerd":
        confirmed = "ja" if doc.get("competence_confirmed") else "nee"
        lines.append(f"Uitvoering door bekwame medewerker: {confirmed}")
    lines += [
        f"Team: {doc['team_name']} ({doc['team_address']})",
        f"Vastgelegd: {doc['answered_at']}",
        "",
        doc["signed_by"]["statement_nl"],
    ]
    return "\n".join(lines) + "\n"


def _html(text: str) -> str:
    from html import escape

    return f'<!DOCTYPE html><html lang="nl"><body><pre>{escape(text)}</pre></body></html>\n'


async def seal_for_practice(
    svc: Services, row: Mapping[str, Any], stored: dict[str, Any]
) -> SealedMessage | None:
    """The answer sealed to the practice's pinned key and signed by the gateway, or None
    when the practice has no usable key (logged; the notice and the API still serve it)."""
    reference = row["reference"]
    doc = answer_document(reference, stored, svc.definition.version)
    return await seal_document(
        svc, row, doc, answer_text(doc), f"Reactie op uitvoeringsverzoek {reference}"
    )


async def seal_document(
    svc: Services, row: Mapping[str, Any], doc: dict[str, Any], text: str, subject: str
) -> SealedMessage | None:
    """A document for the practice's record (the answer, the team's end of an order) sealed
    to the practice's pinned key and signed by the gateway; None when the practice has no
    usable key (logged). ``subject`` names the reference only: it travels outside."""
    reference = row["reference"]

    def lookup(db: sqlite_utils.Database) -> tuple[practicekeys.PracticeKey | None, str]:
        return practicekeys.active_key(db, row["practice_org_id"]), get_meta(
            db, "gateway_fingerprint"
        ) or ""

    key, gateway_fpr = await svc.store.read(lookup)
    if key is None or not gateway_fpr:
        log.info("request %s: no practice key pinned; copy not sealed", reference)
        return None
    try:
        await practicekeys.check(svc, key, svc.now())
    except RecipientKeyError as exc:
        log.warning("request %s: practice key unusable (%s)", reference, exc.code)
        return None
    return await seal_by_gateway(
        svc, reference, doc, text, gateway_fpr, [key.fingerprint], key.email, subject
    )


async def seal_by_gateway(
    svc: Services,
    reference: str,
    doc: dict[str, Any],
    text: str,
    gateway_fpr: str,
    recipients: list[Fingerprint],
    address: str,
    subject: str,
) -> SealedMessage:
    """``doc`` (JSON) and ``text`` as one PGP/MIME message signed by the gateway's own key
    and encrypted to ``recipients`` (the practice's key, a team's members): the one way the
    gateway writes in its own name. ``subject`` names the reference only: it travels outside."""
    return await svc.keyring.seal(
        SealInput(
            reference=reference,
            text=text,
            html=_html(text),
            json=json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8"),
            signer_public_key=await svc.keyring.export_public(Fingerprint(gateway_fpr)),
        ),
        signer=Fingerprint(gateway_fpr),
        passphrase=None,  # the gateway's key has none; its homedir is the protection
        recipients=recipients,
        envelope=Envelope(
            sender=svc.settings.gateway.from_address,
            recipient=address,
            subject=subject,
            extra_headers=(("X-Securemail-Reference", reference),),
        ),
    )


def queue(
    db: sqlite_utils.Database,
    svc: Services,
    actor: Actor,
    row: Mapping[str, Any],
    sealed: SealedMessage,
    now: str,
    *,
    what: str = "answer",
) -> None:
    """Queue the sealed copy in the caller's write (the answer's own transaction, or the
    order end's: ``what`` names which in the audit detail). It carries the request's own
    data categories (a care request with reserved lines: care_request,execution_request)."""
    practice = directory.org_by_id(db, row["practice_org_id"])
    db.table("answer_copies").insert(
        {
            "message_id": sealed.message_id,
            "reference": row["reference"],
            "practice_org_id": practice.id,
            "recipient_fingerprint": str(sealed.recipient_fingerprints[0]),
            "queued_at": now,
        }
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "request.answer_copy",
            patient_id=row["patient_bsn"],
            object_type="request",
            object_id=row["reference"],
            data_categories=row["data_categories"],
            sender_org=actor.org_code,
            recipient_org=practice.code,
            check_consent="exempt:answer_to_principal",
            outcome_detail=f"{what}; sealed_to={str(sealed.recipient_fingerprints[0])[-16:]}",
        ),
    )
    outbox.enqueue(
        db,
        sealed,
        actor=actor,
        now=svc.now().timestamp(),
        patient_id=row["patient_bsn"],
        sender_org=actor.org_code,
        recipient_org=practice.code,
        data_categories=row["data_categories"],
    )


def is_answer_copy(db: sqlite_utils.Database, message_id: str) -> bool:
    """True for an answer going home to its practice (never gated by consent)."""
    return (
        db.execute("SELECT 1 FROM answer_copies WHERE message_id = ?", [message_id]).fetchone()
        is not None
    )


def answer_for_practice(db: sqlite_utils.Database, actor: Actor, reference: str) -> dict[str, Any]:
    """GET /api/requests/{ref}: the status and the answer's content, for the request's own
    practice only (hidden as not found otherwise); audited request.view. Run in a write."""
    row = permitted_row(db, actor, reference, "request.view", "answer")
    out = status(db, reference)
    answer = answer_of(db, row)
    if answer is not None:
        out["answer"] = answer_document(reference, answer, str(answer.get("form_version", "")))
    else:
        out["answer"] = None
    audit_read(db, actor, row, "request.view", "answer")
    return out


__all__ = [
    "MIGRATIONS", "answer_document", "answer_for_practice", "answer_text", "is_answer_copy",
    "queue", "seal_document", "seal_for_practice",
]  # fmt: skip
