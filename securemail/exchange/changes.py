"""Changes, extensions and withdrawals: the chain of requests that supersede one another.

A change (``wijziging``), an extension (``verlenging``) or a withdrawal (``intrekking``)
is a new signed request whose ``supersedes`` names an earlier one. Invariants:

- the earlier request belongs to the same practice, is about the same patient and sits
  with the same team (where it is now, after any passing on), and is still live (open or
  answered); anything else is a field error on ``supersedes``, the same one whether the
  reference does not exist or belongs to another practice (no leak);
- a request is superseded at most once, so the chain is a line, never a tree;
- the earlier request is marked (``superseded``, or ``withdrawn`` for a withdrawal) in the
  transaction that queues the new one, with a ``request.withdraw`` audit row for a
  withdrawal; both parties' request pages show the whole chain.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.form import kinds
from securemail.form import request as forms

LIVE_STATES = ("open", "answered")


def _error(code: str, nl: str, en: str) -> forms.FormInvalidError:
    return forms.FormInvalidError([forms.FieldError("supersedes", code, nl, en)])


def require_supersedable(
    db: sqlite_utils.Database, practice_org_id: int, req: kinds.RequestDocument, team_id: int
) -> None:
    """Raise FormInvalidError unless ``req.supersedes`` names a live earlier request of this
    practice, for the same patient and the same team. No-op for a new request."""
    if req.kind == "nieuw" or not req.supersedes:
        return
    rows = list(db.table("requests").rows_where("reference = ?", [req.supersedes]))
    row = rows[0] if rows else None
    if row is None or row["practice_org_id"] != practice_org_id:
        raise _error(
            "supersedes.unknown",
            "Uw praktijk heeft geen verzoek met dit kenmerk.",
            "no request of this practice has that reference",
        )
    if row["patient_bsn"] != req.patient_bsn:
        raise _error(
            "supersedes.other_patient",
            "Het eerdere verzoek gaat over een andere patiënt.",
            "the earlier request is about another patient",
        )
    if row["team_id"] != team_id:
        raise _error(
            "supersedes.other_team",
            "Het eerdere verzoek ligt bij een ander wijkteam; stuur de wijziging naar dat team.",
            "the earlier request is with another team",
        )
    if row["state"] not in LIVE_STATES:
        raise _error(
            "supersedes.closed",
            "Het eerdere verzoek is al vervangen of ingetrokken.",
            "the earlier request was already superseded or withdrawn",
        )


def apply(
    db: sqlite_utils.Database,
    actor: Actor,
    req: kinds.RequestDocument,
    *,
    now: str,
    source_id: str,
    audit_common: dict[str, Any],
) -> None:
    """Mark the earlier request superseded or withdrawn (inside the sending transaction)."""
    if req.kind == "nieuw" or not req.supersedes:
        return
    state = "withdrawn" if req.kind == "intrekking" else "superseded"
    db.execute(
        "UPDATE requests SET state = ?, superseded_by = ?, updated_at = ? WHERE reference = ?",
        [state, req.reference, now, req.supersedes],
    )
    if state == "withdrawn":
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "request.withdraw",
                **{**audit_common, "object_id": req.supersedes},
                outcome_detail=f"by={req.reference}",
            ),
        )


def chain(db: sqlite_utils.Database, reference: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """The requests before and after this one in its chain, oldest first (no patient data)."""
    by_ref: dict[str, dict[str, Any]] = {}

    def get(ref: str) -> dict[str, Any] | None:
        if ref not in by_ref:
            row = db.execute(
                "SELECT reference, kind, state, supersedes, superseded_by, created_at "
                "FROM requests WHERE reference = ?",
                [ref],
            ).fetchone()
            if row is None:
                return None
            keys = ("reference", "kind", "state", "supersedes", "superseded_by", "created_at")
            by_ref[ref] = dict(zip(keys, row, strict=True))
        return by_ref[ref]

    start = get(reference)
    if start is None:
        return []
    before: list[dict[str, Any]] = []
    cur = start
    while cur["supersedes"] and len(before) < limit:
        prev = get(cur["supersedes"])
        if prev is None:
            break
        before.append(prev)
        cur = prev
    after: list[dict[str, Any]] = []
    cur = start
    while cur["superseded_by"] and len(after) < limit:
        nxt = get(cur["superseded_by"])
        if nxt is None:
            break
        after.append(nxt)
        cur = nxt
    if not before and not after:
        return []
    return [*reversed(before), start, *after]
