"""The worker's leases: a crashed worker's rows are taken over, a worker that lost its
lease cannot finalise, two workers send each message once, and real worker processes
killed with SIGKILL or stopped with SIGTERM lose nothing."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from securemail.delivery import outbox
from securemail.delivery.worker import Worker, claim
from securemail.errors import (
    ConfigError,
)
from securemail.home import open_store
from securemail.store import Store
from tests.conftest import chain_alone
from tests.delivery.helpers import (
    ROOT,
    FakeClock,
    Finals,
    all_rows,
    audit_rows,
    codes,
    eventually,
    queue_many,
    settings_for,
)
from tests.smtp_fixtures import (
    GATEWAY_ADDRESS,
    PgpForTests,
    Relay,
)


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
    # and the trail names the process that died (lease owners are per process: host:pid)
    takeovers = [
        r["outcome_detail"]
        for r in audit_rows(store)
        if r["event_code"] == "request.retry" and "lapsed" in r["outcome_detail"]
    ]
    assert takeovers and all(f":{first.pid}:" in d for d in takeovers), takeovers
    store.read_sync(chain_alone)
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
