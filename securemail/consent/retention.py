"""How long a consent record is kept, and its removal (the only DELETE on ``consents``).

A consent's history (every version of one ``consent_id``) is kept while anything relies on
it: while it is in force (an active consent or objection without an end never goes), for
``[audit] retention_years`` after its end (withdrawal, the end of its validity, or the
correction that voided it: the sends it allowed are accounted for in the trail that
long), and while any audit row that survives the current purge names it (``consent_id``).
After that, AVG art. 5(1)(e) says it may not stay: the retention purge deletes the whole
history in its transaction, one ``consent.purge`` audit row per consent (the consent's
id, no BSN).

Invariant: the append-only trigger is lifted only inside that transaction and restored
before it commits; a history is deleted whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlite_utils

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.consent.table import CURRENT

_TRIGGER = "consents_no_delete"


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ended_at(status: str, valid_until: str | None, withdrawn_at: str | None,
             recorded_at: str) -> datetime | None:  # fmt: skip
    """When the current version stopped counting; None while it is (or may be) in force."""
    if status == "withdrawn":
        return _parse(withdrawn_at)
    if status == "entered-in-error":
        return _parse(recorded_at)
    return _parse(valid_until)  # active or expired: the end of its validity, if it has one


def due(db: sqlite_utils.Database, cutoff: datetime, audit_upto: int) -> list[str]:
    """The consent ids whose end lies at or before cutoff and that no audit row after
    seq audit_upto names (rows up to it go in the same purge)."""
    if "consents" not in db.table_names():
        return []
    out: list[str] = []
    for consent_id, status, valid_until, withdrawn_at, recorded_at in db.execute(
        "SELECT c.consent_id, c.status, c.valid_until, c.withdrawn_at, c.recorded_at "  # noqa: S608
        f"FROM consents c WHERE {CURRENT} ORDER BY c.id"
    ):
        end = ended_at(status, valid_until, withdrawn_at, recorded_at)
        if end is None or end > cutoff:
            continue
        named = db.execute(
            # consent_id != '' lets SQLite use the partial index audit_consent.
            "SELECT 1 FROM audit_events WHERE consent_id = ? AND consent_id != '' AND seq > ? "
            "LIMIT 1",
            [consent_id, audit_upto],
        ).fetchone()
        if named is None:
            out.append(str(consent_id))
    return out


def purge(
    db: sqlite_utils.Database, actor: Actor, consent_ids: Iterable[str], *, source_id: str
) -> int:
    """Delete each named history whole and audit it; inside the caller's transaction."""
    ids = list(consent_ids)
    if not ids:
        return 0
    trigger = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", [_TRIGGER]
    ).fetchone()
    if trigger is None:
        raise audit.AuditError(f"{_TRIGGER} trigger is missing; refusing to purge consents")
    db.conn.execute(f"DROP TRIGGER {_TRIGGER}")
    try:
        for consent_id in ids:
            versions = db.execute(
                "SELECT count(*) FROM consents WHERE consent_id = ?", [consent_id]
            ).fetchone()[0]
            # Newest first: each version's supersedes points at the one before it.
            for (row_id,) in db.execute(
                "SELECT id FROM consents WHERE consent_id = ? ORDER BY version DESC", [consent_id]
            ).fetchall():
                db.execute("DELETE FROM consents WHERE id = ?", [row_id])
            audit.record(
                db,
                audit.AuditEvent.of(
                    actor,
                    "consent.purge",
                    object_type="consent",
                    object_id=consent_id,
                    nature="technical",
                    outcome_detail=f"{versions} version(s) past retention",
                ),
            )
    finally:
        db.conn.execute(str(trigger[0]))
    return len(ids)
