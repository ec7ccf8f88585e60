"""Orders that stay valid for as long as they should: an order's end and evaluation dates,
kept as metadata, a reminder to the GP before each, and on expiry "verlopen" on both sides
with a stop notice to the team.

Invariants:
- ``order_dates`` holds the start, end and evaluation dates of every signed order (not a
  withdrawal), written in the send's own transaction; they are dates, not patient content,
  so they survive the content purge for as long as the request's row lives;
- each signal (``evaluation_reminder``, ``end_reminder``, ``expired``) is given at most once
  per order: its ``order_signals`` row (primary key reference + kind) is inserted in the
  same transaction as its audit row and notices, and only a fresh insert signals, so
  repeated, concurrent or restarted checks never remind twice;
- an order counts while it is open or answered and not declined; a superseded (changed,
  extended) or withdrawn order gets no more signals;
- the end date is the last day the order covers: it is "verlopen" from the next day (on the
  deadline calendar's time zone); the reminders come ``[deadlines] order_reminder_days``
  before the evaluation and the end date;
- the team that accepted an order gets the end reminder too (``order_end_team``), with the
  GP's and under the same signal row, so once;
- notices carry the reference only; the team's stop notice is risk-reducing and never
  passes the consent register;
- an order the team ended (``order_ends``, written by ``securemail.exchange.order_end``)
  gets no more signals: no reminder, no "verlopen", no stop notice. The fact and moment of
  the end are metadata and live as long as the request's row; the reason and free text are
  content (sealed, ``contentbox.SEALED_COLUMNS``) and go with the content purge.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox, deadlines
from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.form import request as forms
from securemail.form.kinds import RequestDocument
from securemail.message import notify
from securemail.region import directory
from securemail.services import Services

log = logging.getLogger("securemail.orders")

MIGRATIONS = Migrations("securemail.orders")

EVALUATION_REMINDER, END_REMINDER, EXPIRED = "evaluation_reminder", "end_reminder", "expired"

#: The answer status of an order the team took on: only that team is reminded of its end.
ACCEPTED = "geaccepteerd"


@MIGRATIONS(name="0001_order_dates")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE order_dates (
            reference TEXT PRIMARY KEY,
            start_date TEXT NOT NULL,
            end_date TEXT NOT NULL DEFAULT '',          -- '' = until further notice
            evaluation_date TEXT NOT NULL DEFAULT '',
            recorded_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE order_signals (
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,         -- evaluation_reminder | end_reminder | expired
            signalled_at TEXT NOT NULL,
            PRIMARY KEY (reference, kind))"""
    )


