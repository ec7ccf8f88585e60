"""Retention and minimisation: the gateway is a transport, not the medical record.

What is kept how long (docs/retention.md):

- *content* (``contentbox.SEALED_COLUMNS``: the signed request, the answer, the hops'
  free-text reasons, the team's reason for ending an order, an ask's patient fields) and
  the sealed mail in the outbox are emptied ``[retention] content_days`` after the
  request's *final outcome*: answered (``answered_at``); withdrawn or superseded (when the
  newer request was made); a withdrawal (``intrekking``) once its own message was
  delivered; a request whose current message failed, was stopped or cancelled (the outbox
  row's final time). An open request (waiting for delivery or for the team) is never
  final, whatever its age. An ask is final when fulfilled. A team's end reason given after
  its request's content went is emptied ``content_days`` after the end.
- *metadata* (request, hop, outbox and ask rows: references, states, times, teams, the
  BSN as patient reference) is deleted ``[retention] metadata_days`` after the final
  outcome; notices and ended sessions likewise by their own end time.
- *drafts* (``securemail.exchange.drafts``: a practice's unsent form, sealed) are deleted
  ``[retention] draft_days`` after their last save.
- *audit rows* after ``[audit] retention_years`` (``audit_retention``, unchanged).
- *consent records* once nothing relies on them: ``[audit] retention_years`` after their
  end and no surviving audit row naming them (``securemail.consent.retention``).

Invariants: ``purge`` changes nothing that is not due; everything it empties or deletes,
the ``retention.purge`` audit row with the counts (no patient data) and the audit purge
commit in one transaction, with ``secure_delete`` on so freed pages are zeroed; the WAL is
then checkpointed and truncated so it keeps no older copy. A run with nothing due writes
nothing (no audit row). Purged rows still answer for their metadata; acting on their
content refuses with ``contentbox.ContentPurgedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox
from securemail.access import SYSTEM, Actor
from securemail.audit import integrity as audit_integrity
from securemail.audit import retention as audit_retention
from securemail.audit import trail as audit
from securemail.config import Settings
from securemail.consent import retention as consent_retention
from securemail.delivery import outbox
from securemail.store import Store

log = logging.getLogger("securemail.retention")

MIGRATIONS = Migrations("securemail.retention")

#: Attempts to truncate the WAL after a purge while readers finish their snapshots.
CHECKPOINT_TRIES = 10

#: Outbox states after which a row's bytes are never sent again (unless an admin retries a
#: failed or stopped one, which a purged row refuses).
OUTBOX_DONE = outbox.DONE


# -- schema -------------------------------------------------------------------------------------
@MIGRATIONS(name="0001_content_sealed")
def _m1(db: sqlite_utils.Database) -> None:
    """Seal every existing plaintext content value (one transaction), keep the answer's status
    in a column of its own (lists read it without opening the content), mark purges, and let
    the outbox empty a finished message's bytes (and nothing else). secure_delete zeroes the
    plaintext cells the updates free; Store.migrate then truncates the WAL."""
    db.execute("PRAGMA secure_delete = ON")
    for column in (
        "answer_status TEXT NOT NULL DEFAULT ''",
        "final_at TEXT NOT NULL DEFAULT ''",  # the final outcome's time, set when purged
        "content_purged_at TEXT NOT NULL DEFAULT ''",
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column}")
    db.execute("ALTER TABLE asks ADD COLUMN content_purged_at TEXT NOT NULL DEFAULT ''")
    db.execute(
        "UPDATE requests SET answer_status = coalesce(json_extract(answer, '$.status'), '') "
        "WHERE answer != ''"
    )
    for (table, column), key in contentbox.SEALED_COLUMNS.items():
        if table == "consents":
            continue  # append-only: sealed by 0002_consent_evidence_sealed
        rows = db.execute(
            f"SELECT {key}, {column} FROM {table} "  # noqa: S608 (fixed names)
            f"WHERE {column} != '' AND {column} != x'' AND {column} NOT LIKE 'v1:%'"
        ).fetchall()
        for row_key, value in rows:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            db.execute(
                f"UPDATE {table} SET {column} = ? WHERE {key} = ?",  # noqa: S608
                [contentbox.seal(db, table, column, row_key, text), row_key],
            )
    db.execute("DROP TRIGGER outbox_bytes_fixed")
    db.execute(
        "CREATE TRIGGER outbox_bytes_fixed BEFORE UPDATE OF message_id, sender, recipient, "
        "kind, reference ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'an outbox message never changes once queued'); END"
    )
    done = ", ".join(f"'{s}'" for s in OUTBOX_DONE)
    db.execute(
        "CREATE TRIGGER outbox_mime_fixed BEFORE UPDATE OF mime ON outbox "
        f"WHEN NOT (length(NEW.mime) = 0 AND OLD.status IN ({done})) "
        "BEGIN SELECT RAISE(ABORT, 'an outbox message never changes once queued; only a "
        "finished one may be emptied by the retention purge'); END"
    )


@MIGRATIONS(name="0002_consent_evidence_sealed")
def _m2(db: sqlite_utils.Database) -> None:
    """Seal the consent register's plaintext evidence names (file names that often carry the
    patient's name and birth date). The register is append-only: its UPDATE trigger is lifted
    for this one transaction and put back unchanged; secure_delete zeroes the old cells."""
    db.execute("PRAGMA secure_delete = ON")
    rows = db.execute(
        "SELECT id, consent_id, evidence_ref FROM consents "
        "WHERE evidence_ref IS NOT NULL AND evidence_ref != '' AND evidence_ref NOT LIKE 'v1:%'"
    ).fetchall()
    if not rows:
        return
    (trigger,) = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'consents_no_update'"
    ).fetchone()
    db.execute("DROP TRIGGER consents_no_update")
    for row_id, consent_id, value in rows:
        sealed = contentbox.seal(db, "consents", "evidence_ref", consent_id, str(value))
        db.execute("UPDATE consents SET evidence_ref = ? WHERE id = ?", [sealed, row_id])
    db.execute(trigger)


# -- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts:
    """What one purge removed (or, dry run, would remove): counts only, never content."""

    request_content: int = 0
    ask_content: int = 0
    outbox_content: int = 0
    request_rows: int = 0
    hop_rows: int = 0
    outbox_rows: int = 0
    ask_rows: int = 0
    sessions: int = 0
    audit_rows: int = 0
    consents: int = 0
    drafts: int = 0
    order_end_content: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def detail(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass(slots=True)
class Plan:
    now: datetime
    content_cutoff: datetime
    metadata_cutoff: datetime
    requests: list[tuple[int, str]] = field(default_factory=list)  # (id, final_at)
    asks: list[int] = field(default_factory=list)
    outbox_mime: list[int] = field(default_factory=list)
    old_requests: list[str] = field(default_factory=list)  # references
    old_asks: list[int] = field(default_factory=list)
    old_outbox: list[int] = field(default_factory=list)
    old_sessions: list[str] = field(default_factory=list)
    old_hops: int = 0
    audit_first: int = 0
    audit_upto: int = -1
    old_consents: list[str] = field(default_factory=list)  # consent ids
    old_drafts: list[str] = field(default_factory=list)  # draft ids
    #: references whose team's end reason is emptied on its own (the request's content
    #: went earlier: a long order ended after the purge of its request)
    order_end_texts: list[str] = field(default_factory=list)


def _parse(text: str | float | None) -> datetime | None:
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        return datetime.fromtimestamp(text, UTC)
    parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_final_at(db: sqlite_utils.Database, row: dict[str, Any]) -> datetime | None:
    """When the request reached its final outcome, or None while it is still open."""
    state = row["state"]
    if state == "answered":
        return _parse(row["answered_at"] or row["updated_at"])
    if state in ("withdrawn", "superseded"):
        newer = db.execute(
            "SELECT created_at FROM requests WHERE reference = ?", [row["superseded_by"]]
        ).fetchone()
        return _parse(newer[0] if newer else row["updated_at"])
    last = outbox.request_outcome(db, row["reference"], row["message_id"])
    if last is None:
        return None
    status, at = last
    if status in ("failed", "stopped", "cancelled") or (
        status == "sent" and row["kind"] == "intrekking"
    ):
        return _parse(at)
    return None


def plan(db: sqlite_utils.Database, settings: Settings, now: datetime) -> Plan:
    """Everything due at ``now``; reads only (the dry run shows it, ``purge`` applies it)."""
    r = settings.retention
    p = Plan(now, now - timedelta(days=r.content_days), now - timedelta(days=r.metadata_days))
    cur = db.execute("SELECT * FROM requests WHERE content_purged_at = ''")
    names = [d[0] for d in cur.description]
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        final = request_final_at(db, row)
        if final is not None and final <= p.content_cutoff:
            p.requests.append((row["id"], _iso(final)))
    for ask_id, fulfilled_at in db.execute(
        "SELECT id, fulfilled_at FROM asks WHERE content_purged_at = '' AND state = 'fulfilled'"
    ):
        at = _parse(fulfilled_at)
        if at is not None and at <= p.content_cutoff:
            p.asks.append(ask_id)
    due_refs = {
        ref for (ref,) in db.execute("SELECT reference FROM requests WHERE content_purged_at != ''")
    }
    due_refs |= {db.execute("SELECT reference FROM requests WHERE id = ?", [i]).fetchone()[0]
                 for i, _ in p.requests}  # fmt: skip
    for oid, kind, reference, _status, changed in outbox.summaries(db, done_with_content=True):
        if (kind == "request" and reference in due_refs) or (
            kind == "notice" and datetime.fromtimestamp(changed, UTC) <= p.content_cutoff
        ):
            p.outbox_mime.append(oid)
    # Metadata: only rows whose content is gone (or never had any) and final long enough ago.
    for (reference,) in db.execute(
        "SELECT reference FROM requests WHERE content_purged_at != '' AND final_at != '' "
        "AND final_at <= ?",
        [_iso(p.metadata_cutoff)],
    ):
        p.old_requests.append(reference)
    for ask_id, fulfilled_at in db.execute(
        "SELECT id, fulfilled_at FROM asks WHERE content_purged_at != ''"
    ):
        at = _parse(fulfilled_at)
        if at is not None and at <= p.metadata_cutoff:
            p.old_asks.append(ask_id)
    old = set(p.old_requests)
    p.old_hops = sum(
        db.execute(
            f"SELECT COUNT(*) FROM request_hops WHERE reference IN ({_in(c)})",  # noqa: S608
            c,
        ).fetchone()[0]
        for c in _chunks(p.old_requests)
    )
    for oid, kind, reference, status, changed in outbox.summaries(db):
        old_notice = (
            kind == "notice"
            and status in OUTBOX_DONE
            and datetime.fromtimestamp(changed, UTC) <= p.metadata_cutoff
        )
        if (kind == "request" and reference in old) or old_notice:
            p.old_outbox.append(oid)
    session_end = timedelta(hours=settings.web.session_max_hours)
    for id_hash, created_at in db.execute("SELECT id_hash, created_at FROM sessions"):
        at = _parse(created_at)
        if at is not None and at + session_end <= now:
            p.old_sessions.append(id_hash)
    cutoff = audit_retention.retention_cutoff(now, settings.audit.retention_years)
    p.audit_first, p.audit_upto = audit_retention.purgeable(db, cutoff)
    p.old_consents = consent_retention.due(db, _parse(cutoff) or now, p.audit_upto)
    # the drafts table is securemail.exchange.drafts' (a sibling room: read here by SQL)
    p.old_drafts = [
        d
        for (d,) in db.execute(
            "SELECT draft_id FROM drafts WHERE saved_at <= ?",
            [_iso(now - timedelta(days=r.draft_days))],
        )
    ]
    # A team's end reason (securemail.exchange.order_end) goes with the request's content,
    # or content_days after the end when the request's content went first.
    p.order_end_texts = [
        ref
        for (ref,) in db.execute(
            "SELECT e.reference FROM order_ends e JOIN requests r ON r.reference = e.reference "
            "WHERE e.content != '' AND r.content_purged_at != '' AND e.ended_at <= ?",
            [_iso(p.content_cutoff)],
        )
    ]
    return p


def counts_of(p: Plan) -> Counts:
    return Counts(
        request_content=len(p.requests),
        ask_content=len(p.asks),
        outbox_content=len(p.outbox_mime),
        request_rows=len(p.old_requests),
        hop_rows=p.old_hops,
        outbox_rows=len(p.old_outbox),
        ask_rows=len(p.old_asks),
        sessions=len(p.old_sessions),
        audit_rows=max(0, p.audit_upto - p.audit_first + 1),
        consents=len(p.old_consents),
        drafts=len(p.old_drafts),
        order_end_content=len(p.order_end_texts),
    )


# -- applying it --------------------------------------------------------------------------------
def _in(ids: list[Any]) -> str:
    return ",".join("?" for _ in ids)


def apply(db: sqlite_utils.Database, settings: Settings, p: Plan, actor: Actor) -> Counts:
    """Empty and delete what the plan names, audit it; inside the caller's transaction."""
    counts = counts_of(p)
    if counts.total == 0:
        return counts
    now = _iso(p.now)
    secure = db.conn.execute("PRAGMA secure_delete").fetchone()[0]
    db.conn.execute("PRAGMA secure_delete = ON")  # freed page space is zeroed, not left over
    try:
        for request_id, final_at in p.requests:
            reference = db.execute(
                "SELECT reference FROM requests WHERE id = ?", [request_id]
            ).fetchone()[0]
            db.execute(
                "UPDATE requests SET document = x'', answer = '', json_signature = x'', "
                "signed_order = '', "
                "final_at = ?, content_purged_at = ? WHERE id = ?",
                [final_at, now, request_id],
            )
            db.execute("UPDATE request_hops SET reason = '' WHERE reference = ?", [reference])
            db.execute("DELETE FROM request_attachments WHERE reference = ?", [reference])
            # the name's search tokens are content too (exchange/name_index.py)
            db.execute("DELETE FROM request_name_tokens WHERE request_id = ?", [request_id])
            db.execute("UPDATE replies SET body = '' WHERE reference = ?", [reference])
            _purge_thread(db, reference, now)
            db.execute("UPDATE order_ends SET content = '' WHERE reference = ?", [reference])
        for reference in p.order_end_texts:
            db.execute("UPDATE order_ends SET content = '' WHERE reference = ?", [reference])
        for ask_id in p.asks:
            ask_reference = db.execute(
                "SELECT reference FROM asks WHERE id = ?", [ask_id]
            ).fetchone()[0]
            _purge_thread(db, ask_reference, now)
            db.execute(
                "UPDATE asks SET patient_name = '', patient_birth_date = '', reason = '', "
                "gp_answer = '', content_purged_at = ? WHERE id = ?",
                [now, ask_id],
            )
        outbox.empty_content(db, p.outbox_mime)
        outbox.delete_rows(db, p.old_outbox)
        for chunk in _chunks(p.old_requests):
            # an order's dates and signals, its answer copies, attachments and replies live
            # as long as its row
            for table in (
                "request_hops",
                "order_dates",
                "order_signals",
                "order_ends",
                "answer_copies",
                "request_attachments",
                "replies",
                "thread_messages",
            ):
                db.execute(f"DELETE FROM {table} WHERE reference IN ({_in(chunk)})", chunk)  # noqa: S608
            db.execute(f"DELETE FROM requests WHERE reference IN ({_in(chunk)})", chunk)  # noqa: S608
        for chunk in _chunks(p.old_asks):
            db.execute(
                "DELETE FROM thread_messages WHERE reference IN "  # noqa: S608
                f"(SELECT reference FROM asks WHERE id IN ({_in(chunk)}))",
                chunk,
            )
            db.execute(f"DELETE FROM asks WHERE id IN ({_in(chunk)})", chunk)  # noqa: S608
        for chunk in _chunks(p.old_drafts):
            db.execute(f"DELETE FROM drafts WHERE draft_id IN ({_in(chunk)})", chunk)  # noqa: S608
        for chunk in _chunks(p.old_sessions):
            db.execute(f"DELETE FROM sessions WHERE id_hash IN ({_in(chunk)})", chunk)  # noqa: S608
        if counts.audit_rows:
            key = audit_integrity.load_or_create_checkpoint_key(settings.home)
            audit_retention.purge(
                db, actor, key, now=p.now, retention_years=settings.audit.retention_years,
                source_id=settings.gateway.source_id,
            )  # fmt: skip
        consent_retention.purge(db, actor, p.old_consents, source_id=settings.gateway.source_id)
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "retention.purge",
                object_type="retention",
                object_id=now,
                nature="technical",
                outcome_detail=(
                    f"{counts.detail()} (content {settings.retention.content_days} days, "
                    f"metadata {settings.retention.metadata_days} days, audit "
                    f"{settings.audit.retention_years} years)"
                ),
            ),
        )
    finally:
        db.conn.execute(f"PRAGMA secure_delete = {int(secure)}")
    return counts


