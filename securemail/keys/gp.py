"""GP signing keys: made at enrolment, passphrase changes, revocation and replacement, and
the public keys nurses use to check a GP's signature.

Invariants: a GP's signing key is made in the gateway keyring under a passphrase only the
GP knows (never stored; gpg-agent caches nothing); every key a GP ever had is listed in
``gp_keys`` and its public half stays in the keyring after revocation, so signatures made
before stay checkable (gpg reports them as made by a revoked key) while nothing signs with
it again (keyinfo.unusable_signer_reason). Every step is audited.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor, Resource, require
from securemail.accounts import auth
from securemail.audit import trail as audit
from securemail.errors import InputError, NotFoundError
from securemail.openpgp.keyinfo import Fingerprint, parse_fingerprint
from securemail.openpgp.keyring import REVOCATION_REASONS
from securemail.services import Services
from securemail.store import get_meta

MIN_PASSPHRASE = 8
MIGRATIONS = Migrations("securemail.gpkeys")


@MIGRATIONS(name="0001_gp_keys")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE gp_keys (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            fingerprint TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL DEFAULT 'active',   -- active | revoked
            reason TEXT NOT NULL DEFAULT '',         -- compromised | superseded | retired
            created_at TEXT NOT NULL,
            revoked_at TEXT NOT NULL DEFAULT '')"""
    )
    # Keys enrolled before this table existed.
    db.execute(
        "INSERT INTO gp_keys (user_id, fingerprint, created_at) "
        "SELECT id, signing_fingerprint, created_at FROM users WHERE signing_fingerprint != ''"
    )


@dataclass(frozen=True, slots=True)
class GpKey:
    username: str
    name: str
    practice_code: str
    fingerprint: Fingerprint
    status: str
    reason: str
    created_at: str
    revoked_at: str


@dataclass(frozen=True, slots=True)
class Revocation:
    revoked: Fingerprint
    certificate: str  # armored revocation, to publish beside the public key
    replacement: Fingerprint | None


def require_passphrase(passphrase: str) -> str:
    """The signing passphrase's rule, checked before anything is written (``user add``)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise InputError(
            f"a signing passphrase has at least {MIN_PASSPHRASE} characters", field="passphrase"
        )
    return passphrase


def _record(db: sqlite_utils.Database, actor: Actor, code: str, fpr: str, detail: str) -> None:
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            code,
            object_type="key",
            object_id=fpr,
            outcome_detail=detail,
            nature="technical",
        ),
    )


async def enrol(svc: Services, actor: Actor, user: auth.User, passphrase: str) -> Fingerprint:
    """Create the GP's personal signing key under a passphrase only the GP knows."""
    if user.role != "gp":
        raise InputError(f"{user.username} is not a GP", field="user")
    email = user.email or f"{user.username}@gp.invalid"
    fpr = await svc.keyring.generate_key(
        user.name, email, require_passphrase(passphrase), kind="signing"
    )
    # The From of what the GP signs: an address at the gateway's domain, on this key.
    await svc.keyring.add_uid(
        fpr, user.name, svc.settings.gateway.gp_address(user.username), passphrase
    )
    now = svc.now_iso()

    def write(db: sqlite_utils.Database) -> None:
        auth.set_signing_key(db, actor, user.id, fpr)  # audits key.generate
        db.table("gp_keys").insert({"user_id": user.id, "fingerprint": fpr, "created_at": now})

    await svc.store.write(write)
    return fpr


def _signing_key(user: auth.User) -> Fingerprint:
    if not user.signing_fingerprint:
        raise NotFoundError(f"{user.username} has no signing key", username=user.username)
    return parse_fingerprint(user.signing_fingerprint)


