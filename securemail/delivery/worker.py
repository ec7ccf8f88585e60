"""The delivery worker: takes due outbox rows under a lease and hands them to the relay.

Invariants:

1. A row is sent only while this worker holds its lease (``status = 'sending'``,
   ``lease_owner = owner_id``), only after ``before_send`` allowed it and only after
   ``sealcheck.require_sendable`` passed on the exact bytes about to go out.
2. Every outcome commits with its audit row in one write, conditional on the lease
   still being ours; a worker that lost its lease changes nothing.
3. A final outcome (sent, failed, stopped) is reached once per delivery cycle.
   ``on_final`` runs after that commit; until it returns, the row stays unhandled and
   any worker calls ``on_final`` again once the lease lapses (at least once, so the
   hook must be idempotent; in normal operation: exactly once).
4. Per relay (host, port) at most ``smtp.max_connections`` sessions are open in this
   process (Exchange answers 432 4.3.2 to a sender that opens more).
5. Graceful stop: the message in flight finishes (every step is bounded by
   ``smtp.timeout_seconds``), claimed rows not yet started are released. After a
   crash, rows left in 'sending' are claimed again when their lease lapses; the
   repeat carries the same Message-ID.
6. An attempt whose answer never came after DATA (a timeout, a dropped connection) may
   have delivered: it is recorded as such (``uncertain_attempts``, a ``*.uncertain`` audit
   row) and retried with the same bytes and Message-ID, never counted as not sent.
7. The outcome of a 250 is committed ahead of every write already waiting on the store's
   writer (``Store.write(first=True)``), before this worker does anything else: the
   window in which a crash repeats a delivered message is one commit, not a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
import sqlite_utils
from sqlite_utils import Migrations

from securemail import config
from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.config import DeliverySettings, Settings
from securemail.delivery import relay
from securemail.delivery.outbox import (
    EVENTS,
    FINAL,
    UNCERTAIN_EVENTS,
    OutboxRow,
    audit_event,
    rows_of,
)
from securemail.delivery.relay import Outcome
from securemail.errors import ConfigError, SecuremailError
from securemail.message import autocrypt
from securemail.message.sealcheck import NotSealedError, require_sendable
from securemail.store import Store, open_store

log = logging.getLogger("securemail.delivery")  # the name it had as a flat module

Hook = Callable[[OutboxRow], Awaitable[Any]]

_CLAIM = """
SELECT * FROM outbox
WHERE (status IN ('queued', 'retrying') AND next_attempt_at <= :now
       AND (lease_until IS NULL OR lease_until < :now))
   OR (status = 'sending' AND lease_until < :now)
