"""The team ends an order it accepted (care ended, patient moved or died, competence gone,
other), with a reason that reaches the GP.

Invariants:
- only a nurse of the team the request is with, which accepted it (``order.end``; another
  team's nurse sees not-found, audited ``access.denied``), only while the order is
  accepted and not withdrawn, superseded, expired or already ended (``OrderNotEndableError``,
  409); the reason is one of ``orders.END_REASONS``, the free text optional (required for
  ``anders``) and bounded: a field error before anything is written;
- the end, its ``order.end_by_team`` audit row, the sealed copy for the practice and the
  plain notice to the practice commit in one transaction, and ``order_ends`` has the
  reference as primary key, so two ends cannot both land (the second is a 409);
- the reason and free text are content: sealed at rest in ``order_ends.content`` and
  emptied by the content purge (securemail.ops.retention); the fact and moment of the end
  are metadata. The notice names the reference and the team only ("overleden" is health
  data); the reason goes to the practice sealed to its pinned key (as the answer copy,
  securemail.exchange.answer_copy) and shows on the request page after login;
- it reduces risk (the GP learns that care stopped): never gated by the consent register,
  like the answer going home (``answer_copies``: the delivery worker lets it through).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from securemail import contentbox
from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import ConflictError
from securemail.exchange import answer_copy, orders
from securemail.exchange.view import RequestRow, permitted_row
from securemail.form import request as forms
from securemail.message import notify
from securemail.openpgp.keyring import SealedMessage
from securemail.region import directory
from securemail.services import Services

log = logging.getLogger("securemail.orders")

#: The free text's bound (characters, after folding whitespace).
TEXT_MAX = 1000
ACCEPTED = orders.ACCEPTED
OTHER = "anders"


class OrderNotEndableError(ConflictError):
    """Only an accepted order that still runs can be ended by its team, once."""

    code = "order.not_endable"
    nl = (
        "Deze opdracht kan niet (meer) worden beëindigd: alleen een geaccepteerde opdracht die "
        "nog loopt kan het team beëindigen, en maar één keer (hij is al beëindigd, verlopen, "
        "vervangen of ingetrokken)."
    )


@dataclass(frozen=True, slots=True)
class EndInput:
    """The nurse's choice: a reason code of ``orders.END_REASONS`` and optional text."""

    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class EndResult:
    reference: str
    ended_at: str
    copy_sealed: bool  # False: the practice has no usable pinned key (the page still shows it)


def _field_error(field: str, code: str, nl: str) -> forms.FormInvalidError:
    return forms.FormInvalidError([forms.FieldError(field, code, nl, code)])


def parse_end(data: dict[str, Any]) -> EndInput:
    """The reason and text from a post, or FormInvalidError naming the field (Dutch)."""
    reason = str(data.get("reason", "") or "").strip()
    text = " ".join(str(data.get("text", "") or "").split())
    if reason not in orders.END_REASONS:
        raise _field_error("reason", "order_end.reason", "Kies de reden van de beëindiging.")
    if len(text) > TEXT_MAX:
        raise _field_error(
            "text",
            "order_end.text_too_long",
            f"De toelichting is te lang (maximaal {TEXT_MAX} tekens).",
        )
    if reason == OTHER and not text:
        raise _field_error("text", "order_end.text_required", "Licht de reden toe bij 'Anders'.")
    return EndInput(reason, text)


def _endable(db: sqlite_utils.Database, row: Mapping[str, Any]) -> None:
    """Raise OrderNotEndableError unless the order runs, accepted by its current team."""
    state = orders.order_state(db, row["reference"])
    runs = (
        row["state"] == "answered"
        and row["answer_status"] == ACCEPTED
        and row["kind"] != "intrekking"
        and state is not None
        and not state["expired"]
        and not state["ended"]
    )
    if not runs:
        raise OrderNotEndableError("order is not accepted and running", reference=row["reference"])


def can_end(db: sqlite_utils.Database, actor: Actor, row: Mapping[str, Any]) -> bool:
    """For the page: does actor see the form (a nurse of the request's team, endable)?"""
    if actor.role != "nurse" or row["team_id"] not in actor.team_ids:
        return False
    try:
        _endable(db, row)
    except OrderNotEndableError:
        return False
    return True


