"""Drafts: a request form saved half-way, so a practice's work survives a session timeout.

A draft is the form's values as the person typed them (unvalidated, incomplete), kept for the
practice until it is sent, deleted, or purged. Invariants:

- the values are patient content: sealed at rest (``contentbox.SEALED_COLUMNS``
  ``("drafts", "form_values")``, keyed by the draft's random id), never in a URL, log or
  plaintext column; the id is random (``secrets``), so it says nothing and cannot be guessed;
- a draft belongs to one practice (``org_id``): every read and change asks ``access.require``
  with the practice as owner, and a draft of another practice answers as "not found";
- every save, open and delete is audited (``draft.save``, ``draft.view``, ``draft.delete``;
  the draft id as object, never its content);
- a practice keeps at most ``MAX_PER_PRACTICE`` drafts (work never grows with what a caller
  sends); the retention purge deletes a draft ``[retention] draft_days`` after its last save.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox
from securemail.access import Actor, Resource, org_of, require
from securemail.audit import trail as audit
from securemail.errors import ConflictError, NotFoundError

MIGRATIONS = Migrations("securemail.drafts")
ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")
#: Drafts one practice may keep at once; the next save is refused (delete or send one first).
MAX_PER_PRACTICE = 200
#: Fields a draft may hold and their size, whatever a post sends.
MAX_FIELDS = 400
MAX_VALUE = 10_000


class TooManyDraftsError(ConflictError):
    code = "draft.too_many"
    nl = "Uw praktijk heeft al {limit} concepten. Verstuur of verwijder eerst een concept."


@MIGRATIONS(name="0001_drafts")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE drafts (
            id INTEGER PRIMARY KEY,
            draft_id TEXT NOT NULL UNIQUE,
            org_id INTEGER NOT NULL,
            created_by INTEGER NOT NULL,
            saved_by INTEGER NOT NULL,
            form_values TEXT NOT NULL,  -- sealed JSON of the form's flat values
            created_at TEXT NOT NULL,
            saved_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX drafts_org ON drafts (org_id, saved_at)")


@dataclass(frozen=True, slots=True)
class DraftRow:
    """A draft in the practice's list: who saved it when; the content only when opened."""

    draft_id: str
    saved_at: str
    saved_by: str


def _resource(org_id: int | None, draft_id: str) -> Resource:
    return Resource("draft", org_id=org_id, ref=draft_id)


def _audit(
    db: sqlite_utils.Database, actor: Actor, code: str, draft_id: str, detail: str = ""
) -> None:
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            code,
            object_type="draft",
            object_id=draft_id,
            data_categories="draft",
            outcome_detail=detail,
        ),
    )


def _bounded(values: dict[str, str]) -> dict[str, str]:
    return {
        str(k)[:200]: str(v)[:MAX_VALUE]
        for k, v in list(values.items())[:MAX_FIELDS]
        if str(v) != ""
    }


def _row(db: sqlite_utils.Database, actor: Actor, draft_id: str, action: str) -> dict[str, Any]:
    rows = (
        list(db["drafts"].rows_where("draft_id = ?", [draft_id]))
        if ID_RE.fullmatch(draft_id)
        else []
    )
    row = rows[0] if rows else None
    require(actor, action, _resource(row["org_id"] if row else -1, draft_id), hide=True)
    if row is None:
        raise NotFoundError("draft not found")
    return row


def save(
    db: sqlite_utils.Database, actor: Actor, values: dict[str, str], *, now: str, draft_id: str = ""
) -> str:
    """Store (or overwrite) a draft of the actor's practice; returns its id."""
    org = org_of(actor)
    require(actor, "draft.save", _resource(org, draft_id))
    text = json.dumps(_bounded(values), ensure_ascii=False, sort_keys=True)
    if draft_id:
        _row(db, actor, draft_id, "draft.save")
        db.execute(
            "UPDATE drafts SET form_values = ?, saved_by = ?, saved_at = ? WHERE draft_id = ?",
            [contentbox.seal(db, "drafts", "form_values", draft_id, text), actor.user_id,
             now, draft_id],
        )  # fmt: skip
    else:
        (count,) = db.execute("SELECT COUNT(*) FROM drafts WHERE org_id = ?", [org]).fetchone()
        if count >= MAX_PER_PRACTICE:
            raise TooManyDraftsError(f"practice has {count} drafts", limit=MAX_PER_PRACTICE)
        draft_id = secrets.token_urlsafe(16)
        db.table("drafts").insert(
            {
                "draft_id": draft_id,
                "org_id": org,
                "created_by": actor.user_id,
                "saved_by": actor.user_id,
                "form_values": contentbox.seal(db, "drafts", "form_values", draft_id, text),
                "created_at": now,
                "saved_at": now,
            }
        )
    _audit(db, actor, "draft.save", draft_id)
    return draft_id


def open_draft(db: sqlite_utils.Database, actor: Actor, draft_id: str) -> dict[str, str]:
    """The draft's form values (audited ``draft.view``); NotFoundError for another practice's."""
    row = _row(db, actor, draft_id, "draft.view")
    text = contentbox.open_value(db, "drafts", "form_values", draft_id, row["form_values"])
    _audit(db, actor, "draft.view", draft_id)
    loaded = json.loads(text) if text else {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def delete(db: sqlite_utils.Database, actor: Actor, draft_id: str) -> None:
    """Remove a draft (sent, or thrown away); audited ``draft.delete``."""
    row = _row(db, actor, draft_id, "draft.save")
    db.execute("DELETE FROM drafts WHERE draft_id = ?", [draft_id])
    # who prepared it, when someone else (a practice assistant) did: both are in the trail
    by = db.execute("SELECT username FROM users WHERE id = ?", [row["saved_by"]]).fetchone()
    detail = f"prepared_by={by[0]}" if by and row["saved_by"] != actor.user_id else ""
    _audit(db, actor, "draft.delete", draft_id, detail)


def practice_drafts(db: sqlite_utils.Database, actor: Actor, *, limit: int = 50) -> list[DraftRow]:
    """The practice's drafts, last saved first (no content: nothing to audit as a view)."""
    org = org_of(actor)
    require(actor, "draft.view", _resource(org, ""))
    rows = db.execute(
        "SELECT d.draft_id, d.saved_at, coalesce(u.name, u.username, '') FROM drafts d "
        "LEFT JOIN users u ON u.id = d.saved_by WHERE d.org_id = ? "
        "ORDER BY d.saved_at DESC LIMIT ?",
        [org, limit],
    ).fetchall()
    return [DraftRow(r[0], r[1], r[2]) for r in rows]
