"""The durable outbox: what was accepted for delivery, and where each delivery stands.

Invariants:

1. Only a ``SealedMessage`` (made by ``openpgp.seal``) or a ``notify.Notice`` is ever
   queued. A sealed message must also *be* PGP/MIME (``securemail.message.sealcheck``: RFC 3156
   envelope around ASCII-armored OpenPGP encrypted-data packets and nothing else); the
   worker runs the same check again just before the bytes go to the relay.
2. ``enqueue`` runs inside the caller's write, next to the caller's audit row, so
   "accepted" means both are committed together.
3. A row's bytes and Message-ID never change (a trigger refuses it): a retry, a
   re-claim after a crash and an admin retry all send the same bytes, and the
   receiving side can recognise a repeat by its Message-ID.
4. Every status change commits in one write with its audit row. A worker only moves
   a row it holds the lease on (``status = 'sending' AND lease_owner = me``), so a
   worker whose lease lapsed cannot finalise a row a second time.

States: queued -> sending (leased) -> sent | retrying | failed | stopped; an attempt
that may have delivered (no answer after DATA) goes to retrying and counts in
``uncertain_attempts``;
retrying -> sending; queued/retrying -> cancelled (admin); failed/stopped -> queued
(admin retry). The worker lives in ``securemail.delivery.worker``; docs/delivery.md explains it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.config import Settings
from securemail.errors import ConflictError, InputError, NotFoundError
from securemail.message import notify
from securemail.message.sealcheck import NotSealedError
from securemail.message.sealcheck import require_pgp_mime as _require_pgp_mime
from securemail.openpgp.keyring import _SEAL_TOKEN, SealedMessage

STATUSES = ("queued", "sending", "retrying", "sent", "failed", "cancelled", "stopped")
FINAL = ("sent", "failed", "stopped")
#: Finished: nothing more will be tried (the retention purge may empty these).
DONE = ("sent", "failed", "stopped", "cancelled")
KINDS = ("request", "notice")

#: (kind, new status) -> audit event code written with the change.
EVENTS: dict[tuple[str, str], str] = {
    ("request", "sent"): "request.deliver",
    ("request", "retrying"): "request.retry",
    ("request", "failed"): "request.fail",
    ("request", "stopped"): "request.stop",
    ("notice", "sent"): "notice.deliver",
    ("notice", "retrying"): "notice.retry",
    ("notice", "failed"): "notice.fail",
    ("notice", "stopped"): "notice.stop",
}
#: kind -> audit event of an attempt that may have delivered (then retried, same Message-ID).
UNCERTAIN_EVENTS: dict[str, str] = {"request": "request.uncertain", "notice": "notice.uncertain"}

_AUDIT_KEYS = (
    "patient_id",
    "sender_org",
    "recipient_org",
    "purpose",
    "consent_id",
    "data_categories",
    "object_type",
)


def _migrate(db: sqlite_utils.Database) -> None:
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    db.execute(
        f"""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('request', 'notice')),
            message_id TEXT NOT NULL UNIQUE,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            mime BLOB NOT NULL,
            status TEXT NOT NULL CHECK (status IN ({statuses})),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_owner TEXT,
            lease_until REAL,
            last_error TEXT NOT NULL DEFAULT '',
            relay_reply TEXT NOT NULL DEFAULT '',
            stop_reason TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            queued_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            final_at REAL,
            final_handled_at REAL,
            queued_by INTEGER,
            audit_context TEXT NOT NULL DEFAULT '{{}}'
        )
        """
    )
    db.execute("CREATE INDEX outbox_due ON outbox (status, next_attempt_at)")
    db.execute("CREATE INDEX outbox_lease ON outbox (status, lease_until)")
    db.execute("CREATE INDEX outbox_reference ON outbox (reference)")
    db.execute(
        "CREATE INDEX outbox_unhandled ON outbox (id) "
        "WHERE final_at IS NOT NULL AND final_handled_at IS NULL"
    )
    db.execute(
        "CREATE TRIGGER outbox_bytes_fixed BEFORE UPDATE OF mime, message_id, sender, recipient, "
        "kind, reference ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'an outbox message never changes once queued'); END"
    )


MIGRATIONS = Migrations("securemail.outbox")
MIGRATIONS(name="0001_outbox")(_migrate)


@MIGRATIONS(name="0002_uncertain_attempts")
def _m2(db: sqlite_utils.Database) -> None:
    """Attempts that may have delivered: the relay had the whole message but its answer
    never came (a timeout or a dropped connection after DATA); the row is sent again."""
    db.execute("ALTER TABLE outbox ADD COLUMN uncertain_attempts INTEGER NOT NULL DEFAULT 0")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One queued delivery, as the worker and its hooks see it."""

    id: int
    reference: str
    kind: str
    message_id: str
    sender: str
    recipient: str
    status: str
    attempts: int
    last_error: str
    relay_reply: str
    stop_reason: str
    queued_by: int | None
    audit_context: dict[str, str] = field(hash=False)
    mime: bytes = field(repr=False)

    @classmethod
    def from_db(cls, r: dict[str, Any]) -> OutboxRow:
        names = set(cls.__dataclass_fields__) - {"audit_context"}
        return cls(audit_context=json.loads(r["audit_context"]), **{k: r[k] for k in names})


