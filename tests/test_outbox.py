"""The outbox and its worker against real parts: sqlite files, gpg output, aiosmtpd relays
with trustme certificates, and worker processes that are killed for real.

"Exactly once" in these tests: the transport is at-least-once. Every accepted message
reaches exactly one final outcome in the outbox and in the audit trail, and arrives at
the relay at least once; a repeat (only possible when a worker dies between the relay's
250 and the commit of "sent") carries the same bytes and the same Message-ID, so the
receiving MTA or mail client keeps exactly one copy. The relay's ``mailbox()`` is that
receiving side's view; ``accepted_ids()`` is the transport's.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.config import DeliverySettings, Settings
from securemail.delivery import outbox
from securemail.delivery.outbox import NotSealedError, rows_of
from securemail.delivery.worker import Worker, backoff, claim
from securemail.errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    InputError,
    NotFoundError,
    SecuremailError,
)
from securemail.home import open_store
from securemail.message.notify import Notice, make_notice, notice_delivered, notice_failed
from securemail.openpgp.keyring import SealedMessage
from securemail.store import Store
from tests.smtp_fixtures import (
    GATEWAY_ADDRESS,
    MARKER,
    PgpForTests,
    Relay,
    make_sealed_for_tests,
    pgp_mime,
)

ROOT = Path(__file__).resolve().parent.parent
GP = Actor(
    user_id=7,
    username="dr.visser",
    name="Dr. Visser",
    role="gp",
    org_id=1,
    org_code="01-123456",
    access_point="web",
)
ADMIN = Actor(user_id=1, username="beheer", name="Beheer", role="admin", org_id=None)


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


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(tmp_path / "securemail.db")
    yield s
    s.close()


def enqueue_with_audit(db: Any, message: SealedMessage | Notice, now: float | None) -> int:
    """What the exchange module does: enqueue and its own audit row in one write."""
    row_id = outbox.enqueue(
        db,
        message,
        actor=GP,
        now=now,
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


# -- schema and enqueue -----------------------------------------------------------------------
def test_migration_creates_outbox_with_claim_indexes(store: Store) -> None:
    def schema(db: Any) -> tuple[set[str], set[str]]:
        cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)").fetchall()}
        idx = {r[1] for r in db.execute("PRAGMA index_list(outbox)").fetchall()}
        return cols, idx

    cols, idx = store.read_sync(schema)
    assert {
        "reference",
        "kind",
        "message_id",
        "mime",
        "status",
        "attempts",
        "next_attempt_at",
        "lease_owner",
        "lease_until",
        "last_error",
        "relay_reply",
        "final_at",
        "stop_reason",
    } <= cols
    assert {"outbox_due", "outbox_lease", "outbox_reference"} <= idx


@pytest.mark.parametrize("thing", [b"raw bytes", "text", {"mime": b""}, EmailMessage()])
def test_enqueue_refuses_anything_not_sealed(store: Store, thing: Any) -> None:
    with pytest.raises(TypeError):
        store.write_sync(lambda db: outbox.enqueue(db, thing, actor=GP))
    assert all_rows(store) == []


def _armor_of(text: str, header: str = "") -> str:
    import base64

    body = base64.b64encode(text.encode()).decode()
    return f"-----BEGIN PGP MESSAGE-----\n{header}\n{body}\n-----END PGP MESSAGE-----\n"


def _variants(pgp: PgpForTests, mid: str) -> dict[str, bytes]:
    good = pgp_mime(pgp.armor, message_id=mid, sender=GATEWAY_ADDRESS, recipient="t@zorg.test")
    plain = EmailMessage()
    plain["Message-ID"] = mid
    plain.set_content(MARKER)
    return {
        "text/plain": plain.as_bytes(),
        "base64 plaintext dressed as armor": pgp_mime(
            _armor_of(MARKER), message_id=mid, sender=GATEWAY_ADDRESS, recipient="t@zorg.test"
        ),
        "armor Comment header": pgp_mime(
            pgp.armor.replace("\n\n", f"\nComment: {MARKER}\n\n", 1),
            message_id=mid,
            sender=GATEWAY_ADDRESS,
            recipient="t@zorg.test",
        ),
        "preamble text": good.replace(b"\n\n--=", f"\n\n{MARKER}\n--=".encode(), 1),
        "wrong protocol": good.replace(b'application/pgp-encrypted"', b'application/x"', 1),
        "multipart/mixed": good.replace(b"multipart/encrypted", b"multipart/mixed", 1),
        "truncated ciphertext": pgp_mime(
            "\n".join(pgp.armor.splitlines()[:2] + pgp.armor.splitlines()[-1:]) + "\n",
            message_id=mid,
            sender=GATEWAY_ADDRESS,
            recipient="t@zorg.test",
        ),
    }


def test_enqueue_refuses_sealed_message_that_is_not_pgp_mime(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    mid = "<fixed@securemail.test>"
    for name, mime in _variants(outbox_pgp, mid).items():
        sealed = make_sealed_for_tests(outbox_pgp, mime=mime, message_id=mid)
        with pytest.raises(NotSealedError) as err:
            store.write_sync(lambda db, s=sealed: enqueue_with_audit(db, s, None))
        assert MARKER not in str(err.value), name
    assert all_rows(store) == []
    assert audit_rows(store) == []  # the caller's audit row rolled back with it


def test_sealcheck_accepts_real_gpg_output(outbox_pgp: PgpForTests) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)
    outbox._require_pgp_mime(sealed.mime)


def test_sealcheck_remembers_passed_bytes_but_refuses_one_changed_byte(
    outbox_pgp: PgpForTests,
) -> None:
    # Given bytes that passed (and are now remembered by their digest)
    sealed = make_sealed_for_tests(outbox_pgp)
    outbox._require_pgp_mime(sealed.mime)
    outbox._require_pgp_mime(sealed.mime)
    # When the same message claims another type, it is checked in full, and refused
    tampered = sealed.mime.replace(
        b"Content-Type: multipart/encrypted", b"Content-Type: text/plain", 1
    )
    assert tampered != sealed.mime
    with pytest.raises(NotSealedError):
        outbox._require_pgp_mime(tampered)


@hsettings(deadline=None)  # parsing speed is not the point; no flakes on a busy machine
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1))
def test_sealcheck_refuses_any_ascii_text_as_armor(text: str) -> None:
    mime = pgp_mime(
        _armor_of(text), message_id="<x@y.test>", sender=GATEWAY_ADDRESS, recipient="t@zorg.test"
    )
    with pytest.raises(NotSealedError):
        outbox._require_pgp_mime(mime)


def test_enqueue_refuses_message_id_differing_from_header(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    mime = make_sealed_for_tests(outbox_pgp, message_id="<a@securemail.test>").mime
    sealed = make_sealed_for_tests(outbox_pgp, mime=mime, message_id="<b@securemail.test>")
    with pytest.raises(NotSealedError):
        store.write_sync(lambda db: outbox.enqueue(db, sealed, actor=GP))


def test_enqueue_same_message_twice_is_a_conflict(store: Store, outbox_pgp: PgpForTests) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)
    store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    with pytest.raises(ConflictError):
        store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    assert len(all_rows(store)) == 1
    assert codes(store) == ["request.send"]


def test_enqueue_commits_with_callers_audit_row_or_not_at_all(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)

    def failing(db: Any) -> None:
        enqueue_with_audit(db, sealed, None)
        raise SecuremailError("the caller failed after enqueue")

    with pytest.raises(SecuremailError):
        store.write_sync(failing)
    assert all_rows(store) == [] and audit_rows(store) == []
    store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    assert [r["status"] for r in all_rows(store)] == ["queued"]
    assert codes(store) == ["request.send"]


def test_outbox_bytes_cannot_change_once_queued(store: Store, outbox_pgp: PgpForTests) -> None:
    store.write_sync(lambda db: enqueue_with_audit(db, make_sealed_for_tests(outbox_pgp), None))
    with pytest.raises(sqlite3.IntegrityError, match="never changes"):
        store.write_sync(lambda db: db.execute("UPDATE outbox SET mime = ?", [MARKER.encode()]))


# -- delivery outcomes ------------------------------------------------------------------------
async def test_delivery_relay_gets_ciphertext_the_team_can_read(
    tmp_path: Path,
    smtp_server: Relay,
    relay_cafile: str,
    outbox_pgp: PgpForTests,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    sealed = make_sealed_for_tests(outbox_pgp)
    await store.write(lambda db: enqueue_with_audit(db, sealed, None))
    finals = Finals()
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store, on_final=finals)

    assert await worker.run_once() == 1

    (got,) = smtp_server.handler.snapshot()
    assert got.message_id == sealed.message_id and got.rcpt_tos == (sealed.recipient,)
    assert MARKER.encode() not in got.content
    msg = message_from_bytes(got.content, policy=policy.default)
    assert msg["Subject"] == "securemail: beveiligd bericht"
    armored = msg.get_payload()[1].get_payload(decode=True)
    assert outbox_pgp.decrypt(armored) == MARKER.encode()  # read as the team would
    (row,) = all_rows(store)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("sent", 1, None)
    assert row["relay_reply"].startswith("250 2.0.0 Ok")
    assert finals.calls == [(row["id"], "sent")]
    deliver = [r for r in audit_rows(store) if r["event_code"] == "request.deliver"]
    assert len(deliver) == 1 and deliver[0]["patient_id"] == "P-000042"
    assert deliver[0]["responsible_user_id"] == GP.user_id and deliver[0]["nature"] == "technical"
    assert sealed.message_id in deliver[0]["outcome_detail"]
    assert MARKER not in caplog.text
    assert_no_patient_data(store, smtp_server)
    store.read_sync(audit.verify_chain)


async def test_relay_down_while_50_accepted_then_up_each_arrives_exactly_once(
    tmp_path: Path, relay_factory: Any, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    # Given a relay that is down and 50 accepted requests
    relay = relay_factory("starttls", start=False)
    settings = settings_for(
        tmp_path, relay, relay_cafile, retry_initial_seconds=0.05, retry_max_seconds=0.2
    )
    ids = queue_many(store, outbox_pgp, 50)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(settings, store).run(stop))
    try:
        # When the worker has failed against it at least once for every message
        await eventually(lambda: all(r["attempts"] >= 1 for r in all_rows(store)))
        assert {r["status"] for r in all_rows(store)} <= {"retrying", "sending"}
        assert {r["last_error"][:27] for r in all_rows(store) if r["last_error"]} == {
            "connection to relay failed:"
        }
        # and the relay comes up on the same port
        relay.start()
        await eventually(lambda: all(r["status"] == "sent" for r in all_rows(store)))
    finally:
        stop.set()
        await task
    # Then every message arrived exactly once
    assert relay.handler.accepted_ids() == collections.Counter(ids)
    assert codes(store).count("request.deliver") == 50
    assert relay.max_active <= settings.smtp.max_connections
    store.read_sync(audit.verify_chain)


async def test_5xx_fails_at_once_with_one_final_and_no_more_attempts(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    clock = FakeClock()
    smtp_server.handler.reply = "550 5.7.1 Recipient not accepted"
    queue_many(store, outbox_pgp, 1, now=clock.now)
    finals = Finals()
    worker = Worker(
        settings_for(tmp_path, smtp_server, relay_cafile), store, clock=clock, on_final=finals
    )

    assert await worker.run_once() == 1
    clock.now += 86_400 * 2
    assert await worker.run_once() == 0

    (row,) = all_rows(store)
    assert (row["status"], row["stop_reason"], row["attempts"]) == ("failed", "smtp.rejected", 1)
    assert row["last_error"].startswith("550 5.7.1")
    assert finals.calls == [(row["id"], "failed")]
    assert len(smtp_server.handler.snapshot()) == 1
    assert codes(store) == ["request.send", "request.fail"]


@pytest.mark.parametrize("reply", ["451 4.3.0 Try again later", "432 4.3.2 Too many connections"])
async def test_4xx_retries_with_growing_delays_then_sends(
    tmp_path: Path,
    smtp_server: Relay,
    relay_cafile: str,
    outbox_pgp: PgpForTests,
    store: Store,
    reply: str,
) -> None:
    clock = FakeClock()
    smtp_server.handler.reply = reply
    (mid,) = queue_many(store, outbox_pgp, 1, now=clock.now)
    settings = settings_for(tmp_path, smtp_server, relay_cafile)  # 10 s doubling, at most 40 s
    worker = Worker(settings, store, clock=clock, rng=lambda: 1.0)
    delays = []
    for _ in range(4):
        assert await worker.run_once() == 1
        (row,) = all_rows(store)
        assert row["status"] == "retrying" and row["last_error"] == reply
        delays.append(row["next_attempt_at"] - clock.now)
        clock.now += delays[-1] - 0.001
        assert await worker.run_once() == 0  # never before next_attempt_at
        clock.now += 0.001
    assert delays == [10.0, 20.0, 40.0, 40.0]

    smtp_server.handler.reply = "250 2.0.0 Ok: queued"
    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 5, "")
    attempts = smtp_server.handler.snapshot()
    assert [a.message_id for a in attempts] == [mid] * 5  # same Message-ID every time
    assert len({a.content for a in attempts}) == 1  # and the same bytes
    assert codes(store) == ["request.send"] + ["request.retry"] * 4 + ["request.deliver"]


async def test_idle_worker_woken_by_a_send_delivers_before_its_next_poll(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    # Given an idle worker that would look again only after a minute
    settings = settings_for(tmp_path, smtp_server, relay_cafile, poll_seconds=60.0)
    worker = Worker(settings, store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.2)  # both slots found nothing and sleep
    # When a message is queued in this process and the worker is woken
    sealed = make_sealed_for_tests(outbox_pgp)
    await store.write(lambda db: enqueue_with_audit(db, sealed, None))
    worker.wake()
    # Then it goes out long before the poll interval
    for _ in range(200):
        if smtp_server.handler.accepted_ids()[sealed.message_id]:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert smtp_server.handler.accepted_ids()[sealed.message_id] == 1


def test_backoff_uses_equal_jitter_within_bounds() -> None:
    d = DeliverySettings()  # defaults: 30 s, 30 min
    assert [backoff(n, d, lambda: 1.0) for n in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert backoff(1, d, lambda: 0.0) == 15.0
    assert backoff(50, d, lambda: 1.0) == 1800.0 and backoff(10**6, d, lambda: 0.5) == 1350.0


@hsettings(deadline=None)
@given(st.integers(1, 200), st.floats(0, 1))
def test_backoff_grows_and_stays_within_retry_max(attempts: int, r: float) -> None:
    d = DeliverySettings(retry_initial_seconds=30.0, retry_max_seconds=1800.0)
    delay = backoff(attempts, d, lambda: r)
    assert 15.0 <= delay <= 1800.0
    assert backoff(attempts + 1, d, lambda: r) >= delay


async def test_gives_up_after_give_up_after_seconds_as_failed(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    clock = FakeClock()
    start = clock.now
    smtp_server.handler.reply = "451 4.3.0 Try again later"
    queue_many(store, outbox_pgp, 1, now=clock.now)
    finals = Finals()
    settings = settings_for(tmp_path, smtp_server, relay_cafile, give_up_after_seconds=100.0)
    worker = Worker(settings, store, clock=clock, rng=lambda: 1.0, on_final=finals)
    times = []
    while all_rows(store)[0]["status"] != "failed":
        times.append(clock.now - start)
        assert await worker.run_once() == 1
        clock.now = all_rows(store)[0]["next_attempt_at"] or clock.now
    (row,) = all_rows(store)
    assert times == [0.0, 10.0, 30.0, 70.0, 100.0]  # the last attempt is at the deadline
    assert row["stop_reason"] == "smtp.gave_up" and "451 4.3.0" in row["last_error"]
    assert finals.calls == [(row["id"], "failed")]
    clock.now += 1000
    assert await worker.run_once() == 0
    assert codes(store).count("request.fail") == 1


# -- TLS is not negotiable --------------------------------------------------------------------
def _commands(relay: Relay) -> set[str]:
    return {line.split(b" ")[0].decode().upper() for line in bytes(relay.received).splitlines()}


async def test_relay_without_starttls_gets_nothing_and_row_names_starttls(
    tmp_path: Path,
    plain_smtp_server: Relay,
    relay_cafile: str,
    outbox_pgp: PgpForTests,
    store: Store,
) -> None:
    clock = FakeClock()
    queue_many(store, outbox_pgp, 1, now=clock.now)
    settings = settings_for(tmp_path, plain_smtp_server, relay_cafile, give_up_after_seconds=20.0)
    worker = Worker(settings, store, clock=clock)

    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert row["status"] == "retrying" and "STARTTLS" in row["last_error"]
    clock.now += 30
    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert row["status"] == "failed" and "STARTTLS" in row["last_error"]

    assert plain_smtp_server.handler.snapshot() == []
    assert _commands(plain_smtp_server) == {"EHLO"}  # no MAIL, RCPT, DATA, AUTH: nothing sent
    assert_no_patient_data(store, plain_smtp_server)


async def test_relay_with_untrusted_certificate_gets_nothing(
    tmp_path: Path,
    untrusted_smtp_server: Relay,
    relay_cafile: str,
    outbox_pgp: PgpForTests,
    store: Store,
) -> None:
    queue_many(store, outbox_pgp, 1)
    worker = Worker(settings_for(tmp_path, untrusted_smtp_server, relay_cafile), store)

    assert await worker.run_once() == 1

    (row,) = all_rows(store)
    assert row["status"] == "retrying"
    assert row["last_error"].startswith("TLS failure:") and "certificate" in row["last_error"]
    assert untrusted_smtp_server.handler.snapshot() == []
    assert _commands(untrusted_smtp_server) <= {"EHLO", "STARTTLS"}
    assert_no_patient_data(store, untrusted_smtp_server)


async def test_implicit_tls_relay_delivers(
    tmp_path: Path, relay_factory: Any, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    relay = relay_factory("implicit")
    (mid,) = queue_many(store, outbox_pgp, 1)
    assert await Worker(settings_for(tmp_path, relay, relay_cafile), store).run_once() == 1
    assert relay.handler.accepted_ids() == {mid: 1}


async def test_worker_refuses_plaintext_row_at_the_smtp_edge(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, store: Store
) -> None:
    # A row that bypassed enqueue (a bug, a hand edit): plaintext with patient data.
    plain = EmailMessage()
    plain["Message-ID"] = "<plain@securemail.test>"
    plain["Subject"] = "securemail: UVZ-2026-000999 afgeleverd"
    plain["X-Securemail-Notice"] = "delivered"
    plain.set_content(MARKER)
    for kind, mid in (("request", "<p1@t>"), ("notice", "<p2@t>")):
        store.write_sync(
            lambda db, k=kind, m=mid: db.execute(
                "INSERT INTO outbox (reference, kind, message_id, sender, recipient, mime, status,"
                " next_attempt_at, created_at, queued_at, updated_at)"
                " VALUES ('UVZ-2026-000999', ?, ?, ?, 't@zorg.test', ?, 'queued', 0, 0, 0, 0)",
                [k, m, GATEWAY_ADDRESS, plain.as_bytes()],
            )
        )
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store)

    assert await worker.run_once() == 2

    assert [(r["status"], r["stop_reason"]) for r in all_rows(store)] == [
        ("failed", "outbox.not_sealed"),
        ("failed", "outbox.not_sealed"),
    ]
    assert smtp_server.sessions == 0 and smtp_server.handler.snapshot() == []
    assert codes(store) == ["request.fail", "notice.fail"]
    assert all(MARKER not in repr(r) for r in audit_rows(store))


# -- hooks ------------------------------------------------------------------------------------
class ConsentWithdrawnError(SecuremailError):
    code = "consent.withdrawn"


async def test_before_send_refusal_stops_row_before_it_leaves(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    async def consent_check(row: outbox.OutboxRow) -> None:
        raise ConsentWithdrawnError("consent withdrawn", reference=row.reference)

    queue_many(store, outbox_pgp, 1)
    finals = Finals()
    worker = Worker(
        settings_for(tmp_path, smtp_server, relay_cafile),
        store,
        before_send=consent_check,
        on_final=finals,
    )

    assert await worker.run_once() == 1

    (row,) = all_rows(store)
    assert (row["status"], row["stop_reason"], row["attempts"]) == (
        "stopped",
        "consent.withdrawn",
        0,
    )
    assert finals.calls == [(row["id"], "stopped")]
    assert smtp_server.sessions == 0
    stop_rows = [r for r in audit_rows(store) if r["event_code"] == "request.stop"]
    assert len(stop_rows) == 1 and stop_rows[0]["outcome"] == "refused"


async def test_before_send_that_crashes_lets_nothing_go(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    async def broken(row: outbox.OutboxRow) -> None:
        raise RuntimeError(MARKER)  # even a hook's message must not reach the row or the log

    queue_many(store, outbox_pgp, 1)
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store, before_send=broken)
    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert row["status"] == "retrying" and row["last_error"] == "before_send failed: RuntimeError"
    assert smtp_server.sessions == 0


async def test_on_final_failure_is_called_again_until_it_succeeds(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    clock = FakeClock()
    queue_many(store, outbox_pgp, 1, now=clock.now)
    finals = Finals(fail_times=1)
    settings = settings_for(tmp_path, smtp_server, relay_cafile)
    worker = Worker(settings, store, clock=clock, on_final=finals)

    assert await worker.run_once() == 1
    assert await worker.run_once() == 0  # the lease still covers the failed hook call
    assert len(finals.calls) == 1
    clock.now += settings.delivery.lease_seconds + 1
    assert await worker.run_once() == 0  # nothing due; the unfinished on_final is re-run
    assert await worker.run_once() == 0
    (row,) = all_rows(store)
    assert finals.calls == [(row["id"], "sent")] * 2
    assert row["final_handled_at"] is not None and row["lease_owner"] is None
    assert len(smtp_server.handler.snapshot()) == 1  # the message itself went once


# -- leases -----------------------------------------------------------------------------------
def _lease(store: Store, owner: str, until: float) -> None:
    store.write_sync(
        lambda db: db.execute(
            "UPDATE outbox SET status = 'sending', lease_owner = ?, lease_until = ?", [owner, until]
        )
    )


async def test_crashed_workers_lapsed_lease_is_taken_over_and_delivered(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    clock = FakeClock()
    (mid,) = queue_many(store, outbox_pgp, 1, now=clock.now)
    _lease(store, "crashed-host:4242:dead", until=clock.now + 60)
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store, clock=clock)

    assert await worker.run_once() == 0  # a live lease is respected
    clock.now += 61
    assert await worker.run_once() == 1

    (row,) = all_rows(store)
    assert (row["status"], row["attempts"]) == ("sent", 2)  # the lapsed attempt counts
    assert smtp_server.handler.accepted_ids() == {mid: 1}
    retry = [r for r in audit_rows(store) if r["event_code"] == "request.retry"]
    assert len(retry) == 1 and "crashed-host:4242:dead lapsed" in retry[0]["outcome_detail"]


async def test_worker_that_lost_its_lease_cannot_finalise(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    clock = FakeClock()
    (mid,) = queue_many(store, outbox_pgp, 1, now=clock.now)
    settings = settings_for(tmp_path, smtp_server, relay_cafile)

    async def lose_lease(row: outbox.OutboxRow) -> None:  # as if the lease lapsed mid-send
        await store.write(lambda db: db.execute("UPDATE outbox SET lease_owner = 'w2'"))

    finals1, finals2 = Finals(), Finals()
    w1 = Worker(
        settings, store, owner_id="w1", clock=clock, before_send=lose_lease, on_final=finals1
    )
    assert await w1.run_once() == 1
    assert all_rows(store)[0]["status"] == "sending" and finals1.calls == []
    assert "request.deliver" not in codes(store)

    clock.now += settings.delivery.lease_seconds + 1
    w3 = Worker(settings, store, owner_id="w3", clock=clock, on_final=finals2)
    assert await w3.run_once() == 1

    assert all_rows(store)[0]["status"] == "sent"
    assert codes(store).count("request.deliver") == 1 and len(finals2.calls) == 1
    assert smtp_server.handler.accepted_ids() == {mid: 2}  # the transport repeated it ...
    assert list(smtp_server.handler.mailbox()) == [mid]  # ... the receiving side sees one


async def test_two_workers_100_messages_each_sent_once_within_connection_limit(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    ids = queue_many(store, outbox_pgp, 100)
    settings = settings_for(tmp_path, smtp_server, relay_cafile)
    other_store = open_store(store.path)  # a second connection, as a second process has
    f1, f2 = Finals(), Finals()
    w1 = Worker(settings, store, owner_id="w1", on_final=f1, batch_size=5)
    w2 = Worker(settings, other_store, owner_id="w2", on_final=f2, batch_size=5)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in (w1, w2)]
    try:
        await eventually(lambda: all(r["status"] == "sent" for r in all_rows(store)))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        other_store.close()
    assert smtp_server.handler.accepted_ids() == collections.Counter(ids)
    assert f1.calls and f2.calls  # both took part
    assert len(f1.calls) + len(f2.calls) == 100
    assert not {i for i, _ in f1.calls} & {i for i, _ in f2.calls}
    assert smtp_server.max_active <= settings.smtp.max_connections


async def test_due_batch_goes_over_one_connection(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    ids = queue_many(store, outbox_pgp, 10)
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store, batch_size=10)
    assert await worker.run_once() == 10
    assert smtp_server.sessions == 1
    assert smtp_server.handler.accepted_ids() == collections.Counter(ids)


def test_worker_refuses_a_lease_shorter_than_three_timeouts(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, store: Store
) -> None:
    settings = settings_for(tmp_path, smtp_server, relay_cafile, lease_seconds=2.0)
    with pytest.raises(ConfigError):
        Worker(settings, store)


def test_worker_refuses_an_unreadable_cafile(
    tmp_path: Path, smtp_server: Relay, store: Store
) -> None:
    settings = settings_for(tmp_path, smtp_server, str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError):
        Worker(settings, store)


# -- admin ------------------------------------------------------------------------------------
async def test_admin_cancel_retry_and_status(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    a, b = (make_sealed_for_tests(outbox_pgp, reference=f"UVZ-2026-00000{i}") for i in (1, 2))
    store.write_sync(lambda db: [enqueue_with_audit(db, s, None) for s in (a, b)])
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store)

    # cancel: a queued request never leaves
    assert store.write_sync(lambda db: outbox.cancel(db, a.reference, ADMIN)) == [1]
    with pytest.raises(ConflictError):
        store.write_sync(lambda db: outbox.cancel(db, a.reference, ADMIN))
    # retry: a failed request goes again, same bytes and Message-ID
    smtp_server.handler.replies.append("554 5.6.0 Message refused")
    assert await worker.run_once() == 1
    assert [r["status"] for r in all_rows(store)] == ["cancelled", "failed"]
    with pytest.raises(AccessDeniedError):
        store.write_sync(lambda db: outbox.retry(db, b.reference, GP))
    assert store.write_sync(lambda db: outbox.retry(db, b.reference, ADMIN)) == [2]
    assert await worker.run_once() == 1

    assert [r["status"] for r in all_rows(store)] == ["cancelled", "sent"]
    sent = smtp_server.handler.snapshot()
    assert [r.message_id for r in sent] == [b.message_id] * 2 and sent[0].content == sent[1].content
    (st_b,) = store.read_sync(lambda db: outbox.status(db, b.reference))
    assert st_b["status"] == "sent" and st_b["attempts"] == 2
    assert st_b["relay_reply"].startswith("250") and st_b["last_error"] == ""
    assert st_b["queued_at"].endswith("Z") and st_b["final_at"] and st_b["next_attempt_at"] is None
    assert "mime" not in st_b
    assert [r["reference"] for r in store.read_sync(lambda db: outbox.list_rows(db, "sent"))] == [
        b.reference
    ]
    with pytest.raises(NotFoundError):
        store.read_sync(lambda db: outbox.status(db, "UVZ-2026-999999"))
    assert [c for c in codes(store) if c.startswith("outbox.")] == ["outbox.cancel", "outbox.retry"]


# -- notices ----------------------------------------------------------------------------------
def test_notice_carries_reference_and_link_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path).replace(gateway={"base_url": "https://gateway.test/"})
    n = notice_failed("UVZ-2026-000123", "praktijk@huisarts.test", "smtp.rejected", settings)
    msg = message_from_bytes(n.mime, policy=policy.default)
    assert msg["Subject"] == "securemail: UVZ-2026-000123 niet afgeleverd"
    assert msg.get_content_type() == "text/plain" and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "https://gateway.test/requests/UVZ-2026-000123" in body
    assert "weigerde" in body and "(smtp.rejected)" in body
    assert n.message_id == msg["Message-ID"] and n.recipient == "praktijk@huisarts.test"


@pytest.mark.parametrize(
    ("reference", "to", "why"),
    [
        ("Jansen", "p@huisarts.test", "smtp.rejected"),
        ("123456782", "p@huisarts.test", "smtp.rejected"),
        ("UVZ-2026-000123 Jansen", "p@huisarts.test", "smtp.rejected"),
        ("UVZ-2026-000123", "Jansen <p@huisarts.test>", "smtp.rejected"),
        ("UVZ-2026-000123", "p@huisarts.test", "Jansen weigerde"),
    ],
)
def test_notice_refuses_anything_but_reference_address_and_code(
    tmp_path: Path, reference: str, to: str, why: str
) -> None:
    with pytest.raises(InputError):
        notice_failed(reference, to, why, Settings(home=tmp_path))


def test_notice_cannot_be_built_outside_notify(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Notice("delivered", "UVZ-2026-000123", "a@b.test", "c@d.test", "<x@y>", b"")
    with pytest.raises(InputError):
        make_notice("anything", "UVZ-2026-000123", "a@b.test", Settings(home=tmp_path))


async def test_notice_is_queued_and_delivered_like_a_request(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, store: Store
) -> None:
    settings = settings_for(tmp_path, smtp_server, relay_cafile)
    n = notice_delivered("UVZ-2026-000123", "praktijk@huisarts.test", settings)
    await store.write(lambda db: enqueue_with_audit(db, n, None))
    assert await Worker(settings, store).run_once() == 1
    (got,) = smtp_server.handler.snapshot()
    assert got.message_id == n.message_id and b"UVZ-2026-000123" in got.content
    assert codes(store) == ["notice.send", "notice.deliver"]


# -- real processes: SIGKILL and SIGTERM ------------------------------------------------------
def _home(tmp_path: Path, relay: Relay, cafile: str) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "securemail.toml").write_text(
        f'[gateway]\nfrom_address = "{GATEWAY_ADDRESS}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {relay.port}\ncafile = "{cafile}"\n'
        "timeout_seconds = 1.0\nmax_connections = 2\n"
        "[delivery]\nretry_initial_seconds = 0.05\nretry_max_seconds = 0.2\n"
        "lease_seconds = 3.0\npoll_seconds = 0.02\n"
    )
    return home


def _spawn(home: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from securemail.delivery.worker import run_worker_process;"
        " sys.exit(run_worker_process(sys.argv[1]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREMAIL_")}
    env["PYTHONPATH"] = str(ROOT)
    with (home / f"worker-{time.monotonic_ns()}.log").open("wb") as log:  # the child keeps a copy
        return subprocess.Popen(
            [sys.executable, "-c", code, str(home)], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_sigkill_mid_batch_next_worker_delivers_every_message(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests
) -> None:
    # Given 100 accepted requests and a relay that takes 20 ms per message
    home = _home(tmp_path, smtp_server, relay_cafile)
    store = open_store(home / "securemail.db")
    ids = queue_many(store, outbox_pgp, 100)
    smtp_server.handler.delay = 0.02
    # When a worker process is killed with SIGKILL mid-batch
    first = _spawn(home)
    _wait(lambda: len(smtp_server.handler.accepted_ids()) >= 30)
    # slow the relay so the kill lands while a message is in flight, however loaded the machine
    smtp_server.handler.delay = 0.5
    _wait(lambda: any(r["status"] == "sending" for r in all_rows(store)))
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    in_flight = [r for r in all_rows(store) if r["status"] == "sending"]
    assert in_flight, "the kill should have left claimed rows behind"
    # and a new worker starts
    smtp_server.handler.delay = 0.02
    second = _spawn(home)
    try:
        _wait(lambda: all(r["status"] == "sent" for r in all_rows(store)), timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    # Then every message arrived at least once, and the receiving side has each exactly once
    accepted = smtp_server.handler.accepted_ids()
    assert set(accepted) == set(ids)
    assert len(smtp_server.handler.mailbox()) == 100
    repeats = {mid for mid, n in accepted.items() if n > 1}
    # only a send in flight at the kill (250 given, "sent" not committed) can be repeated
    assert len(repeats) <= 2 and repeats <= {r["message_id"] for r in in_flight}
    for mid in repeats:  # and a repeat is the very same message
        copies = {r.content for r in smtp_server.handler.snapshot() if r.message_id == mid}
        assert len(copies) == 1
    # and each request reached exactly one final outcome, with an intact audit chain
    delivers = [
        r["outcome_detail"] for r in audit_rows(store) if r["event_code"] == "request.deliver"
    ]
    assert sorted(d.split("message_id=")[1].split(";")[0] for d in delivers) == sorted(ids)
    store.read_sync(audit.verify_chain)
    store.close()


def test_sigterm_finishes_in_flight_releases_the_rest_and_exits_0(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests
) -> None:
    home = _home(tmp_path, smtp_server, relay_cafile)
    store = open_store(home / "securemail.db")
    ids = queue_many(store, outbox_pgp, 30)
    smtp_server.handler.delay = 0.1
    proc = _spawn(home)
    _wait(lambda: len(smtp_server.handler.accepted_ids()) >= 4)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0

    rows = all_rows(store)
    sent = {r["message_id"] for r in rows if r["status"] == "sent"}
    assert set(smtp_server.handler.accepted_ids()) == sent  # nothing accepted goes unrecorded
    assert {r["status"] for r in rows} <= {"sent", "queued"}  # the rest was released
    assert all(r["lease_owner"] is None for r in rows)
    assert len(sent) < 30

    smtp_server.handler.delay = 0.0

    async def finish_rest() -> None:
        settings = settings_for(tmp_path, smtp_server, relay_cafile)
        while await Worker(settings, store).run_once():
            pass

    asyncio.run(finish_rest())
    assert smtp_server.handler.accepted_ids() == collections.Counter(ids)  # no repeats at all
    store.close()


def test_a_dropped_tls_session_leaves_no_socket_behind(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str
) -> None:
    # A graceful close of a TLS transport waits for the relay's close_notify; when the event
    # loop ends first (a worker stopping, a CLI command returning) the socket used to be left
    # to the garbage collector, which pytest (filterwarnings=error) reports as a
    # ResourceWarning. relay.discard aborts the session instead.
    from securemail import config
    from securemail.delivery import relay

    settings = config.load(_home(tmp_path, smtp_server, relay_cafile), env={})

    async def open_and_drop() -> None:
        relay.discard(await relay.connect(settings, relay.tls_context(settings)))

    async def open_and_quit() -> None:  # a session that ends well: QUIT, then the socket
        smtp = await relay.connect(settings, relay.tls_context(settings))
        sock = smtp.transport.get_extra_info("socket")
        await relay.goodbye(smtp)
        await asyncio.sleep(0)  # one turn of the loop: the socket is closed, not waiting
        assert sock.fileno() == -1

    for _ in range(5):
        asyncio.run(open_and_drop())
        asyncio.run(open_and_quit())
    gc.collect()  # any socket left open warns here, inside this test


# -- a clock that cannot jump -------------------------------------------------------------


@pytest.mark.parametrize("step", [3600.0, -3600.0, 25 * 3600.0])
async def test_a_stepped_worker_clock_changes_nothing_that_is_due(
    tmp_path: Path,
    smtp_server: Relay,
    relay_cafile: str,
    outbox_pgp: PgpForTests,
    store: Store,
    step: float,
) -> None:
    """The wall clock steps (+1 h, -1 h, +25 h) while no time passes: no row held by another
    slot is taken again (no duplicate), no retry comes early or stalls, none is given up."""
    wall, elapsed = FakeClock(), FakeClock()
    smtp_server.handler.reply = "451 4.3.0 Try again later"
    queue_many(store, outbox_pgp, 2, now=wall.now)
    settings = settings_for(tmp_path, smtp_server, relay_cafile, give_up_after_seconds=86400.0)
    worker = Worker(settings, store, clock=wall, monotonic=elapsed, rng=lambda: 1.0, batch_size=1)
    # Given: one row held by this worker (claimed, its lease running), one tried once
    held = store.write_sync(lambda db: claim(db, owner=worker.owner_id, now=worker.clock(),
                            lease_seconds=3.0, limit=1, source_id="gw"))  # fmt: skip
    assert await worker.run_once() == 1  # the other row: 451, retry in 10 s
    (retry,) = [r for r in all_rows(store) if r["status"] == "retrying"]
    # When: the wall clock steps, and no real time passes
    wall.now += step
    # Then: nothing is due: the held row is not taken again, the retry not early
    assert await worker.run_once() == 0
    rows = {r["id"]: r for r in all_rows(store)}
    assert rows[held[0].id]["status"] == "sending" and rows[held[0].id]["attempts"] == 0
    assert rows[retry["id"]]["status"] == "retrying"
    # When: the back-off really elapses (monotonic time), the retry goes, and is not given up
    elapsed.now += 10.0
    smtp_server.handler.reply = "250 2.0.0 Ok: queued"
    while await worker.run_once():
        pass
    rows = {r["id"]: r for r in all_rows(store)}
    assert rows[retry["id"]]["status"] == "sent", rows[retry["id"]]
    assert "request.fail" not in codes(store)
    assert len(smtp_server.handler.accepted_ids()) == 2  # each once (the lapsed one too)


async def test_a_clock_step_alone_never_gives_up(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    """Even a queued_at far in the past (stamped by a process whose clock was wrong) fails a
    message only after MIN_ATTEMPTS_TO_GIVE_UP attempts."""
    clock = FakeClock()
    smtp_server.handler.reply = "451 4.3.0 Try again later"
    queue_many(store, outbox_pgp, 1, now=clock.now - 25 * 3600)
    settings = settings_for(tmp_path, smtp_server, relay_cafile, give_up_after_seconds=86400.0)
    worker = Worker(settings, store, clock=clock, rng=lambda: 1.0)
    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert row["status"] == "retrying" and row["next_attempt_at"] > clock.now


async def test_a_relay_answering_after_the_timeout_is_recorded_as_maybe_delivered(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    # Given a relay that takes the whole message but answers 250 only after timeout_seconds
    clock = FakeClock()
    smtp_server.handler.delay = 2.0  # timeout_seconds is 1
    (mid,) = queue_many(store, outbox_pgp, 1, now=clock.now)
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store, clock=clock)

    # When the worker's attempt times out after DATA
    assert await worker.run_once() == 1
    assert mid.encode() in bytes(smtp_server.received)  # the relay had the whole message

    # Then it is recorded as "may have been delivered", not as "not sent"
    (row,) = all_rows(store)
    assert (row["status"], row["attempts"], row["uncertain_attempts"]) == ("retrying", 1, 1)
    assert row["last_error"].startswith("may have been delivered")
    uncertain = audit_rows(store)[-1]
    assert uncertain["event_code"] == "request.uncertain"
    assert mid in uncertain["outcome_detail"] and "same Message-ID" in uncertain["outcome_detail"]
    assert (
        outbox.status(store.read_sync(lambda db: db), "UVZ-2026-000000")[0]["uncertain_attempts"]
        == 1
    )

    # And the retry sends the same bytes under the same Message-ID: one message in the mailbox
    smtp_server.handler.delay = 0.0
    clock.now = row["next_attempt_at"]
    assert await worker.run_once() == 1
    (row,) = all_rows(store)
    assert (row["status"], row["attempts"], row["uncertain_attempts"]) == ("sent", 2, 1)
    # (aiosmtpd drops the late answer's session: the relay's record holds the second copy)
    assert bytes(smtp_server.received).count(f"Message-ID: {mid}".encode()) == 2
    assert list(smtp_server.handler.mailbox()) == [mid]
    assert codes(store) == ["request.send", "request.uncertain", "request.deliver"]
    store.read_sync(audit.verify_chain)


async def test_a_timeout_before_data_is_a_plain_retry(
    tmp_path: Path, relay_factory: Any, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    # Given a relay that is slow to answer RCPT (the message never left)
    relay = relay_factory("starttls")

    async def slow_rcpt(server: Any, session: Any, envelope: Any, address: str, opts: Any) -> str:
        await asyncio.sleep(2.0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    relay.handler.handle_RCPT = slow_rcpt  # type: ignore[attr-defined]
    clock = FakeClock()
    queue_many(store, outbox_pgp, 1, now=clock.now)
    worker = Worker(settings_for(tmp_path, relay, relay_cafile), store, clock=clock)

    assert await worker.run_once() == 1

    (row,) = all_rows(store)
    assert (row["status"], row["uncertain_attempts"]) == ("retrying", 0)
    assert codes(store) == ["request.send", "request.retry"]
    assert relay.handler.snapshot() == []
