"""The sqlite store: one writer thread, each write one ``BEGIN IMMEDIATE`` transaction.

Invariant: when ``write()`` returns, the change is committed (WAL, synchronous=FULL),
so "accepted" means on disk. Domain modules own their tables and register their
migrations in their own ``sqlite_utils.Migrations`` set; ``Store.migrate`` applies
every registered set in a fixed order.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import sqlite_utils
from sqlite_utils import Migrations

T = TypeVar("T")

#: Every migration set, in the order it is applied. Modules append theirs at import.
MIGRATION_SETS: list[Migrations] = []


def migrations(name: str) -> Migrations:
    """Create and register a module's migration set (call once per module, at import)."""
    for existing in MIGRATION_SETS:
        if existing.name == name:
            return existing
    m = Migrations(name)
    MIGRATION_SETS.append(m)
    return m


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


class Store:
    """A sqlite file with one serialised writer and one reader connection per thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer_conn = _connect(self.path)
        self._writer = sqlite_utils.Database(self._writer_conn)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._read_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
        self._before_commit: list[Callable[[sqlite_utils.Database], object]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations of every registered set; return the names applied."""
        import securemail.schema  # noqa: F401  (registers every module's migrations)

        applied: list[str] = []
        with self._lock:
            for m in MIGRATION_SETS:
                pending = [p.name for p in m.pending(self._writer)]
                m.apply(self._writer)
                applied += [f"{m.name}:{n}" for n in pending]
        return applied

    def pending_migrations(self) -> list[str]:
        import securemail.schema  # noqa: F401

        return [f"{m.name}:{p.name}" for m in MIGRATION_SETS for p in m.pending(self._writer)]

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
            except BaseException:
                if self._writer_conn.in_transaction:
                    self._writer_conn.execute("ROLLBACK")
                raise
            self._writer_conn.execute("COMMIT")
            return result

    async def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Async form of write_sync, on the single writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.write_sync, fn)

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

    def integrity_check(self) -> str:
        row = self._writer_conn.execute("PRAGMA integrity_check").fetchone()
        return str(row[0])


def open_store(path: Path | str, *, migrate: bool = True) -> Store:
    store = Store(path)
    if migrate:
        store.migrate()
    return store
