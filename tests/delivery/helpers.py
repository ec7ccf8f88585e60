"""Shared parts of the delivery room's tests: settings for a test relay, a controllable
clock, queueing with an audit row, and the checks that nothing about a patient leaked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from securemail.access import Person
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.config import Settings
from securemail.delivery import outbox
from securemail.delivery.outbox import rows_of
from securemail.message.notify import Notice
from securemail.openpgp.keyring import SealedMessage
from securemail.store import Store
from tests.smtp_fixtures import (
    GATEWAY_ADDRESS,
    MARKER,
    PgpForTests,
    Relay,
    make_sealed_for_tests,
)

ROOT = Path(__file__).resolve().parents[2]
GP = Person(
    user_id=7,
    username="dr.visser",
    name="Dr. Visser",
    role="gp",
    org_id=1,
    org_code="01-123456",
    access_point="web",
)
ADMIN = Person(user_id=1, username="beheer", name="Beheer", role="admin", org_id=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Finals:
    """An on_final hook that records (id, status) per call."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[int, str]] = []
        self.fail_times = fail_times

    async def __call__(self, row: outbox.OutboxRow) -> None:
        self.calls.append((row.id, row.status))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("exchange module hiccup")


def settings_for(tmp_path: Path, relay: Relay, cafile: str, **delivery: Any) -> Settings:
    d = {
        "retry_initial_seconds": 10.0,
        "retry_max_seconds": 40.0,
        "give_up_after_seconds": 3600.0,
        "lease_seconds": 3.0,
        "poll_seconds": 0.02,
    }
    d.update(delivery)
    smtp = {
        "host": "127.0.0.1",
        "port": relay.port,
        "cafile": cafile,
        "timeout_seconds": 1.0,
        "max_connections": 2,
    }
    if relay.mode == "implicit":
        smtp["starttls"] = "implicit"
    return Settings(home=tmp_path).replace(
        smtp=smtp,
        delivery=d,
        gateway={"from_address": GATEWAY_ADDRESS, "base_url": "https://gateway.test"},
    )


def enqueue_with_audit(db: Any, message: SealedMessage | Notice, now: float | None) -> int:
    """What the exchange module does: enqueue and its own audit row in one write."""
    row_id = outbox.enqueue(
        db,
        message,
        actor=GP,
        now=time.time() if now is None else now,
        patient_id="P-000042",
        sender_org="01-123456",
        recipient_org="VV-0042",
    )
    code = "request.send" if isinstance(message, SealedMessage) else "notice.send"
    audit.record(
        db,
        AuditEvent.of(
            GP, code, object_type="request", object_id=message.reference, patient_id="P-000042"
        ),
    )
    return row_id


def queue_many(store: Store, pgp: PgpForTests, n: int, now: float | None = None) -> list[str]:
    sealed = [make_sealed_for_tests(pgp, reference=f"UVZ-2026-{i:06d}") for i in range(n)]
    store.write_sync(lambda db: [enqueue_with_audit(db, s, now) for s in sealed])
    return [s.message_id for s in sealed]


def all_rows(store: Store) -> list[dict[str, Any]]:
    return store.read_sync(lambda db: rows_of(db.execute("SELECT * FROM outbox ORDER BY id")))


def audit_rows(store: Store) -> list[dict[str, Any]]:
    return store.read_sync(
        lambda db: rows_of(db.execute("SELECT * FROM audit_events ORDER BY seq"))
    )


def codes(store: Store) -> list[str]:
    return [r["event_code"] for r in audit_rows(store)]


async def eventually(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def assert_no_patient_data(store: Store, relay: Relay | None = None) -> None:
    for r in audit_rows(store):
        assert MARKER not in repr(r)
    for r in all_rows(store):
        assert MARKER.encode() not in r["mime"]
        assert MARKER not in r["last_error"] + r["relay_reply"]
    if relay is not None:
        assert MARKER.encode() not in bytes(relay.received)
        assert b"Jansen" not in bytes(relay.received)
