"""Reading requests: one request's page (audited), the work lists and the status (no content).

Invariants: patient content leaves the database only through ``get_request`` (and, for a
follow-up's prefill, ``follow_up_source``), which asks the access policy first and writes
``request.view`` (or ``access.denied``) in the same transaction; lists and the status carry
references, states, teams and dates, never patient data. A nurse sees a request while it sits
with one of her teams (``requests.team_id``, which follows a passing on); the team it was
passed on from no longer sees it here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict, cast

import sqlite_utils

from securemail import contentbox
from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import NotFoundError, SecuremailError
from securemail.exchange import changes, orders
from securemail.openpgp.keystore import reason_nl
from securemail.region import directory

DATA_CATEGORIES = "execution_request"


class RequestRow(TypedDict):
    """One stored request, a row of ``requests`` (owned by ``securemail.exchange.send``) as
    ``request_row`` reads it. ``document`` and ``answer`` hold contentbox-sealed values:
    open them with ``document`` and ``answer_of``. tests/test_home.py holds the keys to the
    table's columns."""

    id: int
    reference: str
    kind: str  # nieuw | wijziging | intrekking
    supersedes: str
    urgency: str
    practice_org_id: int
    team_id: int  # the team it is with now (a passing on moves it)
    patient_bsn: str
    created_by: int
    signer_fingerprint: str
    recipient_fingerprints: str  # JSON list
    skipped_members: str  # JSON: [{name, fingerprint, why}]
    document: str | bytes
    message_id: str
    state: str  # open | answered | withdrawn | superseded
    answer: str
    answer_due: str
    notified: str
    created_at: str
    updated_at: str
    json_signature: bytes
    superseded_by: str
    overdue_at: str
    answered_at: str
    ask_reference: str
    signed_order: str  # the GP's RFC 3156 6.1 signed order, sealed; '' purged
    data_categories: str  # what it carries: "care_request,execution_request" (consent, audit)
    answer_status: str
    final_at: str
    content_purged_at: str


def resource(row: RequestRow) -> Resource:
    """The access-policy view of a request row: its practice and the team it is with now."""
    return Resource(
        "request",
        org_id=row["practice_org_id"],
        team_ids=frozenset({row["team_id"]}),
        ref=row["reference"],
    )


def request_row(db: sqlite_utils.Database, reference: str) -> RequestRow | None:
    rows = list(db.table("requests").rows_where("reference = ?", [reference]))
    # cast: the row's keys are the table's columns, which RequestRow lists (tests/test_home.py)
    return cast(RequestRow, rows[0]) if rows else None


def require_row(db: sqlite_utils.Database, reference: str) -> RequestRow:
    """The request row, or NotFoundError (the same answer whether absent or hidden)."""
    row = request_row(db, reference)
    if row is None:
        raise NotFoundError("request not found", reference=reference)
    return row


def is_overdue(row: Mapping[str, Any]) -> bool:
    """Marked overdue by the deadline check and still waiting for the team."""
    return bool(row.get("overdue_at")) and row.get("state") == "open"


def hops(db: sqlite_utils.Database, reference: str) -> list[dict[str, Any]]:
    """Each team the request went to, in order, with what that team did (no patient data
    beyond the team's own free-text reason)."""
    cur = db.execute(
        "SELECT h.id, h.team_id, t.name, t.address, h.sent_at, h.outcome, h.reason, "
        "h.outcome_at FROM request_hops h JOIN teams t ON t.id = h.team_id "
        "WHERE h.reference = ? ORDER BY h.id",
        [reference],
    )
    keys = ("team_id", "team_name", "team_address", "sent_at", "outcome", "reason", "outcome_at")
    out = []
    for hop_id, *values in cur.fetchall():
        hop = dict(zip(keys, values, strict=True))
        hop["reason"] = contentbox.open_value(db, "request_hops", "reason", hop_id, hop["reason"])
        out.append(hop)
    return out


