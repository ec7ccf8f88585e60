"""Work lists: the queries behind the GP's and the nurse's lists (web/worklist.py is the
page): the requests with the patient's name, the practice or team,
urgency, state and deadline, what is due first on top; a search; pages of PAGE_SIZE.

Invariants:

- scoping is the access policy's (``request.list``) on the same columns as
  ``exchange.view.list_requests``: a GP sees her practice's requests, a nurse those with one of
  her teams now;
- a patient's name leaves the sealed document only for a row that is shown, and every shown
  row is audited as ``request.list`` (the patient, the reference) in the same transaction;
- work is bounded by constants, never by an input: a page is PAGE_SIZE rows, a page number is
  clamped to the last page, a page of the whole list reads its offset and size on indexes
  (the open requests sorted apart, the rest in index order), a name search looks up at most
  ``name_index.MAX_WORDS`` keyed tokens and opens only the page's candidates (its work
  grows with the matches in scope, not with the practice);
- the search text arrives in a POST body and is never written to a URL, a log or the audit
  trail (a reference or BSN search is recorded through the rows it shows).
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from securemail import contentbox
from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.exchange import name_index
from securemail.exchange import view as exchange_view
from securemail.region import directory

PAGE_SIZE = 25
MAX_QUERY = 100
#: any kind's reference: UVZ- (execution request), AWV- (care request)
REFERENCE_RE = re.compile(r"(?:UVZ|AWV)-[0-9]{4}-[0-9]{6}")
BSN_RE = re.compile(r"[0-9]{8,9}")

_COLUMNS = (
    "r.id, r.reference, r.kind, r.urgency, r.state, r.created_at, r.answer_due, r.overdue_at, "
    "r.supersedes, r.answer_status, r.patient_bsn, r.document, r.content_purged_at, "
    "r.practice_org_id, o.name AS practice_name, t.name AS team_name, t.address AS team_address, "
    # the team's end of an accepted order (a fact, no reason: that is content)
    "(SELECT e.ended_at FROM order_ends e WHERE e.reference = r.reference) AS ended_at, "
    "(SELECT o2.status FROM outbox o2 WHERE o2.reference = r.reference AND o2.kind = 'request' "
    " ORDER BY o2.id DESC LIMIT 1) AS delivery"
)
_FROM = (
    "FROM requests r JOIN teams t ON t.id = r.team_id "
    "JOIN organisations o ON o.id = r.practice_org_id"
)
#: What is due first: open requests by deadline (those without one yet after them), then the
#: rest newest first. julianday() compares deadlines across a summer-time change correctly.
#: Every key is in the worklist indexes (scope, state, answer_due; the rowid), so a page's ids
#: are sorted on narrow index entries; only the page's rows are then read in full (a row
#: carries its sealed document, and the delivery column is a subquery per row).
_ORDER = (
    "ORDER BY (r.state = 'open') DESC, (r.answer_due = '') ASC, "
    "CASE WHEN r.state = 'open' THEN julianday(r.answer_due) END ASC, r.id DESC"
)
#: The same order within the open requests, and within the others (the two walks of a page).
_OPEN_ORDER = "ORDER BY (answer_due = '') ASC, julianday(answer_due) ASC, id DESC"
_CLOSED_ORDER = "ORDER BY (answer_due = '') ASC, id DESC"


@dataclass(frozen=True, slots=True)
class WorkList:
    rows: list[dict[str, Any]]
    page: int
    pages: int
    total: int
    query: str = ""
    kind_of_search: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Scope:
    """The requests an actor may list: ``column`` (of requests) is one of ``values``."""

    column: str
    values: tuple[int, ...]

    def where(self, alias: str = "r.") -> tuple[str, list[Any]]:
        """The WHERE clause (column of alias) and its parameters."""
        marks = ",".join("?" for _ in self.values)
        return f"{alias}{self.column} IN ({marks})", list(self.values)


def _scope(actor: Actor) -> Scope | None:
    """The scope of actor's requests, or None for a role with no work list."""
    if actor.role == "gp":
        require(actor, "request.list", Resource("request", org_id=actor.org_id))
        return Scope("practice_org_id", (int(actor.org_id or 0),))
    if actor.role == "nurse":
        if not actor.team_ids:
            return None
        require(actor, "request.list", Resource("request", team_ids=actor.team_ids))
        return Scope("team_id", tuple(sorted(actor.team_ids)))
    require(actor, "request.list", Resource("request"))
    return None