def rows_of(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


# -- enqueue ---------------------------------------------------------------------------------
def enqueue(
    db: sqlite_utils.Database,
    message: SealedMessage | notify.Notice,
    *,
    actor: Actor,
    now: float,
    patient_id: str = "",
    sender_org: str = "",
    recipient_org: str = "",
    purpose: str = "TREAT",
    consent_id: str = "",
    data_categories: str = "",
) -> int:
    """Queue message for delivery inside the caller's write; return the outbox id.

    Call it in the same ``store.write`` as the caller's audit row (``request.send`` or
    ``notice.send``). The keyword fields are copied onto the delivery's audit rows.
    Raises TypeError for anything but a SealedMessage or Notice, NotSealedError when a
    SealedMessage is not PGP/MIME, ConflictError when the Message-ID is already queued.
    """
    if isinstance(message, SealedMessage) and getattr(message, "_token", None) is _SEAL_TOKEN:
        kind = "request"
    elif notify.is_notice(message):
        kind = "notice"
    else:
        raise TypeError("the outbox takes only a SealedMessage from openpgp.seal() or a Notice")
    if kind == "request":
        _require_pgp_mime(message.mime)  # a notice's provenance is its token
    if not notify.REFERENCE_RE.match(message.reference):
        raise InputError("reference is not in the gateway's format", field="reference")
    notify.require_address(message.sender, "sender")
    notify.require_address(message.recipient, "recipient")
    header_id = (
        BytesParser(policy=policy.default)
        .parsebytes(message.mime, headersonly=True)
        .get("Message-ID")
    )
    if not message.message_id or str(header_id or "").strip() != message.message_id:
        raise NotSealedError("the message's Message-ID header differs from its message_id")
    if purpose not in audit.PURPOSES:
        raise InputError(f"unknown purpose {purpose!r}", field="purpose")
    context = {
        "patient_id": patient_id,
        "sender_org": sender_org,
        "recipient_org": recipient_org,
        "purpose": purpose,
        "consent_id": consent_id,
        "data_categories": data_categories,
        "object_type": kind,
    }
    try:
        cur = db.execute(
            "INSERT INTO outbox (reference, kind, message_id, sender, recipient, mime, status,"
            " next_attempt_at, created_at, queued_at, updated_at, queued_by, audit_context)"
            " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            [
                message.reference,
                kind,
                message.message_id,
                message.sender,
                message.recipient,
                message.mime,
                now,
                now,
                now,
                now,
                actor.user_id,
                json.dumps(context, sort_keys=True),
            ],
        )
    except sqlite3.IntegrityError:
        raise ConflictError("this message is already queued", reference=message.reference) from None
    return int(cur.lastrowid or 0)


