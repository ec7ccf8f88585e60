"""Idempotent sending: one request per client-chosen key, however often it is posted.

A practice system sends ``Idempotency-Key`` with ``POST /api/requests``; the web form's
send carries a one-time token made with its preview; the CLI takes ``--idempotency-key``.
All three end here.

Invariants:
- a key belongs to one GP (``user_id``); rows older than ``WINDOW_SECONDS`` no longer count;
- ``claim`` takes a key in its own write: the first caller gets ``Claim.new``, a repeat
  with the same body gets the first request's reference (``Claim.done``) or, while the first
  is still sending, ``Claim.busy``; a different body under the key is a ConflictError;
- the reference is written by ``finish`` inside the transaction that stores the request
  (exchange.send's commit), so "the key has a reference" and "the request exists" are one
  fact: a crash cannot leave one without the other;
- a refused send ``release``s its key (nothing was stored: a retry may try again); a key
  left pending by a process that died is taken over after ``STALE_SECONDS``;
- what is kept of the body is a SHA-256 of its canonical JSON, never the body (and never
  the passphrase, which is not part of it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import sqlite_utils

from securemail.errors import ConflictError, InputError

#: A repeat within this long returns the first answer.
WINDOW_SECONDS = 86_400.0
#: A key still pending after this long belongs to a send that died; it may be taken over.
STALE_SECONDS = 600.0
KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")


class IdempotencyConflictError(ConflictError):
    code = "idempotency.conflict"
    nl = (
        "Deze verzendsleutel is al gebruikt voor een ander verzoek; "
        "gebruik voor elk nieuw verzoek een nieuwe sleutel."
    )


class IdempotencyBusyError(ConflictError):
    code = "idempotency.in_progress"
    nl = "Dit verzoek wordt nog verzonden; probeer het over enkele seconden opnieuw."
    retry_after = 5


@dataclass(frozen=True, slots=True)
class Claim:
    state: Literal["new", "done", "busy"]
    reference: str = ""


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise InputError(
            "Idempotency-Key must be 1 to 128 printable ASCII characters", field="Idempotency-Key"
        )
    return key


def body_hash(body: Any) -> str:
    """SHA-256 of the canonical JSON of what is sent (the caller leaves the passphrase out)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def claim(db: sqlite_utils.Database, user_id: int, key: str, digest: str, now: float) -> Claim:
    """Take ``key`` for this send, or say what became of the first send under it."""
    db.execute(
        "DELETE FROM idempotency WHERE user_id = ? AND key = ? AND created_at < ?",
        [user_id, key, now - WINDOW_SECONDS],
    )
    row = db.execute(
        "SELECT body_sha256, reference, created_at FROM idempotency WHERE user_id = ? AND key = ?",
        [user_id, key],
    ).fetchone()
    if row is None:
        db.execute(
            "INSERT INTO idempotency (user_id, key, body_sha256, reference, created_at) "
            "VALUES (?, ?, ?, '', ?)",
            [user_id, key, digest, now],
        )
        return Claim("new")
    if row[0] != digest:
        raise IdempotencyConflictError(
            "this Idempotency-Key was used with a different body", key=key
        )
    if row[1]:
        return Claim("done", str(row[1]))
    if float(row[2]) < now - STALE_SECONDS:  # the first send died without storing anything
        db.execute(
            "UPDATE idempotency SET created_at = ? WHERE user_id = ? AND key = ?",
            [now, user_id, key],
        )
        return Claim("new")
    return Claim("busy")


def finish(db: sqlite_utils.Database, user_id: int, key: str, reference: str) -> None:
    """Inside the request's own transaction: the key now names its request."""
    db.execute(
        "UPDATE idempotency SET reference = ? WHERE user_id = ? AND key = ?",
        [reference, user_id, key],
    )


def release(db: sqlite_utils.Database, user_id: int, key: str) -> None:
    """A refused send stored nothing: a retry under the key may try again."""
    db.execute(
        "DELETE FROM idempotency WHERE user_id = ? AND key = ? AND reference = ''",
        [user_id, key],
    )


def purge(db: sqlite_utils.Database, now: float) -> int:
    """Forget keys older than the window (a bounded table)."""
    return db.execute(
        "DELETE FROM idempotency WHERE created_at < ?", [now - WINDOW_SECONDS]
    ).rowcount