def _purge_thread(db: sqlite_utils.Database, reference: str, now: str) -> None:
    """Empty the bodies of a request's or ask's conversation (securemail.exchange.thread owns
    the table; ops may not import the exchange): who wrote when stays as metadata."""
    db.execute(
        "UPDATE thread_messages SET body = '', purged_at = ? WHERE reference = ? "
        "AND purged_at = ''",
        [now, reference],
    )


def _chunks(ids: list[Any], size: int = 500) -> list[list[Any]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def purge(
    store: Store, settings: Settings, *, now: datetime, actor: Actor = SYSTEM,
    dry_run: bool = False,
) -> Counts:  # fmt: skip
    """Run the retention purge (or, dry run, count what it would do) and, when something
    went, truncate the WAL so no old copy of a page stays in it."""
    if dry_run:
        return store.read_sync(lambda db: counts_of(plan(db, settings, now)))

    def tx(db: sqlite_utils.Database) -> Counts:
        return apply(db, settings, plan(db, settings, now), actor)

    counts = store.write_sync(tx)
    if counts.total:
        log.info("retention purge: %s", counts.detail())
        for _ in range(CHECKPOINT_TRIES):
            busy, _, _ = store.checkpoint()
            if not busy:
                break
            time.sleep(0.2)  # a reader inside its snapshot holds the WAL; it is brief
        else:
            log.warning(
                "retention purge: readers kept the WAL busy; it was not truncated this time"
            )
    return counts


async def run(store: Store, settings: Settings, clock: Any, stop: asyncio.Event) -> None:
    """The web app's daily purge; a failed round is logged (ids and counts only), not fatal."""
    every = settings.retention.purge_every_hours * 3600
    while not stop.is_set():
        try:
            await asyncio.to_thread(purge, store, settings, now=clock())
        except Exception:  # the boundary of a background loop
            log.exception("retention purge failed; next try in %.0f s", every)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
