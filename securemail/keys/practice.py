"""A GP practice's own key, pinned like a team's member keys: what the team's signed answer
is sealed to, so that it lands in the practice's mailbox and its information system.

Invariants: at most one active key per practice (pinning another retires the earlier one,
audited); the key's user ids must include the practice's notice address, which is where the
sealed answer goes; only the pinned fingerprint is ever encrypted to, after the same key
checks a team's recipient key passes (``Keyring.check_recipient``). Importing a file puts
only its keys into the gateway keyring; a file with more than one key is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.errors import InputError
from securemail.openpgp.keyinfo import Fingerprint, KeyInfo
from securemail.region import directory
from securemail.services import Services

MIGRATIONS = Migrations("securemail.practice_keys")


@MIGRATIONS(name="0001_practice_keys")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE practice_keys (
            id INTEGER PRIMARY KEY,
            org_id INTEGER NOT NULL REFERENCES organisations(id),
            fingerprint TEXT NOT NULL,
            email TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active',   -- active | retired
            pinned_by TEXT NOT NULL,
            pinned_at TEXT NOT NULL)"""
    )
    db.execute(
        "CREATE UNIQUE INDEX practice_keys_active ON practice_keys (org_id) WHERE status = 'active'"
    )


@dataclass(frozen=True, slots=True)
class PracticeKey:
    org_id: int
    fingerprint: Fingerprint
    email: str


def active_key(db: sqlite_utils.Database, org_id: int) -> PracticeKey | None:
    row = db.execute(
        "SELECT org_id, fingerprint, email FROM practice_keys "
        "WHERE org_id = ? AND status = 'active'",
        [org_id],
    ).fetchone()
    return PracticeKey(int(row[0]), Fingerprint(row[1]), str(row[2])) if row else None


def _record_pin(db: sqlite_utils.Database, actor: Actor, org_code: str, fpr: str, now: str) -> None:
    org = directory.org_by_code(db, org_code)
    db.execute(
        "UPDATE practice_keys SET status = 'retired' WHERE org_id = ? AND status = 'active'",
        [org.id],
    )
    db.table("practice_keys").insert(
        {
            "org_id": org.id,
            "fingerprint": fpr,
            "email": org.notify_address,
            "status": "active",
            "pinned_by": actor.username,
            "pinned_at": now,
        }
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "key.import",
            object_type="key",
            object_id=fpr,
            recipient_org=org.code,
            outcome_detail=f"practice key pinned for {org.code}",
            nature="technical",
        ),
    )


async def pin(svc: Services, actor: Actor, org_code: str, armor: str) -> Fingerprint:
    """Import one public key and pin it as the practice's; it must carry the practice's
    notice address as a user id and pass the recipient checks now."""
    require(actor, "directory.manage", Resource("key", ref=org_code))
    org = await svc.store.read(lambda db: directory.org_by_code(db, org_code))
    if org.kind != "practice":
        raise InputError("only a GP practice has a practice key", field="org")
    if not org.notify_address:
        raise InputError(
            "the practice needs a notice address (org add --notify) to receive answers",
            field="org",
        )
    fprs = await svc.keyring.import_keys(armor)
    if len(fprs) != 1:
        raise InputError("give exactly one public key for the practice", field="key")
    fpr = fprs[0]
    await check(svc, PracticeKey(org.id, fpr, org.notify_address), svc.now())
    now = svc.now_iso()
    await svc.store.write(lambda db: _record_pin(db, actor, org_code, str(fpr), now))
    return fpr


async def check(svc: Services, key: PracticeKey, now: datetime) -> KeyInfo:
    """The key, if the answer may be sealed to it now (RecipientKeyError with why if not)."""
    return await svc.keyring.check_recipient(key.fingerprint, key.email, now=now)


__all__ = ["MIGRATIONS", "PracticeKey", "active_key", "check", "pin"]