def document(db: sqlite_utils.Database, row: RequestRow) -> dict[str, Any]:
    """The stored signed request (its canonical JSON) as a dict; ContentPurgedError after
    the retention purge, ContentUnreadableError when the sealed value does not open."""
    contentbox.require_content(row)
    doc: dict[str, Any] = json.loads(document_bytes(db, row))  # canonical JSON: an object
    return doc


def document_bytes(db: sqlite_utils.Database, row: RequestRow) -> bytes:
    """The canonical JSON exactly as the GP signed it (opened from its sealed column)."""
    contentbox.require_content(row)
    text = contentbox.open_value(db, "requests", "document", row["reference"], row["document"])
    return text.encode("utf-8")


def answer_of(db: sqlite_utils.Database, row: RequestRow) -> dict[str, Any] | None:
    """The team's stored answer, or None (none yet, or purged)."""
    text = contentbox.open_value(db, "requests", "answer", row["reference"], row["answer"])
    return json.loads(text) if text else None


def record_refusal(
    db: sqlite_utils.Database,
    actor: Actor,
    reference: str,
    detail: str,
    *,
    object_type: str = "request",
) -> None:
    """The access.denied row for a refused look at (or action on) a request; the refusal
    itself is raised by the caller, often hidden as not-found, so this row is its only trace."""
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "access.denied",
            outcome="refused",
            outcome_detail=detail,
            object_type=object_type,
            object_id=reference,
        ),
    )


def permitted_row(
    db: sqlite_utils.Database, actor: Actor, reference: str, action: str, asked: str = ""
) -> RequestRow:
    """The request row when the policy allows actor ``action`` on it; otherwise the refusal
    is recorded (access.denied, naming what was ``asked``) and raised hidden as not-found."""
    row = require_row(db, reference)
    try:
        require(actor, action, resource(row), hide=True)
    except SecuremailError as exc:
        record_refusal(db, actor, reference, f"{asked}: {exc.code}" if asked else exc.code)
        raise
    return row


def audit_read(
    db: sqlite_utils.Database, actor: Actor, row: RequestRow, event_code: str, detail: str
) -> None:
    """The audit row of a permitted read of a request's content by its own practice (the
    answer for the practice system, the dossier export): what the request carries, its kind's
    data categories, not a fixed one."""
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            event_code,
            patient_id=row["patient_bsn"],
            object_type="request",
            object_id=row["reference"],
            data_categories=row["data_categories"],
            sender_org=actor.org_code,
            check_authz=f"permit:{actor.role}",
            outcome_detail=detail,
        ),
    )


def follow_up_source(
    db: sqlite_utils.Database, actor: Actor, reference: str, kind: str
) -> dict[str, Any] | None:
    """The earlier request's signed document, to start its change, extension or copy
    (``kind``) from; None once its content is purged. Policy action ``request.prepare``: the
    practice's GPs and assistants, anyone else "not found" with an access.denied row. The read
    is audited as request.view naming the follow-up (an assistant's row also names her GP).
    Must run in a write (the read is recorded in the same transaction)."""
    row = permitted_row(db, actor, reference, "request.prepare", asked=f"follow_up={kind}")
    audit_read(db, actor, row, "request.view", f"follow_up={kind}")
    return None if row["content_purged_at"] else document(db, row)


def get_request(db: sqlite_utils.Database, actor: Actor, reference: str) -> dict[str, Any]:
    """The request with its content, for someone allowed to see it; audited as request.view.
    Must run in a write (the view is recorded in the same transaction)."""
    row = permitted_row(db, actor, reference, "request.view")
    team = directory.team_by_id(db, row["team_id"])
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "request.view",
            patient_id=row["patient_bsn"],
            object_type="request",
            object_id=reference,
            data_categories=row["data_categories"],
            sender_org=directory.org_by_id(db, row["practice_org_id"]).code,
            recipient_org=team.address,
            check_authz=f"permit:{actor.role}",
        ),
    )
    view = dict(row)
    view.pop("json_signature", None)
    view.pop("signed_order", None)
    view["purged"] = bool(row["content_purged_at"])
    view["document"] = None if view["purged"] else document(db, row)
    view["team"] = team
    view["delivery"] = outbox.status(db, reference)
    view["recipient_fingerprints"] = json.loads(row["recipient_fingerprints"])
    view["skipped_members"] = [
        s | {"why_nl": reason_nl(s["why"])} for s in json.loads(row["skipped_members"])
    ]
    view["answer"] = answer_of(db, row)
    view["hops"] = hops(db, reference)
    view["chain"] = changes.chain(db, reference)
    view["overdue"] = is_overdue(row)
    view["order"] = orders.order_state(db, reference)
    # the team's end of the order with its reason (content: opened in this audited view)
    view["order_end"] = orders.end_of(db, reference)
    return view


