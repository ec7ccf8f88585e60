"""store.Store: one writer, durable when write() returns, group commit that isolates failures."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from securemail.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "t.db")
    s.write_sync(lambda db: db.execute("CREATE TABLE t (x INTEGER UNIQUE)"))
    yield s
    s.close()


def on_disk(path: Path) -> list[int]:
    """What another connection reads: only committed rows."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]


async def test_store_group_failed_write_rolls_back_alone(store: Store) -> None:
    # Given the writer busy, so that the next writes queue up and share one transaction
    release = threading.Event()
    started = threading.Event()

    def hold(db: Any) -> int:
        started.set()
        release.wait(10)
        db.execute("INSERT INTO t VALUES (1)")
        return 1

    def insert(x: int) -> Any:
        def fn(db: Any) -> int:
            db.execute("INSERT INTO t VALUES (?)", [x])
            if x == 3:
                db.execute("INSERT INTO t VALUES (2)")  # its first insert must go too
            return x

        return fn

    first = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(started.wait, 10)
    queued = [asyncio.ensure_future(store.write(insert(x))) for x in (2, 3, 4)]
    await asyncio.sleep(0.05)
    # When the writer goes on
    release.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    # Then the write that failed raised for its own caller only, and left nothing behind
    assert results[:2] == [1, 2]
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert results[3] == 4
    assert on_disk(store.path) == [1, 2, 4]


async def test_store_write_returns_only_when_committed(store: Store) -> None:
    async def write_then_look(x: int) -> bool:
        await store.write(lambda db: db.execute("INSERT INTO t VALUES (?)", [x]))
        return x in on_disk(store.path)  # read through another connection

    # Twenty writes at once (most of them share a commit): each is on disk when it returns
    assert all(await asyncio.gather(*(write_then_look(x) for x in range(20))))
    assert on_disk(store.path) == list(range(20))


async def test_store_cancelled_write_that_did_not_start_does_not_run(store: Store) -> None:
    release = threading.Event()
    started = threading.Event()

    def hold(db: Any) -> None:
        started.set()
        release.wait(10)

    first = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(started.wait, 10)
    cancelled = asyncio.ensure_future(
        store.write(lambda db: db.execute("INSERT INTO t VALUES (9)"))
    )
    await asyncio.sleep(0.05)
    cancelled.cancel()
    # wrap_future passes the cancel on to the writer's future in a loop callback: let it run
    # before the writer is released, or a busy machine lets the writer start the write first.
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    release.set()
    await first
    await store.write(lambda db: None)
    assert on_disk(store.path) == []


async def test_a_first_write_commits_ahead_of_a_queue_of_writes(store: Store) -> None:
    # Given the writer busy and 200 writes waiting (a burst of sends: more than one group)
    release, started = threading.Event(), threading.Event()
    order: list[str] = []

    def hold(db: Any) -> None:
        started.set()
        release.wait(10)

    def named(name: str) -> Any:
        def fn(db: Any) -> str:
            order.append(name)
            return name

        return fn

    busy = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(started.wait, 10)
    queued = [asyncio.ensure_future(store.write(named(f"send-{i}"))) for i in range(200)]
    await asyncio.sleep(0)
    # When a relay's 250 is recorded, and then another
    outcomes = [
        asyncio.ensure_future(store.write(named(f"sent-{i}"), first=True)) for i in range(2)
    ]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(busy, *queued, *outcomes)
    # Then both commit in the writer's next transaction, in their own order, before the queue
    assert order[:2] == ["sent-0", "sent-1"]
    assert order[2:] == [f"send-{i}" for i in range(200)]