def audit_event(
    actor: Actor, code: str, row: OutboxRow, *, outcome: str, detail: str
) -> AuditEvent:
    """The audit row for a change to row: the queued context plus what happened."""
    ctx = {k: row.audit_context.get(k, "") for k in _AUDIT_KEYS}
    ctx["object_type"] = ctx["object_type"] or row.kind
    return AuditEvent.of(
        actor,
        code,
        object_id=row.reference,
        outcome=outcome,
        outcome_detail=detail[:300],
        responsible_user_id=row.queued_by,
        **ctx,
    )


def enqueue_notice(
    db: sqlite_utils.Database,
    make: Callable[[str, str, Settings], notify.Notice],
    reference: str,
    to: str,
    settings: Settings,
    *,
    actor: Actor,
    now: float,
) -> None:
    """Queue make's notice about reference to to, sent on behalf of actor's organisation.
    An organisation that gave no notice address (to is empty) is not told."""
    if to:
        enqueue(db, make(reference, to, settings), actor=actor, now=now, sender_org=actor.org_code)


# -- admin -----------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_SHOWN = (
    "id",
    "reference",
    "kind",
    "status",
    "message_id",
    "recipient",
    "attempts",
    "last_error",
    "relay_reply",
    "stop_reason",
    "lease_owner",
    "uncertain_attempts",
)
_TIMES = ("created_at", "queued_at", "next_attempt_at", "updated_at", "final_at", "lease_until")


def _shown(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: r[k] for k in _SHOWN}
    out.update({k: _iso(r[k]) for k in _TIMES})
    if r["status"] not in ("queued", "retrying"):
        out["next_attempt_at"] = None
    return out


def list_rows(
    db: sqlite_utils.Database, status: str | None = None, *, limit: int = 500
) -> list[dict[str, Any]]:
    """Rows (newest first, without the message bytes), optionally of one status."""
    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r}", field="status")
    where, args = ("WHERE status = ?", [status]) if status else ("", [])
    cur = db.execute(f"SELECT * FROM outbox {where} ORDER BY id DESC LIMIT ?", [*args, limit])  # noqa: S608
    return [_shown(r) for r in rows_of(cur)]


def status(db: sqlite_utils.Database, reference: str) -> list[dict[str, Any]]:
    """Every delivery for reference with its times: queued, attempts, last error, next attempt,
    relay reply, final. Raises NotFoundError for an unknown reference."""
    cur = db.execute("SELECT * FROM outbox WHERE reference = ? ORDER BY id", [reference])
    rows = [_shown(r) for r in rows_of(cur)]
    if not rows:
        raise NotFoundError("no deliveries for this reference", reference=reference)
    return rows


def _admin_change(
    db: sqlite_utils.Database,
    reference: str,
    actor: Actor,
    *,
    event: str,
    from_states: tuple[str, ...],
    sql: str,
    args: list[Any],
) -> list[int]:
    require(actor, "outbox.manage", Resource("outbox"))
    rows = rows_of(db.execute("SELECT * FROM outbox WHERE reference = ? ORDER BY id", [reference]))
    if not rows:
        raise NotFoundError("no deliveries for this reference", reference=reference)
    chosen = [r for r in rows if r["status"] in from_states]
    if event == "outbox.retry" and any(len(r["mime"]) == 0 for r in chosen):
        from securemail.contentbox import ContentPurgedError

        raise ContentPurgedError(
            "the message's bytes were purged after its retention period; the practice sends "
            "a new request",
            reference=reference,
        )
    if not chosen:
        now_in = sorted({r["status"] for r in rows})
        raise ConflictError(
            f"nothing to change: deliveries are {', '.join(now_in)}", reference=reference
        )
    done = []
    for r in chosen:
        cur = db.execute(sql + " WHERE id = ? AND status = ?", [*args, r["id"], r["status"]])
        if cur.rowcount == 1:
            row = OutboxRow.from_db(r)
            detail = f"{r['status']} -> {event.split('.')[1]}; message_id={r['message_id']}"
            audit.record(db, audit_event(actor, event, row, outcome="success", detail=detail))
            done.append(int(r["id"]))
    return done