@MIGRATIONS(name="0002_order_ends")
def _m2(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE order_ends (
            reference TEXT PRIMARY KEY,     -- one end per order: a second insert fails
            team_id INTEGER NOT NULL,       -- the team that ended it (the one that accepted)
            ended_by_user INTEGER NOT NULL,
            ended_at TEXT NOT NULL,
            content TEXT NOT NULL DEFAULT '')  -- sealed JSON {reason, text}; '' when purged"""
    )


#: Why a team ends an accepted order: code -> Dutch label (the form's options, the page,
#: the practice's sealed copy). The code itself is health data ("overleden"): content.
END_REASONS: dict[str, str] = {
    "zorg_beeindigd": "Zorg beëindigd (doel bereikt of niet meer nodig)",
    "verhuisd": "Cliënt verhuisd",
    "overleden": "Cliënt overleden",
    "bekwaamheid_vervallen": "Bekwaamheid voor de handeling niet meer aanwezig",
    "anders": "Anders (zie toelichting)",
}


def end_of(db: sqlite_utils.Database, reference: str) -> dict[str, Any] | None:
    """The team's end of the order with its reason opened (for the request page, which is
    an audited request.view), or None; ``reason`` None once the content was purged."""
    row = db.execute(
        "SELECT e.ended_at, t.name, t.address, e.content FROM order_ends e "
        "JOIN teams t ON t.id = e.team_id WHERE e.reference = ?",
        [reference],
    ).fetchone()
    if row is None:
        return None
    text = contentbox.open_value(db, "order_ends", "content", reference, row[3])
    content = json.loads(text) if text else {}
    reason = content.get("reason")
    return {
        "ended_at": row[0],
        "team_name": row[1],
        "team_address": row[2],
        "reason": reason,
        "reason_nl": END_REASONS.get(reason or "", reason),
        "text": content.get("text") or "",
    }


def record(db: sqlite_utils.Database, reference: str, req: RequestDocument, now: str) -> None:
    """Keep a signed order's dates (in the send's transaction); a withdrawal has none, nor
    a care request without reserved lines (no period: no Wet BIG order to run out)."""
    if req.kind == "intrekking":
        return
    if isinstance(req, forms.ExecutionRequest):
        period = req.period
        dates = (
            period.start_date.isoformat(),
            period.end_date.isoformat() if period.end_date else "",
            period.evaluation_date.isoformat() if period.evaluation_date else "",
        )
    else:  # a declarative kind: its signed document, dates as ISO text already
        given = req.document.get("period")
        if not isinstance(given, Mapping) or not given.get("start_date"):
            return
        dates = (
            str(given.get("start_date") or ""),
            str(given.get("end_date") or ""),
            str(given.get("evaluation_date") or ""),
        )
    db.table("order_dates").insert(
        {
            "reference": reference,
            "start_date": dates[0],
            "end_date": dates[1],
            "evaluation_date": dates[2],
            "recorded_at": now,
        },
        replace=True,
    )


def order_state(db: sqlite_utils.Database, reference: str) -> dict[str, Any] | None:
    """The order's dates and signals for the pages and the API (None for a withdrawal)."""
    row = db.execute(
        "SELECT start_date, end_date, evaluation_date FROM order_dates WHERE reference = ?",
        [reference],
    ).fetchone()
    if row is None:
        return None
    signals = {
        k: at
        for k, at in db.execute(
            "SELECT kind, signalled_at FROM order_signals WHERE reference = ?", [reference]
        )
    }
    ended = db.execute(
        "SELECT e.ended_at, t.address FROM order_ends e JOIN teams t ON t.id = e.team_id "
        "WHERE e.reference = ?",
        [reference],
    ).fetchone()
    return {
        "start_date": row[0],
        "end_date": row[1] or None,
        "evaluation_date": row[2] or None,
        "expired": EXPIRED in signals,
        "expired_at": signals.get(EXPIRED),
        "reminded": sorted(k for k in signals if k != EXPIRED),
        # the fact and moment of the team's end (metadata; the reason is content)
        "ended": ended is not None,
        "ended_at": ended[0] if ended else None,
        "ended_by_team": ended[1] if ended else None,
    }


def practice_work(db: sqlite_utils.Database, org_id: int) -> list[dict[str, Any]]:
    """The GP's work: this practice's orders with a reminder, an expiry or ended by the
    team (signal ``ended``, replacing its earlier signals), newest first (references, dates
    and the team only; the caller has checked the actor's practice)."""
    rows = db.execute(
        "SELECT s.reference, s.kind, s.signalled_at, o.end_date, o.evaluation_date, '' "
        "FROM order_signals s JOIN order_dates o ON o.reference = s.reference "
        "JOIN requests r ON r.reference = s.reference "
        "WHERE r.practice_org_id = ? AND r.state IN ('open', 'answered') "
        "AND NOT EXISTS (SELECT 1 FROM order_ends e WHERE e.reference = s.reference) "
        "UNION ALL "
        "SELECT e.reference, 'ended', e.ended_at, o.end_date, o.evaluation_date, t.name "
        "FROM order_ends e JOIN order_dates o ON o.reference = e.reference "
        "JOIN requests r ON r.reference = e.reference JOIN teams t ON t.id = e.team_id "
        "WHERE r.practice_org_id = ? AND r.state = 'answered' "
        "ORDER BY 3 DESC LIMIT 200",
        [org_id, org_id],
    ).fetchall()
    return [
        {"reference": r[0], "signal": r[1], "at": r[2], "end_date": r[3] or None,
         "evaluation_date": r[4] or None, "team_name": r[5] or None}
        for r in rows
    ]  # fmt: skip


def _signal_once(db: sqlite_utils.Database, reference: str, kind: str, now: str) -> bool:
    cur = db.execute(
        "INSERT OR IGNORE INTO order_signals (reference, kind, signalled_at) VALUES (?, ?, ?)",
        [reference, kind, now],
    )
    return cur.rowcount == 1


def _due(today: date, lead: timedelta, end: str, evaluation: str) -> list[tuple[str, str]]:
    """Which signals are due today for an order with these dates (kind, the date)."""
    out: list[tuple[str, str]] = []
    if evaluation and today >= date.fromisoformat(evaluation) - lead:
        out.append((EVALUATION_REMINDER, evaluation))
    if end:
        last = date.fromisoformat(end)
        if today > last:
            out.append((EXPIRED, end))
        elif today >= last - lead:
            out.append((END_REMINDER, end))
    return out


