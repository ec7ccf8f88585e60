"""Retention of the audit trail: rows past [audit] retention_years are purged, verifiably.

Invariant: ``purge`` removes only rows recorded before the cutoff, in chain order, only up
to a ``purge`` checkpoint it signs in the same transaction; it keeps that head as the
anchor the remaining chain starts from (audit.anchor) and records ``audit.purge``; the
delete trigger is lifted only inside that transaction, and purged pages are overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemail.access import Actor
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.audit.integrity import Checkpoint
from securemail.audit.trail import AuditEvent


@dataclass(frozen=True, slots=True)
class PurgeReport:
    first_seq: int
    last_seq: int
    rows: int
    cutoff: str
    checkpoint: Checkpoint
    event_seq: int


def retention_cutoff(now: datetime, years: int) -> str:
    """The recorded_at before which rows may go: `years` calendar years before now (UTC)."""
    now = now.astimezone(UTC)
    try:
        then = now.replace(year=now.year - years)
    except ValueError:  # 29 February
        then = now.replace(year=now.year - years, day=28)
    return then.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def purgeable(db: sqlite_utils.Database, cutoff: str) -> tuple[int, int]:
    """(first, last) seq of the rows written before cutoff, in chain order; last < first: none."""
    first, last_present, _, _ = audit.bounds(db.conn)
    # Scans from the oldest row and stops at the first one still inside retention.
    row = db.conn.execute(
        "SELECT seq FROM audit_events WHERE recorded_at >= ? ORDER BY seq LIMIT 1", [cutoff]
    ).fetchone()
    return first, (int(row[0]) - 1) if row else last_present


def purge(
    db: sqlite_utils.Database,
    actor: Actor,
    key: Ed25519PrivateKey,
    *,
    now: datetime,
    retention_years: int,
    source_id: str | None = None,
) -> PurgeReport | None:
    """Delete rows past retention in the caller's transaction; None when nothing is due."""
    cutoff = retention_cutoff(now, retention_years)
    first, upto = purgeable(db, cutoff)
    if upto < first:
        return None
    head_hash = str(
        db.conn.execute("SELECT row_hash FROM audit_events WHERE seq = ?", [upto]).fetchone()[0]
    )
    cp = audit_integrity.sign_head(db, key, upto, head_hash, "purge")
    db.conn.execute(
        "INSERT INTO audit_anchor (seq, head_hash, checkpoint_id, purged_at, cutoff, rows) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [upto, head_hash, cp.id, audit.now_ms(), cutoff, upto - first + 1],
    )
    trigger = db.conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_no_delete'"
    ).fetchone()
    if trigger is None:
        raise audit.AuditError("audit_no_delete trigger is missing; refusing to purge")
    secure = db.conn.execute("PRAGMA secure_delete").fetchone()[0]
    db.conn.execute("PRAGMA secure_delete = ON")  # purged rows must not linger in free pages
    try:
        # The only DELETE on audit_events in the code: the trigger is lifted and restored
        # inside this transaction, so no other writer ever sees the table without it.
        db.conn.execute("DROP TRIGGER audit_no_delete")
        db.conn.execute("DELETE FROM audit_events WHERE seq <= ?", [upto])
        db.conn.execute(trigger[0])
    finally:
        db.conn.execute(f"PRAGMA secure_delete = {int(secure)}")
    seq = audit.record(
        db,
        AuditEvent.of(
            actor,
            "audit.purge",
            object_type="audit",
            object_id=str(upto),
            nature="technical",
            outcome_detail=f"rows {first}..{upto} recorded before {cutoff} "
            f"(retention {retention_years} years); checkpoint {cp.id}",
        ),
    )
    return PurgeReport(first, upto, upto - first + 1, cutoff, cp, seq)
