"""The sqlite store: one writer thread, each write inside a ``BEGIN IMMEDIATE`` transaction.

Invariant: when ``write()`` returns, the change is committed (WAL, synchronous=FULL),
so "accepted" means on disk. Group commit: writes that queue up while the writer is
busy run one after another in one transaction, each in its own savepoint (a write
that raises is rolled back alone and its caller gets the exception), and all of them
return only after that transaction's one COMMIT, so one fsync serves many callers.
Each write sees exactly the writes queued before it, as when they ran one by one; a
``first`` write (a relay's 250) is queued before every other waiting write.
Domain modules own their tables and keep their migrations in their own
``sqlite_utils.Migrations`` set; ``Store.migrate(sets)`` applies the sets it is given, in
the order given (``securemail.home.MIGRATIONS`` lists them once). The store imports
nothing of ours. It owns two small tables every room may use: ``meta`` (``get_meta``,
``set_meta``) and ``counters`` (``next_value``; created by the exchange's first migration).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from sqlite_utils import Migrations

T = TypeVar("T")

#: Most writes one COMMIT serves (group commit); bounds how long one transaction runs.
MAX_GROUP = 64

#: The store's own tables. The set keeps the name it had when gateway.py owned it: a
#: database records applied migrations by set name.
MIGRATIONS = Migrations("securemail.gateway")


@MIGRATIONS(name="0001_meta")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def get_meta(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return str(row[0]) if row else None


def set_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


#: meta key: where a counter that does not exist yet starts (raised by a restore, so that a
#: counter the lost copy began after the backup, a new year's, is not restarted at 1).
COUNTER_FLOOR = "counter_floor"


def insert_row(db: sqlite_utils.Database, table: str, row: Mapping[str, object]) -> int:
    """Insert ``row`` into ``table`` (a rowid table) inside the caller's write; its rowid."""
    rowid = db.table(table).insert(dict(row)).last_rowid
    if rowid is None:  # sqlite gives every insert into a rowid table one; never happens
        raise RuntimeError(f"insert into {table} returned no rowid")
    return rowid


def next_value(db: sqlite_utils.Database, name: str) -> int:
    """The next value of counter ``name`` (1, 2, ...), inside the caller's write; increasing,
    never repeated, and without gaps except those a restore leaves (move_counters_past)."""
    floor = int(get_meta(db, COUNTER_FLOOR) or 0)
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + 1",
        [name, floor + 1],
    )
    return int(db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()[0])


#: Highest value a counter may reach: references show it in six digits (UVZ-YYYY-NNNNNN).
COUNTER_MAX = 999_999