_NOTICES = {
    EVALUATION_REMINDER: notify.notice_order_evaluation,
    END_REMINDER: notify.notice_order_end,
    EXPIRED: notify.notice_order_expired,
}
_EVENTS = {EVALUATION_REMINDER: "request.remind", END_REMINDER: "request.remind",
           EXPIRED: "request.expire"}  # fmt: skip


def check(svc: Services, db: sqlite_utils.Database, now: datetime) -> list[tuple[str, str]]:
    """Give every signal that is due at ``now`` once (run by the deadline watch, in its
    write); returns (reference, kind) for each signal given."""
    today = deadlines.local(now, svc.settings.deadlines).date()
    lead = timedelta(days=svc.settings.deadlines.order_reminder_days)
    stamp = svc.now_iso()
    given: list[tuple[str, str]] = []
    rows = db.execute(
        "SELECT o.reference, o.end_date, o.evaluation_date, r.practice_org_id, r.team_id, "
        "r.patient_bsn, r.answer_status "
        "FROM order_dates o JOIN requests r ON r.reference = o.reference "
        "WHERE r.state IN ('open', 'answered') AND r.answer_status != 'afgewezen' "
        "AND r.kind != 'intrekking' AND (o.end_date != '' OR o.evaluation_date != '') "
        # an order the team ended gets no reminder, no verlopen and no stop notice
        "AND NOT EXISTS (SELECT 1 FROM order_ends e WHERE e.reference = o.reference)"
    ).fetchall()
    for reference, end, evaluation, practice_id, team_id, bsn, answer_status in rows:
        for kind, day in _due(today, lead, end, evaluation):
            if not _signal_once(db, reference, kind, stamp):
                continue
            _tell(svc, db, reference, kind, day, practice_id, team_id, bsn)
            if kind == END_REMINDER and answer_status == ACCEPTED:
                _tell_team_end(svc, db, reference, team_id, practice_id)
            given.append((reference, kind))
    if given:
        log.info("orders: %d reminder(s) or expiry signal(s) given", len(given))
    return given


def _tell(
    svc: Services,
    db: sqlite_utils.Database,
    reference: str,
    kind: str,
    day: str,
    practice_id: int,
    team_id: int,
    bsn: str,
) -> None:
    practice = directory.org_by_id(db, practice_id)
    team = directory.team_by_id(db, team_id)
    audit.record(
        db,
        audit.AuditEvent.of(
            SYSTEM,
            _EVENTS[kind],
            patient_id=bsn,
            object_type="request",
            object_id=reference,
            sender_org=practice.code,
            recipient_org=team.address,
            outcome_detail=f"{kind}; date={day}",
        ),
    )
    if practice.notify_address:
        notice = _NOTICES[kind](reference, practice.notify_address, svc.settings)
        outbox.enqueue(
            db, notice, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code
        )
    if kind == EXPIRED:
        # The team stops unless an extension arrived (which supersedes this order and so
        # ends its signals): risk-reducing, never gated by the consent register.
        stop = notify.notice_order_stop(reference, team.address, svc.settings)
        outbox.enqueue(db, stop, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code)


def extension_of(earlier: Mapping[str, Any], today: date) -> dict[str, Any]:
    """A verlenging prefilled from the earlier signed order: kind verlenging, superseding it,
    the same patient, procedures and instructions; it starts the day after the earlier end
    date (today if that has passed), and the GP chooses the new end and evaluation dates.
    The moment of signing and the principal are set at the send, as for every request."""
    data = {k: v for k, v in earlier.items() if k not in ("reference", "supersedes", "issued_at")}
    end = str((earlier.get("period") or {}).get("end_date") or "")
    start = date.fromisoformat(end) + timedelta(days=1) if end else today
    return {
        **data,
        "kind": "verlenging",
        "supersedes": str(earlier["reference"]),
        "period": {"start_date": max(start, today).isoformat()},
    }


def _tell_team_end(
    svc: Services, db: sqlite_utils.Database, reference: str, team_id: int, practice_id: int
) -> None:
    """The team that accepted the order hears of its end date with the GP (same signal, so
    once): care that is still needed gets a verlenging before it has to stop."""
    team = directory.team_by_id(db, team_id)
    practice = directory.org_by_id(db, practice_id)
    notice = notify.notice_order_end_team(reference, team.address, svc.settings)
    outbox.enqueue(db, notice, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code)


__all__ = [
    "END_REASONS", "END_REMINDER", "EVALUATION_REMINDER", "EXPIRED", "MIGRATIONS", "check",
    "end_of", "extension_of", "order_state",
    "practice_work", "record",
]  # fmt: skip