def retry(db: sqlite_utils.Database, reference: str, actor: Actor, *, now: float) -> list[int]:
    """Re-queue the failed or stopped deliveries of reference (same bytes, same Message-ID);
    audited ``outbox.retry``. The give-up clock starts again at now."""
    return _admin_change(
        db,
        reference,
        actor,
        event="outbox.retry",
        from_states=("failed", "stopped"),
        sql="UPDATE outbox SET status = 'queued', next_attempt_at = ?, queued_at = ?,"
        " updated_at = ?, final_at = NULL, final_handled_at = NULL, stop_reason = '',"
        " lease_owner = NULL, lease_until = NULL",
        args=[now, now, now],
    )


def cancel(db: sqlite_utils.Database, reference: str, actor: Actor, *, now: float) -> list[int]:
    """Cancel the queued or retrying deliveries of reference; audited ``outbox.cancel``.
    A delivery in flight (sending) is not cancelled: try again when it has settled."""
    return _admin_change(
        db,
        reference,
        actor,
        event="outbox.cancel",
        from_states=("queued", "retrying"),
        sql="UPDATE outbox SET status = 'cancelled', updated_at = ?, final_at = ?,"
        " final_handled_at = ?",
        args=[now, now, now],
    )


def stop(
    db: sqlite_utils.Database,
    reference: str,
    *,
    reason: str,
    actor: Actor,
    now: float,
) -> bool:
    """Stop the request deliveries of reference that have not left (queued, retrying), e.g.
    because consent was withdrawn; audited ``request.stop`` per row. A delivery in flight is
    caught by the worker's consent check just before the relay. Returns whether any stopped.

    final_handled_at stays NULL so a worker runs on_final for it (the practice's notice)."""
    stopped = False
    rows = rows_of(
        db.execute(
            "SELECT * FROM outbox WHERE reference = ? AND kind = 'request' "
            "AND status IN ('queued', 'retrying') ORDER BY id",
            [reference],
        )
    )
    for r in rows:
        cur = db.execute(
            "UPDATE outbox SET status = 'stopped', stop_reason = ?, updated_at = ?, final_at = ?,"
            " lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = ?",
            [reason, now, now, r["id"], r["status"]],
        )
        if cur.rowcount == 1:
            row = OutboxRow.from_db(r)
            audit.record(
                db,
                audit_event(
                    actor,
                    "request.stop",
                    row,
                    outcome="success",
                    detail=f"{r['status']} -> stopped: {reason}",
                ),
            )
            stopped = True
    return stopped


# -- reads and changes for other rooms (they never touch the outbox table themselves) ----------

#: Statuses of a message still to go (the worker's queue).
PENDING = ("queued", "sending", "retrying")


