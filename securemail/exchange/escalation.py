"""Deadline watch: mark overdue requests and asks, and escalate each exactly once.

Run by the web app in the background (every ``deadlines.check_seconds``) and by
``securemail deadlines check`` from cron; both call ``check``.

Invariants:
- a request is overdue when it is open (not answered, withdrawn or superseded), is not a
  withdrawal, was taken by the team's relay (``answer_due`` is set then) and ``now`` is
  past ``answer_due``; an ask when it is open and ``now`` is past ``due_at``;
- marking (``overdue_at``), the audit row (``request.overdue`` / ``ask.overdue``) and the
  one escalation notice commit in one transaction, and only rows with no mark are picked,
  so repeated runs, concurrent runs (one writer) and restarts escalate each item once;
  a passed-on request starts a fresh deadline (and can be escalated again) at its new team;
- the notice names the reference and what is late, nothing else: an unanswered request
  goes to the practice's notice address, an ask the practice has not answered goes to the
  asking team's entry address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

import sqlite_utils

from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.exchange import orders
from securemail.message import notify
from securemail.region import directory
from securemail.services import Services

log = logging.getLogger("securemail.escalation")


@dataclass(frozen=True, slots=True)
class CheckReport:
    requests: tuple[str, ...] = field(default_factory=tuple)  # references marked now
    asks: tuple[str, ...] = field(default_factory=tuple)
    orders: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (reference, signal)


def _past(due_text: str, now: datetime) -> bool:
    return bool(due_text) and datetime.fromisoformat(due_text) < now


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between an overdue request (the practice waits) and an overdue ask
    (the team waits): the table, its deadline column, the event and who is told."""

    table: str
    due_column: str
    extra_where: str
    event: str
    object_type: str
    practice_waits: bool


_REQUESTS = _Kind(
    "requests",
    "answer_due",
    "AND answer_due != '' AND kind != 'intrekking'",
    "request.overdue",
    "request",
    practice_waits=True,
)
_ASKS = _Kind("asks", "due_at", "", "ask.overdue", "ask", practice_waits=False)


def _mark(svc: Services, db: sqlite_utils.Database, now: datetime, kind: _Kind) -> list[str]:
    """Mark each overdue item once, audit it and queue one patient-free notice to the waiting
    side; the overdue_at stamp makes a second run (or a restart) do nothing."""
    marked: list[str] = []
    rows = db.execute(
        f"SELECT id, reference, {kind.due_column}, practice_org_id, team_id, patient_bsn "  # noqa: S608 (fixed names)
        f"FROM {kind.table} WHERE state = 'open' AND overdue_at = '' {kind.extra_where}"
    ).fetchall()
    stamp = svc.now_iso()
    for row_id, reference, due_text, practice_id, team_id, bsn in rows:
        if not _past(due_text, now):
            continue
        db.execute(f"UPDATE {kind.table} SET overdue_at = ? WHERE id = ?", [stamp, row_id])  # noqa: S608
        practice = directory.org_by_id(db, practice_id)
        team = directory.team_by_id(db, team_id)
        team_org = directory.org_by_id(db, team.org_id).code
        sender, recipient = (
            (practice.code, team.address) if kind.practice_waits else (team_org, practice.code)
        )
        audit.record(
            db,
            audit.AuditEvent.of(
                SYSTEM,
                kind.event,
                patient_id=bsn,
                object_type=kind.object_type,
                object_id=reference,
                sender_org=sender,
                recipient_org=recipient,
                outcome_detail=f"due={due_text}",
            ),
        )
        if kind.practice_waits:
            if practice.notify_address:
                notice = notify.notice_overdue(reference, practice.notify_address, svc.settings)
                outbox.enqueue(
                    db, notice, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code
                )
        else:
            notice = notify.notice_ask_overdue(reference, team.address, svc.settings)
            outbox.enqueue(
                db, notice, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code
            )
        marked.append(reference)
    return marked


async def check(svc: Services) -> CheckReport:
    """Mark and escalate everything that is overdue at ``svc.now()``; idempotent."""
    now = svc.now()

    def tx(db: sqlite_utils.Database) -> CheckReport:
        requests, asks = _mark(svc, db, now, _REQUESTS), _mark(svc, db, now, _ASKS)
        signals = orders.check(svc, db, now)  # reminders and expiry of orders (once each)
        return CheckReport(tuple(requests), tuple(asks), tuple(signals))

    report = await svc.store.write(tx)
    if report.requests or report.asks:
        log.info(
            "deadlines: %d request(s), %d ask(s) overdue and escalated",
            len(report.requests),
            len(report.asks),
        )
    return report


async def run(svc: Services, stop: asyncio.Event, every: float) -> None:
    """Check every ``every`` seconds until stop is set; a failed round is logged, not fatal."""
    while not stop.is_set():
        try:
            await check(svc)
        except Exception:  # the boundary of a background loop: log (ids only), go on
            log.exception("deadline check failed; retrying in %.0f s", every)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