async def change_passphrase(
    svc: Services, actor: Actor, user: auth.User, old: str, new: str
) -> Fingerprint:
    """Change the passphrase of the GP's signing key (the GP gives both; gpg checks the old)."""
    fpr = _signing_key(user)
    await svc.keyring.change_passphrase(fpr, old, require_passphrase(new))
    await svc.store.write(
        lambda db: _record(db, actor, "key.passphrase", fpr, f"user={user.username}")
    )
    return fpr


async def _stored_revocation(svc: Services, fpr: Fingerprint) -> str:
    """The revocation certificate gpg wrote when it made the key (reason: none given): for
    a GP who left and cannot give the passphrase."""
    path = svc.keyring.homedir / "openpgp-revocs.d" / f"{fpr}.rev"
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise NotFoundError(
            "no stored revocation certificate; revoke with the GP's passphrase", fingerprint=fpr
        ) from None
    # gpg puts a ':' before the armor so that the file cannot be imported by mistake.
    certificate = text[text.index(":-----BEGIN") + 1 :]
    await svc.keyring.import_keys(certificate)
    return certificate


async def revoke(
    svc: Services,
    actor: Actor,
    user: auth.User,
    *,
    reason: str,
    comment: str = "",
    passphrase: str | None = None,
    new_passphrase: str | None = None,
) -> Revocation:
    """Revoke the GP's signing key and, given ``new_passphrase``, make its replacement.

    With the GP's ``passphrase`` the revocation carries ``reason`` (REVOCATION_REASONS);
    without it, the certificate gpg stored at generation is used (no reason in it).
    """
    require(actor, "directory.manage", Resource("directory"))
    if reason not in REVOCATION_REASONS:
        raise InputError(f"reason must be one of {', '.join(REVOCATION_REASONS)}", field="reason")
    if new_passphrase is not None:
        require_passphrase(new_passphrase)
    fpr = _signing_key(user)
    if (await svc.keyring.key_info(fpr)).revoked:
        raise InputError("this signing key is already revoked", field="user")
    if passphrase is not None:
        certificate = await svc.keyring.revoke(fpr, passphrase, reason=reason, comment=comment)
    else:
        certificate = await _stored_revocation(svc, fpr)
    now = svc.now_iso()

    def write(db: sqlite_utils.Database) -> None:
        db.execute(
            "UPDATE gp_keys SET status = 'revoked', reason = ?, revoked_at = ? "
            "WHERE fingerprint = ?",
            [reason, now, fpr],
        )
        detail = f"user={user.username}; reason={reason}"
        _record(db, actor, "key.revoke", fpr, detail + ("" if passphrase else "; stored cert"))

    await svc.store.write(write)
    replacement = None
    if new_passphrase is not None:
        replacement = await enrol(svc, actor, user, new_passphrase)
    return Revocation(fpr, certificate, replacement)


def list_gp_keys(db: sqlite_utils.Database) -> list[GpKey]:
    """Every GP signing key the gateway made, newest first per GP (no patient data)."""
    cur = db.execute(
        "SELECT u.username, u.name, COALESCE(o.code, ''), k.fingerprint, k.status, k.reason, "
        "k.created_at, k.revoked_at FROM gp_keys k JOIN users u ON u.id = k.user_id "
        "LEFT JOIN organisations o ON o.id = u.org_id ORDER BY u.username, k.id DESC"
    )
    return [GpKey(*row) for row in cur]


async def export_gp_keys(svc: Services) -> tuple[str, list[GpKey]]:
    """The armored public keys of every GP key, revoked ones with their revocation, and the
    gateway's own key (it seals passed-on requests and notices, and is the reply address):
    what a nurse's mail client imports to check every signature it gets, old and new."""
    keys = await svc.store.read(list_gp_keys)
    armored = [await svc.keyring.export_public(k.fingerprint) for k in keys]
    gateway = await svc.store.read(lambda db: get_meta(db, "gateway_fingerprint"))
    if gateway:
        armored.append(await svc.keyring.export_public(Fingerprint(gateway)))
    return "".join(armored), keys