def counts_by_status(db: sqlite_utils.Database) -> dict[str, int]:
    """Messages per status, every status present (0 when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in db.execute("SELECT status, count(*) FROM outbox GROUP BY status"):
        counts[str(status)] = int(n)
    return counts


def final_counts(db: sqlite_utils.Database) -> dict[tuple[str, str], int]:
    """Messages that reached a final outcome, per (outcome, kind), every pair present."""
    counts = {(o, k): 0 for o in FINAL for k in KINDS}
    for status, kind, n in db.execute(
        "SELECT status, kind, count(*) FROM outbox WHERE status IN ('sent', 'failed', 'stopped') "
        "GROUP BY status, kind"
    ):
        counts[(str(status), str(kind))] = int(n)
    return counts


def total_attempts(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT coalesce(sum(attempts), 0) FROM outbox").fetchone()[0])


def oldest_queued_at(db: sqlite_utils.Database, statuses: tuple[str, ...]) -> float | None:
    """When the oldest message in one of ``statuses`` was queued (epoch seconds), or None."""
    marks = ",".join("?" for _ in statuses)
    at = db.execute(
        f"SELECT min(queued_at) FROM outbox WHERE status IN ({marks})",  # noqa: S608 (only ?)
        list(statuses),
    ).fetchone()[0]
    return float(at) if at is not None else None


def pending_count(db: sqlite_utils.Database) -> int:
    return int(
        db.execute(
            "SELECT count(*) FROM outbox WHERE status IN ('queued', 'retrying', 'sending')"
        ).fetchone()[0]
    )


def release_leases(db: sqlite_utils.Database) -> int:
    """End every lease now (a restored home: the old process is gone); how many there were.
    A row that was mid-send is then marked as a possible repeat when it is claimed again."""
    return int(db.execute("UPDATE outbox SET lease_until = 0 WHERE status = 'sending'").rowcount)


def has_reference(db: sqlite_utils.Database, reference: str) -> bool:
    """Whether any message with this reference was ever queued."""
    return (
        db.execute("SELECT 1 FROM outbox WHERE reference = ?", [reference]).fetchone() is not None
    )


def latest_request_status(db: sqlite_utils.Database, references: list[str]) -> dict[str, str]:
    """The status of each reference's newest request message (references without one are
    left out). At most 500 references a query."""
    out: dict[str, str] = {}
    for start in range(0, len(references), 500):
        chunk = references[start : start + 500]
        marks = ",".join("?" for _ in chunk)
        for reference, status in db.execute(
            "SELECT reference, status FROM outbox WHERE id IN (SELECT max(id) FROM outbox "  # noqa: S608
            f"WHERE kind = 'request' AND reference IN ({marks}) GROUP BY reference)",
            chunk,
        ):
            out[str(reference)] = str(status)
    return out


def request_outcome(
    db: sqlite_utils.Database, reference: str, message_id: str
) -> tuple[str, float] | None:
    """(status, when it became final or last changed) of a request's message, or None."""
    row = db.execute(
        "SELECT status, coalesce(final_at, updated_at) FROM outbox WHERE kind = 'request' "
        "AND reference = ? AND message_id = ?",
        [reference, message_id],
    ).fetchone()
    return (str(row[0]), float(row[1])) if row else None


def summaries(
    db: sqlite_utils.Database, *, done_with_content: bool = False
) -> list[tuple[int, str, str, str, float]]:
    """(id, kind, reference, status, when final or last changed) of every message; with
    ``done_with_content`` only finished ones that still hold their bytes (for retention)."""
    where = ""
    if done_with_content:
        done = ", ".join(f"'{s}'" for s in DONE)
        where = f"WHERE length(mime) > 0 AND status IN ({done})"
    return [
        (int(i), str(k), str(r), str(s), float(at))
        for i, k, r, s, at in db.execute(
            "SELECT id, kind, reference, status, coalesce(final_at, updated_at) "  # noqa: S608
            f"FROM outbox {where}"
        )
    ]


def empty_content(db: sqlite_utils.Database, ids: list[int]) -> None:
    """Empty the bytes of finished messages (the retention purge; a trigger refuses others)."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" for _ in chunk)
        db.execute(f"UPDATE outbox SET mime = x'' WHERE id IN ({marks})", chunk)  # noqa: S608


def delete_rows(db: sqlite_utils.Database, ids: list[int]) -> None:
    """Delete messages (the retention purge of old metadata)."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" for _ in chunk)
        db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608


def sent_between(db: sqlite_utils.Database, start: float, end: float) -> dict[str, float]:
    """message_id -> when the relay took it, for messages sent in [start, end) (epoch s)."""
    return {
        str(mid): float(at)
        for mid, at in db.execute(
            "SELECT message_id, final_at FROM outbox WHERE status = 'sent' "
            "AND final_at >= ? AND final_at < ?",
            [start, end],
        )
    }
