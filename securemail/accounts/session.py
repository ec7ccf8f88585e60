"""Server-side sessions in sqlite: opaque ids in HttpOnly cookies, idle and absolute expiry.

Invariant: the cookie holds only a random id; the table stores its SHA-256, so a copy
of the database does not hand out live sessions. A session id is new at every login
(rotation), and every state-changing request must carry the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlite_utils
from sqlite_utils import Migrations

MIGRATIONS = Migrations("securemail.session")
COOKIE = "securemail_session"


@MIGRATIONS(name="0001_sessions")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE sessions (
            id_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            csrf_token TEXT NOT NULL,
            stage TEXT NOT NULL DEFAULT 'full',   -- 'password' (second factor pending) | 'full'
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            access_point TEXT NOT NULL DEFAULT '')"""
    )
    db.execute("CREATE INDEX sessions_user ON sessions (user_id)")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    user_id: int
    csrf_token: str
    stage: str
    created_at: datetime
    last_seen_at: datetime


def create(
    db: sqlite_utils.Database,
    user_id: int,
    *,
    now: datetime,
    stage: str = "full",
    access_point: str = "",
) -> tuple[str, Session]:
    """A new session (new id: rotation at login); returns (cookie value, session)."""
    sid = secrets.token_urlsafe(32)
    row: dict[str, str | int] = {
        "id_hash": _hash(sid),
        "user_id": user_id,
        "csrf_token": secrets.token_urlsafe(32),
        "stage": stage,
        "created_at": _iso(now),
        "last_seen_at": _iso(now),
        "access_point": access_point,
    }
    db.table("sessions").insert(row)
    return sid, Session(_hash(sid), user_id, str(row["csrf_token"]), stage, now, now)


def load(
    db: sqlite_utils.Database, sid: str, *, now: datetime, idle: timedelta, absolute: timedelta
) -> Session | None:
    """The live session for a cookie value, or None (unknown, idle too long, too old)."""
    if not sid or len(sid) > 100:
        return None
    rows = list(db.table("sessions").rows_where("id_hash = ?", [_hash(sid)]))
    if not rows:
        return None
    r = rows[0]
    created = datetime.fromisoformat(r["created_at"])
    seen = datetime.fromisoformat(r["last_seen_at"])
    if now - seen > idle or now - created > absolute:
        return None
    return Session(r["id_hash"], r["user_id"], r["csrf_token"], r["stage"], created, seen)


def touch(db: sqlite_utils.Database, session: Session, now: datetime) -> None:
    db.execute(
        "UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?", [_iso(now), session.id_hash]
    )


def end(db: sqlite_utils.Database, session: Session) -> None:
    db.execute("DELETE FROM sessions WHERE id_hash = ?", [session.id_hash])


def end_id(db: sqlite_utils.Database, sid: str) -> None:
    """End the session a cookie value names, if any (at login: the id seen before it)."""
    db.execute("DELETE FROM sessions WHERE id_hash = ?", [_hash(sid)])


def end_all(db: sqlite_utils.Database, user_id: int) -> int:
    """Logout everywhere."""
    return db.execute("DELETE FROM sessions WHERE user_id = ?", [user_id]).rowcount


def purge_expired(db: sqlite_utils.Database, *, now: datetime, absolute: timedelta) -> int:
    return db.execute("DELETE FROM sessions WHERE created_at < ?", [_iso(now - absolute)]).rowcount


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf_token, token or "")