def document(
    reference: str, end: EndInput, team: directory.Team, nurse: str, at: str
) -> dict[str, Any]:
    """The JSON the practice's system reads: the end, its reason, who recorded it."""
    return {
        "document": "uitvoeringsverzoek.beeindiging",
        "reference": reference,
        "reason": end.reason,
        "reason_nl": orders.END_REASONS[end.reason],
        "text": end.text,
        "team_name": team.name,
        "team_address": team.address,
        "ended_by": nurse,
        "ended_at": at,
        "signed_by": {
            "kind": "gateway_on_behalf_of_team",
            "team_address": team.address,
            "statement_nl": answer_copy.SIGNED_BY_NL.format(team=team.name, nurse=nurse),
        },
    }


def text_of(doc: dict[str, Any]) -> str:
    """The end as Dutch text (the sealed copy's text part)."""
    lines = [
        f"Uitvoeringsverzoek {doc['reference']} is beëindigd door het wijkteam",
        "",
        f"Reden: {doc['reason_nl']}",
    ]
    if doc["text"]:
        lines.append(f"Toelichting: {doc['text']}")
    lines += [
        f"Team: {doc['team_name']} ({doc['team_address']})",
        f"Vastgelegd: {doc['ended_at']} door {doc['ended_by']}",
        "",
        doc["signed_by"]["statement_nl"],
    ]
    return "\n".join(lines) + "\n"


async def end_order(svc: Services, actor: Actor, reference: str, data: dict[str, Any]) -> EndResult:
    """Validate and record the team's end of an accepted order. Raises FormInvalidError,
    OrderNotEndableError (409), NotFoundError (also when hidden: another team's order)."""
    end = parse_end(data)

    def first_check(db: sqlite_utils.Database) -> tuple[RequestRow, directory.Team]:
        row = permitted_row(db, actor, reference, "order.end", "order.end")
        return row, directory.team_by_id(db, row["team_id"])

    row, team = await svc.store.write(first_check)  # the refusal's audit row commits
    await svc.store.read(lambda db: _endable(db, row))
    now = svc.now_iso()
    doc = document(reference, end, team, actor.name, now)
    subject = f"Einde uitvoeringsverzoek {reference}"  # ASCII: the envelope checks it
    copy = await answer_copy.seal_document(svc, row, doc, text_of(doc), subject)

    def commit(db: sqlite_utils.Database) -> None:
        current = permitted_row(db, actor, reference, "order.end", "order.end")
        if current["team_id"] != row["team_id"]:
            raise OrderNotEndableError("the order moved to another team", reference=reference)
        _endable(db, current)  # a concurrent end, withdrawal or expiry since the check
        _write(db, svc, actor, current, end, now, copy)

    await svc.store.write(commit)
    log.info("request %s: order ended by its team", reference)
    return EndResult(reference, now, copy is not None)


def _write(
    db: sqlite_utils.Database,
    svc: Services,
    actor: Actor,
    row: RequestRow,
    end: EndInput,
    now: str,
    copy: SealedMessage | None,
) -> None:
    reference = row["reference"]
    content = json.dumps({"reason": end.reason, "text": end.text}, ensure_ascii=False)
    db.table("order_ends").insert(
        {
            "reference": reference,
            "team_id": row["team_id"],
            "ended_by_user": actor.user_id,
            "ended_at": now,
            "content": contentbox.seal(db, "order_ends", "content", reference, content),
        }
    )
    team = directory.team_by_id(db, row["team_id"])
    practice = directory.org_by_id(db, row["practice_org_id"])
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "order.end_by_team",
            patient_id=row["patient_bsn"],
            object_type="request",
            object_id=reference,
            data_categories=row["data_categories"],
            sender_org=actor.org_code,
            recipient_org=practice.code,
            check_authz="permit:nurse-of-team",
            check_consent="exempt:order_end_to_principal",
            outcome_detail=f"sealed_copy={'yes' if copy else 'no'}",
        ),
    )
    if copy is not None:
        answer_copy.queue(db, svc, actor, row, copy, now, what="order_end")
    if practice.notify_address:
        notice = notify.notice_order_ended(
            reference, practice.notify_address, team.name, svc.settings
        )
        outbox.enqueue(
            db, notice, actor=actor, now=svc.now().timestamp(), sender_org=actor.org_code
        )


__all__ = [
    "EndInput", "EndResult", "OrderNotEndableError", "TEXT_MAX", "can_end", "document",
    "end_order", "parse_end", "text_of",
]  # fmt: skip