ORDER BY next_attempt_at, id LIMIT :limit
"""
_AUDIT_OUTCOME = {"sent": "success", "retrying": "error", "failed": "error", "stopped": "refused"}


#: A message is given up only after this many attempts, however much time seems to have
#: passed: a clock step alone never fails a request.
MIN_ATTEMPTS_TO_GIVE_UP = 2
#: A wall clock that moves this much more or less than the monotonic clock between two
#: readings has been stepped (NTP slewing is far slower).
STEP_TOLERANCE_SECONDS = 2.0


class SteadyClock:
    """Wall-clock seconds (for stamps other processes read) that never step: between two
    readings the time advances exactly as the monotonic clock did; a step of the wall clock
    (an admin, a VM resume, a bad NTP source) is logged and absorbed into an offset, so
    leases, back-off and give-up in this process are measured in elapsed time."""

    def __init__(self, wall: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._offset = 0.0
        self._last, self._last_mono = wall(), monotonic()

    def __call__(self) -> float:
        mono = self._monotonic()
        now = self._wall() + self._offset
        expected = self._last + (mono - self._last_mono)
        if abs(now - expected) > STEP_TOLERANCE_SECONDS:
            log.warning("wall clock stepped %+.0f s; delivery keeps elapsed time", now - expected)
            self._offset += expected - now
            now = expected
        self._last, self._last_mono = now, mono
        return now


def process_owner(role: str) -> str:
    """A lease owner naming this process (host:pid), so the trail says which one held it."""
    return f"{role}-{socket.gethostname()}:{os.getpid()}"


def backoff(attempts: int, d: DeliverySettings, rng: Callable[[], float]) -> float:
    """Delay after the attempts-th failed attempt: exponential, capped, "equal jitter".

    base = min(retry_max, initial * 2**(attempts-1)); delay in [base/2, base]. Half the
    base is kept so delays still grow while jitter spreads a burst of retries.
    """
    base = min(d.retry_max_seconds, d.retry_initial_seconds * 2 ** min(attempts - 1, 60))
    return float(base / 2 + rng() * base / 2)


def claim(
    db: sqlite_utils.Database,
    *,
    owner: str,
    now: float,
    lease_seconds: float,
    limit: int,
    source_id: str,
) -> list[OutboxRow]:
    """Lease up to limit due rows to owner; rows whose earlier lease lapsed (a crashed
    worker) are taken too, counted as an attempt and audited as a repeat."""
    claimed = []
    for r in rows_of(db.execute(_CLAIM, {"now": now, "limit": limit})):
        lapsed = r["status"] == "sending"
        db.execute(
            "UPDATE outbox SET status = 'sending', lease_owner = ?, lease_until = ?,"
            " updated_at = ?, attempts = attempts + ? WHERE id = ?",
            [owner, now + lease_seconds, now, int(lapsed), r["id"]],
        )
        r.update(status="sending", attempts=r["attempts"] + int(lapsed))
        row = OutboxRow.from_db(r)
        if lapsed:
            detail = (
                f"lease of {r['lease_owner']} lapsed; attempt may be repeated with the"
                f" same Message-ID {r['message_id']}"
            )
            event = audit_event(
                SYSTEM, EVENTS[(row.kind, "retrying")], row, outcome="error", detail=detail
            )
            audit.record(db, event)
        claimed.append(row)
    return claimed


def renew(db: sqlite_utils.Database, ids: Sequence[int], *, owner: str, until: float) -> None:
    """Extend our lease on rows claimed but not yet attempted."""
    for row_id in ids:
        db.execute(
            "UPDATE outbox SET lease_until = ?"
            " WHERE id = ? AND status = 'sending' AND lease_owner = ?",
            [until, row_id, owner],
        )


def release(db: sqlite_utils.Database, ids: Sequence[int], *, owner: str, now: float) -> None:
    """Give back rows claimed but not attempted (graceful stop); due again at once."""
    for row_id in ids:
        db.execute(
            "UPDATE outbox SET status = CASE WHEN attempts = 0 THEN 'queued' ELSE 'retrying' END,"
            " lease_owner = NULL, lease_until = NULL, updated_at = ?"
            " WHERE id = ? AND status = 'sending' AND lease_owner = ?",
            [now, row_id, owner],
        )


def finish(
    db: sqlite_utils.Database,
    row_id: int,
    outcome: Outcome,
    *,
    owner: str,
    now: float,
    settings: Settings,
    rng: Callable[[], float],
    hook_pending: bool,
) -> OutboxRow | None:
    """Record outcome for a row we hold, with its audit row; None if the lease is no longer
    ours (another worker took over: it will record the outcome, not us)."""
    found = rows_of(
        db.execute(
            "SELECT * FROM outbox WHERE id = ? AND status = 'sending' AND lease_owner = ?",
            [row_id, owner],
        )
    )
    if not found:
        return None
    r = found[0]
    d = settings.delivery
    attempts = r["attempts"] + (outcome.kind != "stopped")
    sets: dict[str, Any] = {
        "attempts": attempts,
        "updated_at": now,
        "lease_owner": None,
        "lease_until": None,
        "stop_reason": outcome.why,
    }
    if outcome.kind == "uncertain":  # the relay may hold it: same bytes go again (invariant 6)
        sets["uncertain_attempts"] = r["uncertain_attempts"] + 1
    if outcome.kind == "sent":
        new, sets["relay_reply"], sets["last_error"] = "sent", outcome.detail, ""
    elif outcome.kind == "permanent":
        new, sets["last_error"] = "failed", outcome.detail
    elif outcome.kind == "stopped":
        new = "stopped"
    elif now >= r["queued_at"] + d.give_up_after_seconds and attempts >= MIN_ATTEMPTS_TO_GIVE_UP:
        new, sets["stop_reason"] = "failed", "smtp.gave_up"
        sets["last_error"] = (
            f"gave up after {attempts} attempts in {now - r['queued_at']:.0f} s;"
            f" last: {outcome.detail}"
        )
    else:
        deadline = r["queued_at"] + d.give_up_after_seconds
        new, sets["last_error"] = "retrying", outcome.detail
        delay = now + backoff(attempts, d, rng)
        sets["next_attempt_at"] = min(delay, deadline) if now < deadline else delay
    if new in FINAL:
        sets["final_at"] = now
        if hook_pending:  # keep the lease while on_final runs; see invariant 3
            sets["lease_owner"], sets["lease_until"] = owner, now + d.lease_seconds
        else:
            sets["final_handled_at"] = now
    sets["status"] = new
    cols = ", ".join(f"{k} = ?" for k in sets)  # our own column names, values bound
    db.execute(
        f"UPDATE outbox SET {cols} WHERE id = ? AND status = 'sending' AND lease_owner = ?",  # noqa: S608
        [*sets.values(), row_id, owner],
    )
    r.update(sets)
    row = OutboxRow.from_db(r)
    detail = f"{sets.get('relay_reply') or sets.get('last_error') or outcome.detail}"
    detail += f"; message_id={row.message_id}; attempt={attempts}"
    code = EVENTS[(row.kind, new)]
    if outcome.kind == "uncertain" and new == "retrying":
        code = UNCERTAIN_EVENTS[row.kind]
        detail += "; sent again with the same Message-ID"
    event = audit_event(SYSTEM, code, row, outcome=_AUDIT_OUTCOME[new], detail=detail)
    audit.record(db, event)
    return row


def claim_finals(
    db: sqlite_utils.Database, *, owner: str, now: float, lease_seconds: float, limit: int = 20
) -> list[OutboxRow]:
    """Lease final rows whose on_final never completed (a worker died or the hook failed)."""
    rows = rows_of(
        db.execute(
            "SELECT * FROM outbox WHERE final_at IS NOT NULL AND final_handled_at IS NULL"
            " AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?",
            [now, limit],
        )
    )
    for r in rows:
        db.execute(
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
            [owner, now + lease_seconds, r["id"]],
        )
    return [OutboxRow.from_db(r) for r in rows]


def mark_handled(db: sqlite_utils.Database, row_id: int, *, owner: str, now: float) -> None:
    db.execute(
        "UPDATE outbox SET final_handled_at = ?, lease_owner = NULL, lease_until = NULL"
        " WHERE id = ? AND lease_owner = ? AND final_handled_at IS NULL",
        [now, row_id, owner],
    )


class Worker:
    """Delivers due outbox rows; see the module docstring for what it guarantees."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        owner_id: str | None = None,
        on_final: Hook | None = None,
        before_send: Hook | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        rng: Callable[[], float] = random.random,
        batch_size: int = 10,
        autocrypt: Mapping[str, str] | None = None,
        sign_notice: Callable[[bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        """``clock``: wall seconds; ``monotonic``: elapsed seconds that guard it against steps
        (SteadyClock). By default time.monotonic with the real clock, and the given clock
        itself when a test gives one (its jumps are then the time that passed)."""
        self._timeout = settings.smtp.timeout_seconds
        if settings.delivery.lease_seconds < 3 * self._timeout:
            # hook + connect + send, each bounded by the timeout, must fit in one lease.
            raise ConfigError(
                "[delivery] lease_seconds must be at least 3 x [smtp] timeout_seconds",
                setting="[delivery] lease_seconds",
            )
        self.settings, self.store = settings, store
        self.owner_id = owner_id or f"{process_owner('worker')}:{uuid.uuid4().hex[:8]}"
        self.on_final, self.before_send = on_final, before_send
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        self.clock: Callable[[], float] = SteadyClock(clock, monotonic)
        self.rng, self.batch_size = rng, batch_size
        self._tls = relay.tls_context(settings)  # a bad cafile fails here, at startup
        self._wake = asyncio.Event()
        #: Called with the seconds from a 250 to its committed "sent" (benchmarks/).
        self.on_commit_window: Callable[[float], None] | None = None
        #: From address -> Autocrypt header value (message.autocrypt), added at this edge.
        self.autocrypt: Mapping[str, str] = autocrypt or {}
        #: Checked notice bytes -> the same notice signed by the gateway (multipart/signed).
        self.sign_notice = sign_notice

    def wake(self) -> None:
        """Something was queued in this process: idle slots look now, not after poll_seconds.
        (Call on the worker's event loop; other processes' rows are found by polling.)"""
        self._wake.set()

    # -- loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until stop is set; then let in-flight sends finish and release the rest."""
        slots = [
            asyncio.create_task(self._slot(stop), name=f"outbox-{i}")
            for i in range(self.settings.smtp.max_connections)
        ]
        try:
            await stop.wait()
            _, late = await asyncio.wait(slots, timeout=4 * self._timeout + 1)
            if late:  # cancelled mid-send: those rows are taken again when the lease lapses
                log.warning(
                    "outbox worker %s: %d slot(s) cancelled at stop", self.owner_id, len(late)
                )
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)

    async def _slot(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.run_once(stop):
                    continue
            except Exception:  # boundary: the worker loop logs, waits and carries on
                log.error("outbox worker %s: round failed", self.owner_id, exc_info=True)
            await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait poll_seconds, or less when stopped or woken."""
        if self._wake.is_set():
            self._wake.clear()
            return
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                waits,
                timeout=self.settings.delivery.poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in waits:
                w.cancel()
        self._wake.clear()

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """One round: claim a batch of due rows and deliver it over one session; when
        nothing was due, run on_final for rows that still need it. Returns rows claimed."""
        stop = stop or asyncio.Event()
        async with relay.destination_semaphore(self.settings):
            if stop.is_set():
                return 0
            now = self.clock()
            batch = await self.store.write(
                lambda db: claim(
                    db,
                    owner=self.owner_id,
                    now=now,
                    lease_seconds=self.settings.delivery.lease_seconds,
                    limit=self.batch_size,
                    source_id=self.settings.gateway.source_id,
                )
            )
            if batch:
                await self._deliver(batch, stop)
        if not batch and self.on_final is not None:
            now = self.clock()
            finals = await self.store.write(
                lambda db: claim_finals(
                    db,
                    owner=self.owner_id,
                    now=now,
                    lease_seconds=self.settings.delivery.lease_seconds,
                )
            )
            for row in finals:
                await self._call_on_final(row, ())
        return len(batch)

    # -- one batch over one session --------------------------------------------------------
    async def _deliver(self, batch: list[OutboxRow], stop: asyncio.Event) -> None:
        smtp: aiosmtplib.SMTP | None = None
        todo = list(batch)
        try:
            while todo:
                if stop.is_set():
                    await self._release([r.id for r in todo])
                    return
                row = todo.pop(0)
                outcome = await self._check(row)
                if outcome is None:
                    if smtp is None:
                        try:
                            async with asyncio.timeout(self._timeout):
                                smtp = await relay.connect(self.settings, self._tls)
                        except Exception as exc:  # every row of the batch meets the same relay
                            failed = relay.classify(exc, "session")
                            rest = [row, *todo]
                            for i, r in enumerate(rest):
                                await self._finish(r, failed, [x.id for x in rest[i + 1 :]])
                            return
                    outcome = await self._send(smtp, row)
                    if outcome.kind != "sent" and not outcome.keep_connection:
                        relay.discard(smtp)
                        smtp = None
                await self._finish(row, outcome, [r.id for r in todo])
        finally:
            if smtp is not None:
                # the relay may have gone; goodbye frees the socket whatever happens
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout):
                        await relay.goodbye(smtp)

    async def _release(self, ids: list[int]) -> None:
        now = self.clock()
        await self.store.write(lambda db: release(db, ids, owner=self.owner_id, now=now))

    async def _check(self, row: OutboxRow) -> Outcome | None:
        """None when row may go now; else the outcome that stops this attempt."""
        if self.before_send is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.before_send(row)
            except SecuremailError as err:
                return Outcome("stopped", None, f"stopped before sending: {err.code}", why=err.code)
            except Exception as exc:  # a check that cannot decide never lets a message go
                log.error("outbox %d: before_send raised %s", row.id, type(exc).__name__)
                return Outcome("transient", None, f"before_send failed: {type(exc).__name__}")
        try:
            # defence in depth: check again the exact bytes about to go
            require_sendable(row.kind, self._bytes(row), self.settings)
        except NotSealedError as err:
            log.error(
                "outbox %d (%s): refused at the SMTP edge: %s", row.id, row.reference, err.reason
            )
            return Outcome("permanent", None, err.reason, why=err.code)
        return None

    def _bytes(self, row: OutboxRow) -> bytes:
        """The exact bytes that go: the stored message, with the gateway's Autocrypt header
        when its From is a gateway address (message.autocrypt says why only then)."""
        return autocrypt.add(row.mime, self.autocrypt)

    async def _send(self, smtp: aiosmtplib.SMTP, row: OutboxRow) -> Outcome:
        """One message transaction. MAIL and RCPT are asked one by one, so that a timeout or a
        dropped connection after DATA (the relay may have taken the message) is told apart
        from one before it (it certainly did not)."""
        phase: relay.Phase = "message"
        data = self._bytes(row)  # with the Autocrypt header of gateway-From mail
        if row.kind == "notice" and self.sign_notice is not None:
            # signed after _check passed its exact text: the signature adds, changes nothing
            try:
                data = await self.sign_notice(data)
            except SecuremailError as err:
                log.error("outbox %d: notice not signed: %s", row.id, err.code)
                return Outcome("transient", None, f"notice not signed: {err.code}")
        try:
            async with asyncio.timeout(self._timeout):
                await smtp.mail(row.sender, options=relay.size_option(smtp, data))
                await smtp.rcpt(row.recipient)
                phase = "data"
                reply = await smtp.data(data)
        except Exception as exc:  # classified by type: 4xx/5xx/TLS/timeout/connection
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                await relay.reset_quietly(smtp, self._timeout)  # the session stays usable
            return relay.classify(exc, phase)
        return Outcome("sent", 250, relay.one_line(reply.message))

    async def _finish(self, row: OutboxRow, outcome: Outcome, todo: Sequence[int]) -> None:
        now, lease = self.clock(), self.settings.delivery.lease_seconds

        def tx(db: sqlite_utils.Database) -> OutboxRow | None:
            done = finish(
                db,
                row.id,
                outcome,
                owner=self.owner_id,
                now=now,
                settings=self.settings,
                rng=self.rng,
                hook_pending=self.on_final is not None,
            )
            renew(db, todo, owner=self.owner_id, until=now + lease)
            return done

        t0 = time.perf_counter()
        # A 250 jumps the writer's queue: see invariant 7.
        done = await self.store.write(tx, first=outcome.kind == "sent")
        if outcome.kind == "sent" and self.on_commit_window is not None:
            self.on_commit_window(time.perf_counter() - t0)
        if done is None:
            log.warning("outbox %d: lease lost before recording %s", row.id, outcome.kind)
            return
        log.info("outbox %d (%s) %s: %s", done.id, done.reference, done.status, outcome.detail)
        if done.status in FINAL and self.on_final is not None:
            await self._call_on_final(done, todo)

    async def _call_on_final(self, row: OutboxRow, todo: Sequence[int]) -> None:
        if self.on_final is None:
            return
        ok = False
        try:
            async with asyncio.timeout(self._timeout):
                await self.on_final(row)
            ok = True
        except Exception as exc:  # retried when the lease lapses (invariant 3)
            log.error("outbox %d: on_final raised %s; will retry", row.id, type(exc).__name__)
        now, lease = self.clock(), self.settings.delivery.lease_seconds

        def tx(db: sqlite_utils.Database) -> None:
            if ok:
                mark_handled(db, row.id, owner=self.owner_id, now=now)
            renew(db, todo, owner=self.owner_id, until=now + lease)

        await self.store.write(tx)


def run_worker_process(
    home: str | Path,
    *,
    on_final: Hook | None = None,
    before_send: Hook | None = None,
    migrations: Sequence[Migrations] = (),
) -> int:
    """Run a worker for the gateway at home until SIGTERM or SIGINT; 0 after a graceful stop.

    ``migrations``: the sets to apply first (``securemail.home.MIGRATIONS``); none by
    default, for a home that ``securemail init`` or the server has migrated."""
    settings = config.load(home)
    store = open_store(settings.db_path, migrations)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = Worker(settings, store, on_final=on_final, before_send=before_send)
        log.info("outbox worker %s started", worker.owner_id)
        await worker.run(stop)
        log.info("outbox worker %s stopped", worker.owner_id)

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