def move_counters_past(db: sqlite_utils.Database, gap: int) -> list[tuple[str, int, int]]:
    """Move every counter at least ``gap`` forward, to a multiple of 1000 (after a restore:
    no value the lost copy may have handed out comes again); [(name, old, new)]."""
    moved: list[tuple[str, int, int]] = []
    floor = int(get_meta(db, COUNTER_FLOOR) or 0)
    set_meta(db, COUNTER_FLOOR, str(-(-(floor + gap) // 1000) * 1000))
    for name, value in db.execute("SELECT name, value FROM counters ORDER BY name").fetchall():
        new = -(-(int(value) + gap) // 1000) * 1000
        if new >= COUNTER_MAX:
            raise ValueError(f"counter {name} would pass {COUNTER_MAX} (at {value})")
        db.execute("UPDATE counters SET value = ? WHERE name = ?", [new, name])
        moved.append((str(name), int(value), new))
    return moved


class StoreFullError(sqlite3.OperationalError):
    """The database cannot grow: the disk (or the database's page limit) is full. Nothing of
    the write was committed; it works again once there is room, without a restart."""


def _is_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, sqlite3.OperationalError)
        and ("full" in text or "disk i/o" in text)
        or (isinstance(exc, OSError) and exc.errno == 28)
    )  # ENOSPC


def _translated(exc: BaseException) -> BaseException:
    if _is_full(exc) and not isinstance(exc, StoreFullError):
        full = StoreFullError(f"database cannot be written: {exc}")
        full.__cause__ = exc
        return full
    return exc


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        # Patient data lives here: create the file private (sqlite gives -wal/-shm its mode).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL, not NORMAL: a commit must survive power loss, not only a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


#: The gateway's source_id (NEN 7513 "source") of each open store, by its writer Database:
#: what ``source_id_of`` answers inside a write.
_SOURCE_IDS: weakref.WeakKeyDictionary[sqlite_utils.Database, str] = weakref.WeakKeyDictionary()


def source_id_of(db: sqlite_utils.Database) -> str | None:
    """The source_id of the gateway whose write ``db`` is; None for a store opened without
    one (a bare store in a test or a tool)."""
    return _SOURCE_IDS.get(db)


class Store:
    """A sqlite file with one serialised writer and one reader connection per thread.

    ``source_id``: the gateway's own id ([gateway] source_id); the audit trail takes it from
    the store (``source_id_of``), so no caller can write another into an audit row."""

    def __init__(self, path: Path | str, *, source_id: str | None = None) -> None:
        self.path = Path(path)
        self.source_id = source_id
        self._writer_conn = _connect(self.path)
        self._writer = sqlite_utils.Database(self._writer_conn)
        if source_id is not None:
            _SOURCE_IDS[self._writer] = source_id
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        # Any: each queued write has its own result type, restored by write()'s T.
        self._pending: list[tuple[Callable[[sqlite_utils.Database], Any], Future[Any]]] = []
        self._pending_lock = threading.Lock()
        self._draining = False
        self._first_slot = 0  # ``first`` writes queue in order among themselves, before the rest
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._read_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
        self._before_commit: list[Callable[[sqlite_utils.Database], object]] = []
        #: The migration sets last given to migrate(); pending_migrations() checks these.
        self.migration_sets: tuple[Migrations, ...] = ()

    # -- lifecycle -------------------------------------------------------------------------
    def migrate(self, sets: Sequence[Migrations]) -> list[str]:
        """Apply the pending migrations of ``sets``, in order; return the names applied."""
        self.migration_sets = tuple(sets)
        applied: list[str] = []
        with self._lock:
            for m in self.migration_sets:
                pending = [p.name for p in m.pending(self._writer)]
                m.apply(self._writer)
                applied += [f"{m.name}:{n}" for n in pending]
        if applied:  # no page of the schema before (plaintext content, say) stays in the WAL
            self.checkpoint()
        return applied

    def pending_migrations(self, sets: Sequence[Migrations] | None = None) -> list[str]:
        """Migrations of ``sets`` (default: those last given to migrate) not yet applied."""
        sets = self.migration_sets if sets is None else sets
        return [f"{m.name}:{p.name}" for m in sets for p in m.pending(self._writer)]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._read_executor.shutdown(wait=True)
        with self._lock:
            self._writer_conn.close()
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()

    # -- writes ----------------------------------------------------------------------------
    def before_commit(self, hook: Callable[[sqlite_utils.Database], object]) -> None:
        """Run hook(db) at the end of every write, inside its transaction (audit checkpoints)."""
        self._before_commit.append(hook)

    def write_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run fn in one IMMEDIATE transaction; commit on return, roll back on any exception."""
        with self._lock:
            db = self._writer
            self._writer_conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                for hook in self._before_commit:
                    hook(db)
            except BaseException as exc:
                if self._writer_conn.in_transaction:
                    self._writer_conn.execute("ROLLBACK")
                if _is_full(exc):
                    raise _translated(exc) from exc
                raise
            try:
                self._writer_conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._writer_conn.in_transaction:
                    self._writer_conn.execute("ROLLBACK")
                raise _translated(exc) from exc
            return result

    async def write(self, fn: Callable[[sqlite_utils.Database], T], *, first: bool = False) -> T:
        """Async form of write_sync, on the single writer thread; committed when it returns.

        Writes queued while the writer is busy share one transaction (group commit, see
        the module docstring); ``fn`` then runs in a savepoint of its own. ``first``: ahead
        of every write still waiting (the outcome of a relay's 250, whose commit must not
        wait behind a burst of sends: a crash in between repeats a delivered message).
        """
        future: Future[T] = Future()
        with self._pending_lock:
            at = self._first_slot if first else len(self._pending)
            self._pending.insert(at, (fn, future))
            self._first_slot += first
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        return await asyncio.wrap_future(future)

    def _drain(self) -> None:
        while True:
            with self._pending_lock:
                group = self._pending[:MAX_GROUP]
                del self._pending[:MAX_GROUP]
                self._first_slot = max(0, self._first_slot - len(group))
                if not group:
                    self._draining = False
                    return
            # A caller that was cancelled before its write started is not run.
            group = [(fn, f) for fn, f in group if f.set_running_or_notify_cancel()]
            if group:
                self._commit_group(group)

    def _commit_group(
        self, group: list[tuple[Callable[[sqlite_utils.Database], object], Future[object]]]
    ) -> None:
        done: list[tuple[Future[object], object, BaseException | None]] = []
        conn = self._writer_conn
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, future in group:
                    conn.execute("SAVEPOINT store_write")
                    try:
                        result = fn(self._writer)
                        for hook in self._before_commit:  # as write_sync: end of each write
                            hook(self._writer)
                    except Exception as exc:
                        if not conn.in_transaction:  # the error ended the whole transaction
                            raise
                        conn.execute("ROLLBACK TO SAVEPOINT store_write")
                        conn.execute("RELEASE SAVEPOINT store_write")
                        done.append((future, None, _translated(exc)))
                    else:
                        conn.execute("RELEASE SAVEPOINT store_write")
                        done.append((future, result, None))
                conn.execute("COMMIT")
            except BaseException as exc:  # nothing of this group is on disk: all of it fails
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for _, future in group:
                    future.set_exception(_translated(exc))
                return
        for future, result, error in done:  # only now, after the COMMIT
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    # -- reads -----------------------------------------------------------------------------
    def _reader(self) -> sqlite_utils.Database:
        db = getattr(self._readers, "db", None)
        if db is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._reader_conns.append(conn)
            db = sqlite_utils.Database(conn)
            self._readers.db = db
        return db

    def read_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run fn against a read-only connection, inside one snapshot (a read transaction)."""
        db = self._reader()
        db.conn.execute("BEGIN")
        try:
            return fn(db)
        finally:
            db.conn.execute("COMMIT")

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self.read_sync, fn)

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file and truncate it to zero bytes (after a purge,
        so the WAL keeps no older copy of a page); (busy, wal frames, frames copied)."""
        with self._lock:
            row = self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def integrity_check(self) -> str:
        row = self._writer_conn.execute("PRAGMA integrity_check").fetchone()
        return str(row[0])


def open_store(
    path: Path | str, sets: Sequence[Migrations] = (), *, source_id: str | None = None
) -> Store:
    """A Store on ``path``, with ``sets`` migrated (none by default)."""
    store = Store(path, source_id=source_id)
    if sets:
        store.migrate(sets)
    return store
