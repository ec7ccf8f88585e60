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
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from securemail.config import DeliverySettings
from securemail.delivery import outbox
from securemail.delivery.worker import Worker, backoff
from securemail.errors import (
    SecuremailError,
)
from securemail.store import Store
from tests.conftest import chain_alone
from tests.delivery.helpers import (
    GP,
    FakeClock,
    Finals,
    all_rows,
    assert_no_patient_data,
    audit_rows,
    codes,
    enqueue_with_audit,
    eventually,
    queue_many,
    settings_for,
)
from tests.smtp_fixtures import (
    GATEWAY_ADDRESS,
    MARKER,
    PgpForTests,
    Relay,
    make_sealed_for_tests,
)


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
    store.read_sync(chain_alone)


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
    store.read_sync(chain_alone)


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


# -- a relay that answers late: "may have been delivered" ------------------------------


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
    store.read_sync(chain_alone)


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