def _rows(db: sqlite_utils.Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def page_ids_sql(where: str) -> str:
    """The ids of one page in the work list's order (WHERE ``where``; LIMIT, OFFSET ?): for a
    search by reference or BSN, whose matches are few."""
    return f"SELECT r.id FROM requests r WHERE {where} {_ORDER} LIMIT ? OFFSET ?"  # noqa: S608


def open_walk_sql(where: str) -> str:
    """The open requests of a scope in the list's order (LIMIT, OFFSET ?): sorted apart, they
    are few (bounded by what is open, not by the practice's history)."""
    return (
        f"SELECT id FROM requests WHERE {where} AND state = 'open' {_OPEN_ORDER} LIMIT ? OFFSET ?"  # noqa: S608
    )


def closed_walk_sql(column: str) -> str:
    """The other requests of one practice or team in the list's order, read off the partial
    index of migration 0009 (no sort: a page costs its offset and size, not the practice)."""
    return (
        f"SELECT (answer_due = '') AS undue, id FROM requests "  # noqa: S608 (fixed column)
        f"WHERE {column} = ? AND state <> 'open' {_CLOSED_ORDER} LIMIT ? OFFSET ?"
    )


def _closed_ids(db: sqlite_utils.Database, scope: Scope, limit: int, offset: int) -> list[int]:
    """limit ids of the closed walk from offset. Several teams: one index walk per team,
    merged lazily in the same order (reads offset + limit entries, as one walk would)."""
    sql = closed_walk_sql(scope.column)
    if len(scope.values) == 1:
        return [int(r[1]) for r in db.execute(sql, [scope.values[0], limit, offset])]
    walks = [db.execute(sql, [v, offset + limit, 0]) for v in scope.values]
    merged = heapq.merge(*walks, key=lambda r: (int(r[0]), -int(r[1])))
    return [int(r[1]) for r in itertools.islice(merged, offset, offset + limit)]


def _page_ids(
    db: sqlite_utils.Database, scope: Scope, limit: int, offset: int, open_count: int
) -> list[int]:
    """One page of the whole list: the open requests first, then the closed walk from where
    the open ones end (the page may straddle the two)."""
    ids: list[int] = []
    if offset < open_count:
        where, params = scope.where(alias="")
        ids = [int(x[0]) for x in db.execute(open_walk_sql(where), [*params, limit, offset])]
    if len(ids) < limit:
        ids += _closed_ids(db, scope, limit - len(ids), max(0, offset - open_count))
    return ids


def _rows_by_id(
    db: sqlite_utils.Database, ids: list[int], *, columns: str = _COLUMNS, joined: bool = True
) -> list[dict[str, Any]]:
    """The rows of ids (a page's), in the order of ids."""
    if not ids:
        return []
    marks = ",".join("?" for _ in ids)
    source = _FROM if joined else "FROM requests r"
    found = _rows(db, f"SELECT {columns} {source} WHERE r.id IN ({marks})", ids)
    by_id = {int(r["id"]): r for r in found}
    return [by_id[i] for i in ids if i in by_id]


def patient_name(db: sqlite_utils.Database, row: dict[str, Any]) -> str:
    """The patient's name from the sealed document; '' once purged or unreadable."""
    if row["content_purged_at"] or not row["document"]:
        return ""
    try:
        text = contentbox.open_value(db, "requests", "document", row["reference"], row["document"])
        return str(json.loads(text).get("patient", {}).get("name", ""))
    except (contentbox.ContentUnreadableError, ValueError):
        return ""


def classify(query: str) -> str:
    """'reference', 'bsn', 'name' or '' (nothing to search for)."""
    q = query.strip()
    if not q:
        return ""
    if REFERENCE_RE.fullmatch(q.upper()):
        return "reference"
    if BSN_RE.fullmatch(q.replace(" ", "").replace(".", "")):
        return "bsn"
    return "name"


def work_list(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    query: str = "",
    page: int = 1,
    source_id: str = "gateway-1",
    page_size: int = PAGE_SIZE,
) -> WorkList:
    """One page of actor's work list (a search when query is given); audited per shown row.
    Must run in a write: the audit rows go in the same transaction."""
    scope = _scope(actor)
    query = query.strip()[:MAX_QUERY]
    if scope is None:
        return WorkList([], 1, 1, 0, query)
    kind = classify(query)
    if kind == "name":
        return _name_search(db, actor, scope, query, page, source_id, page_size)
    if not kind:
        return _whole_list(db, actor, scope, page, source_id, page_size)
    where, params = scope.where()
    if kind == "reference":
        where, params = f"{where} AND r.reference = ?", [*params, query.upper()]
    else:
        digits = query.replace(" ", "").replace(".", "").zfill(9)
        where, params = f"{where} AND r.patient_bsn = ?", [*params, digits]
    total = int(db.execute(f"SELECT COUNT(*) FROM requests r WHERE {where}", params).fetchone()[0])  # noqa: S608
    pages = max(1, -(-total // page_size))
    page = min(max(page, 1), pages)
    offset = (page - 1) * page_size
    ids = [int(x[0]) for x in db.execute(page_ids_sql(where), [*params, page_size, offset])]
    rows = _rows_by_id(db, ids)
    shown = _finish(db, actor, rows, source_id, searched=True)
    return WorkList(shown, page, pages, total, query, kind_of_search=kind)


def _whole_list(
    db: sqlite_utils.Database,
    actor: Actor,
    scope: Scope,
    page: int,
    source_id: str,
    page_size: int,
) -> WorkList:
    """A page of the whole list; the counts on the worklist index (0008), the ids from the
    two walks (open, then the rest), only the page's rows read in full."""
    where, params = scope.where(alias="")
    total = int(db.execute(f"SELECT COUNT(*) FROM requests WHERE {where}", params).fetchone()[0])  # noqa: S608
    open_count = int(
        db.execute(
            f"SELECT COUNT(*) FROM requests WHERE {where} AND state = 'open'",  # noqa: S608
            params,
        ).fetchone()[0]
    )
    pages = max(1, -(-total // page_size))
    page = min(max(page, 1), pages)
    ids = _page_ids(db, scope, page_size, (page - 1) * page_size, open_count)
    shown = _finish(db, actor, _rows_by_id(db, ids), source_id, searched=False)
    return WorkList(shown, page, pages, total, "")


def _name_search(
    db: sqlite_utils.Database,
    actor: Actor,
    scope: Scope,
    query: str,
    page: int,
    source_id: str,
    page_size: int,
) -> WorkList:
    """The requests in scope whose patient's name has every word of query: the candidates
    from the keyed name tokens (exchange/name_index.py: work grows with the matches, not the
    practice), only the page's candidates opened to confirm and show."""
    wanted = name_index.words(query)[: name_index.MAX_WORDS]
    found = _token_candidates(db, scope, name_index.query_tokens(db, query))
    found.sort(key=_due_first)
    total = len(found)
    pages = max(1, -(-total // page_size))
    page = min(max(page, 1), pages)
    chosen = _rows_by_id(
        db, [int(r["id"]) for r in found[(page - 1) * page_size : page * page_size]]
    )
    # a token is 8 bytes of an HMAC: a collision is possible, so the name itself decides
    rows = [r for r in chosen if set(wanted) <= set(name_index.words(patient_name(db, r)))]
    shown = _finish(db, actor, rows, source_id, searched=True)
    return WorkList(shown, page, pages, total, query, kind_of_search="name")


def _token_candidates(
    db: sqlite_utils.Database, scope: Scope, tokens: list[bytes]
) -> list[dict[str, Any]]:
    """The sort keys of the requests in scope holding all tokens (none for no token)."""
    if not tokens:
        return []
    where, params = scope.where()
    marks = ",".join("?" for _ in tokens)
    # the matches of the scope's practice or team on the token index, then the scope
    # decided on the requests row as for every list
    token_scope, token_params = scope.where(alias="")
    sql = (
        "SELECT r.id, r.state, r.answer_due FROM requests r JOIN ("  # noqa: S608
        f"SELECT request_id FROM request_name_tokens WHERE token IN ({marks}) "
        f"AND {token_scope} GROUP BY request_id HAVING COUNT(DISTINCT token) = ?"
        f") m ON m.request_id = r.id WHERE {where} AND r.content_purged_at = ''"
    )
    return _rows(db, sql, [*tokens, *token_params, len(tokens), *params])


def _moment(text: str) -> datetime | None:
    """A stored deadline as an aware datetime; None for '' or an unreadable value."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def _due_first(row: dict[str, Any]) -> tuple[int, int, float, int]:
    due = _moment(row["answer_due"]) if row["state"] == "open" else None
    return (
        0 if row["state"] == "open" else 1,
        1 if not row["answer_due"] else 0,
        due.timestamp() if due else 0.0,
        -int(row["id"]),
    )


def _finish(
    db: sqlite_utils.Database,
    actor: Actor,
    rows: list[dict[str, Any]],
    source_id: str,
    *,
    searched: bool,
) -> list[dict[str, Any]]:
    """Names opened for the shown rows only, each shown row audited; no document leaves."""
    out = []
    codes: dict[int, str] = {}  # a page's rows share few practices: one lookup each
    for r in rows:
        org = int(r["practice_org_id"])
        if org not in codes:
            codes[org] = directory.org_by_id(db, org).code
        shown = {k: v for k, v in r.items() if k not in ("document", "patient_bsn")}
        shown["patient_name"] = patient_name(db, r)
        shown["overdue"] = exchange_view.is_overdue(r)
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "request.list",
                patient_id=r["patient_bsn"],
                object_type="request",
                object_id=r["reference"],
                data_categories=exchange_view.DATA_CATEGORIES,
                outcome_detail="search" if searched else "work list",
                sender_org=codes[org],
                recipient_org=r["team_address"],
                check_authz=f"permit:{actor.role}",
            ),
        )
        out.append(shown)
    return out