def list_requests(
    db: sqlite_utils.Database, actor: Actor, *, limit: int = 200
) -> list[dict[str, Any]]:
    """References, states and dates (no patient content) visible to actor, newest first;
    overdue ones first of all."""
    if actor.role == "gp":
        require(actor, "request.list", Resource("request", org_id=actor.org_id))
        where, params = "r.practice_org_id = ?", [actor.org_id]
    elif actor.role == "nurse":
        if not actor.team_ids:
            return []
        require(actor, "request.list", Resource("request", team_ids=actor.team_ids))
        where = f"r.team_id IN ({','.join('?' for _ in actor.team_ids)})"
        params = list(actor.team_ids)
    else:
        require(actor, "request.list", Resource("request"))
        return []
    sql = (  # only "?" placeholders are interpolated
        "SELECT r.reference, r.kind, r.urgency, r.state, r.created_at, r.answer_due, "  # noqa: S608
        "r.overdue_at, r.supersedes, r.superseded_by, "
        "r.answer_status, "
        "t.address AS team_address, t.name AS team_name, "
        "(SELECT COUNT(*) FROM request_hops h WHERE h.reference = r.reference) AS hop_count "
        f"FROM requests r JOIN teams t ON t.id = r.team_id WHERE {where} "
        "ORDER BY (r.state = 'open' AND r.overdue_at != '') DESC, r.id DESC LIMIT ?"
    )
    cur = db.execute(sql, [*params, limit])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur]
    delivery = outbox.latest_request_status(db, [r["reference"] for r in rows])
    for r in rows:
        r["delivery"] = delivery.get(r["reference"])  # the newest request message's status
        r["overdue"] = is_overdue(r)
    return rows


def status(db: sqlite_utils.Database, reference: str) -> dict[str, Any]:
    """State and delivery history of a request, without patient content (CLI, API).
    ``answer_due`` is ISO 8601 with its UTC offset (Europe/Amsterdam), or None until the
    relay took the request."""
    row = require_row(db, reference)
    team = directory.team_by_id(db, row["team_id"])
    return {
        "reference": reference,
        "kind": row["kind"],
        "urgency": row["urgency"],
        "state": row["state"],
        "team_address": team.address,
        "created_at": row["created_at"],
        "answer_due": _iso(row["answer_due"]),
        "overdue": is_overdue(row),
        "overdue_at": row["overdue_at"] or None,
        "answer_status": row["answer_status"] or None,
        "order": orders.order_state(db, reference),  # dates, reminders, verlopen
        "content_purged_at": row["content_purged_at"] or None,
        "supersedes": row["supersedes"] or None,
        "superseded_by": row["superseded_by"] or None,
        "hops": [
            {"team_address": h["team_address"], "sent_at": h["sent_at"], "outcome": h["outcome"]}
            for h in hops(db, reference)
        ],
        "recipient_fingerprints": json.loads(row["recipient_fingerprints"]),
        "signer_fingerprint": row["signer_fingerprint"],
        "skipped_members": json.loads(row["skipped_members"]),
        "delivery": outbox.status(db, reference),
    }


def _iso(text: str) -> str | None:
    """A stored deadline as full ISO 8601 (seconds included) with its offset."""
    if not text:
        return None
    return datetime.fromisoformat(text).isoformat(timespec="seconds")
