"""Pinned team keys: sync from the reviewed manifest, the change-of-key quarantine, the phone
confirmation, and the checks a recipient key passes before gpg is asked to encrypt.

Invariants:
- ``sync`` puts exactly the pinned fingerprints into the gateway keyring: each key file is
  imported into a scratch keyring, and only the pinned certificates are exported from there
  into the gateway's; other keys in a file never reach it. The database follows the manifest
  in one transaction: members no longer listed become 'removed';
- a new fingerprint for an address the team already knows (any status) is 'quarantined',
  never used, until ``confirm`` matches the phone code; a new address is 'active' at once
  (the region's review of the manifest is its verification). Every change is audited;
- ``check_member_key`` is the one gate for a recipient: an active pinned member key that
  passes every key check (keyinfo.unusable_reason), else RecipientKeyError with ``why``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlite_utils

from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.errors import InputError, NotFoundError
from securemail.form.fields import require_text
from securemail.keys.manifest import Manifest, ManifestError, TeamEntry, load_manifest
from securemail.openpgp.keyinfo import Fingerprint, KeyInfo, phone_code_matches, unusable_reason
from securemail.openpgp.keyring import Keyring
from securemail.openpgp.keystore import KeyStore, RecipientKeyError
from securemail.region import directory
from securemail.region.directory import Member, Team
from securemail.services import Services

ADDED, QUARANTINED, UNCHANGED, REMOVED = "added", "quarantined", "unchanged", "removed"


class PhoneCodeError(InputError):
    code = "keys.code_mismatch"
    nl = "De code klopt niet bij deze sleutel. De sleutel blijft in quarantaine."


@dataclass
class SyncReport:
    """What a sync changed; ``warnings`` name pinned keys that cannot be used as they are."""

    imported: list[str] = field(default_factory=list)  # fingerprints put into the keyring
    changes: list[tuple[str, str, str, str]] = field(default_factory=list)  # outcome, team,
    # email, fingerprint
    warnings: list[str] = field(default_factory=list)

    def of(self, outcome: str) -> list[tuple[str, str, str, str]]:
        return [c for c in self.changes if c[0] == outcome]


# -- the gate before gpg ------------------------------------------------------------------


async def check_member_key(keyring: KeyStore, member: Member, now: datetime) -> KeyInfo:
    """The member's key if it may be encrypted to now; RecipientKeyError with why otherwise."""
    if member.status != "active":
        why = "quarantined" if member.status == "quarantined" else "not_pinned"
        raise RecipientKeyError(
            f"recipient key is {member.status}", fingerprint=member.fingerprint, why=why
        )
    return await keyring.check_recipient(member.fingerprint, member.email, now=now)


async def require_pinned(svc: Services, team: Team, fpr: str, now: datetime) -> KeyInfo:
    """Check one fingerprint as a recipient for team: pinned and active, then the key itself."""
    found = await svc.store.read(
        lambda db: [m for m in directory.members(db, team.id, status=None) if m.fingerprint == fpr]
    )
    if not found:
        raise RecipientKeyError(
            "recipient key is not pinned for this team", fingerprint=fpr, why="not_pinned"
        )
    return await check_member_key(svc.keyring, found[0], now)


# -- pinning ----------------------------------------------------------------------------


def _event(
    actor: Actor, code: str, team: Team, fpr: str, detail: str = "", **kw: str
) -> audit.AuditEvent:
    return audit.AuditEvent.of(
        actor,
        code,
        object_type="key",
        object_id=fpr,
        recipient_org=team.address,
        outcome_detail=detail,
        nature="technical",
        **kw,
    )


def pin(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    team: Team,
    name: str,
    email: str,
    fingerprint: str,
    verified_by: str,
    verified_how: str,
    verified_at: str,
    now: str,
    source_id: str | None = None,
) -> str:
    """Pin a member key for team by the change-of-key rule; return ADDED, QUARANTINED or
    UNCHANGED. The keyring import is the caller's step."""
    fpr = directory.normalise_fingerprint(fingerprint)
    email = directory.require_email(email, "email")
    rows = directory.members(db, team.id, status=None)
    same = next((m for m in rows if m.fingerprint == fpr), None)
    evidence = {
        "name": require_text("name", name, max_length=directory.MAX_NAME, required=True),
        "email": email,
        "verified_by": require_text("verified_by", verified_by, max_length=directory.MAX_NAME),
        "verified_how": require_text("verified_how", verified_how, max_length=directory.MAX_NAME),
        "verified_at": verified_at,
    }
    if same is not None and same.status in ("active", "quarantined"):
        db.table("team_members").update(same.id, evidence)
        return UNCHANGED if same.status == "active" else QUARANTINED
    known = any(m.email == email for m in rows)
    status = QUARANTINED if known else "active"
    if same is None:
        db.table("team_members").insert(
            {"team_id": team.id, "fingerprint": fpr, "status": status, "created_at": now} | evidence
        )
    else:  # a removed key back in the manifest is a change of key like any other
        db.table("team_members").update(same.id, {"status": status} | evidence)
    code = "key.quarantine" if known else "key.import"
    detail = f"member={email}" + ("; waiting for the phone code" if known else "")
    audit.record(db, _event(actor, code, team, fpr, detail))
    return QUARANTINED if known else ADDED


def remove_unlisted(
    db: sqlite_utils.Database,
    actor: Actor,
    team: Team,
    keep: set[Fingerprint],
) -> list[Member]:
    """Mark the team's member keys not in ``keep`` as removed (audited ``key.remove``)."""
    gone = [
        m
        for m in directory.members(db, team.id, status=None)
        if m.status != "removed" and m.fingerprint not in keep
    ]
    for m in gone:
        db.table("team_members").update(m.id, {"status": "removed"})
        detail = f"member={m.email}; no longer in the manifest (was {m.status})"
        event = _event(actor, "key.remove", team, m.fingerprint, detail)
        audit.record(db, event)
    return gone


@dataclass(frozen=True, slots=True)
class ConfirmOutcome:
    """The result of a confirmation attempt; its audit row is written either way."""

    confirmed: tuple[Member, ...]
    fingerprint: str

    def raise_if_refused(self) -> None:
        if not self.confirmed:
            raise PhoneCodeError(
                "the code does not match this fingerprint; the key stays quarantined",
                fingerprint=self.fingerprint,
            )


def confirm(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    email: str,
    fingerprint: str,
    code: str,
    now: str,
    source_id: str | None = None,
) -> ConfirmOutcome:
    """Release a quarantined key when ``code`` is its phone code (keyinfo.phone_code).
    Must run in a write: the attempt is audited (``key.confirm``), refused or not."""
    require(actor, "directory.manage", Resource("directory"))
    fpr = directory.normalise_fingerprint(fingerprint)
    email = email.strip().lower()
    rows = [
        (m, directory.team_by_id(db, m.team_id))
        for m in _members_by_key(db, email, fpr)
        if m.status == "quarantined"
    ]
    if not rows:
        raise NotFoundError("no quarantined key for this address and fingerprint", fingerprint=fpr)
    ok = phone_code_matches(fpr, code)
    for member, team in rows:
        if ok:
            db.table("team_members").update(
                member.id,
                {
                    "status": "active",
                    "verified_by": actor.username,
                    "verified_how": "phone code of the changed key confirmed",
                    "verified_at": now,
                },
            )
        event = _event(
            actor,
            "key.confirm",
            team,
            fpr,
            f"member={email}" + ("" if ok else "; the code did not match"),
            outcome="success" if ok else "refused",
        )
        audit.record(db, event)
    return ConfirmOutcome(tuple(m for m, _ in rows) if ok else (), fpr)


def _members_by_key(db: sqlite_utils.Database, email: str, fpr: str) -> list[Member]:
    rows = db.table("team_members").rows_where("email = ? AND fingerprint = ?", [email, fpr])
    return [
        Member(r["id"], r["team_id"], r["name"], r["email"], Fingerprint(fpr), r["status"])
        for r in rows
    ]


def quarantined(db: sqlite_utils.Database) -> list[tuple[Team, Member]]:
    """Every quarantined member key, with its team (for the admin page and keys check)."""
    return [
        (team, m)
        for team in directory.list_teams(db, active_only=False)
        for m in directory.members(db, team.id, status="quarantined")
    ]


# -- sync from the manifest -------------------------------------------------------------


async def _stage(svc: Services, manifest: Manifest, report: SyncReport) -> dict[str, str]:
    """Import each key file into a scratch keyring; export only the pinned certificates.
    Returns {fingerprint: armored certificate}; ManifestError if a pin is not in its file."""
    scratch_dir = Path(tempfile.mkdtemp(prefix="smk-"))  # short: gpg-agent's socket path
    try:
        scratch = Keyring.create(scratch_dir / "g", binary=svc.settings.gpg.binary)
        try:
            in_file: dict[str, set[str]] = {}
            for key_file in sorted(set(manifest.pinned().values())):
                text = (manifest.folder / key_file).read_text(encoding="ascii")
                in_file[key_file] = set(await scratch.import_keys(text))
            now = svc.now()
            certificates: dict[str, str] = {}
            for team in manifest.teams:
                for i, m in enumerate(team.members, 1):
                    where = f"team {team.address}: member[{i}] {m.email}"
                    if m.fingerprint not in in_file[m.key_file]:
                        raise ManifestError(
                            f"{where}: {m.fingerprint} is not in {m.key_file}", entry=where
                        )
                    info = await scratch.key_info(m.fingerprint)
                    why = unusable_reason(info, m.email, now)
                    if why:
                        report.warnings.append(f"{where}: key {m.fingerprint} is unusable: {why}")
                    if m.fingerprint not in certificates:
                        certificates[m.fingerprint] = await scratch.export_public(m.fingerprint)
            return certificates
        finally:
            await scratch.close()
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _ensure_team(db: sqlite_utils.Database, actor: Actor, entry: TeamEntry, now: str) -> Team:
    org = next((o for o in directory.list_orgs(db) if o.code == entry.org_code), None)
    if org is None:
        directory.add_org(
            db, actor, code=entry.org_code, kind="nursing", name=entry.org_name, now=now
        )
    elif org.kind != "nursing":
        raise ManifestError(
            f"organisation {entry.org_code} is a {org.kind}, not a nursing organisation",
            entry=f"team {entry.address}: organisation",
        )
    team = directory.find_team(db, entry.address)
    if team is None:
        team = directory.add_team(
            db,
            actor,
            org_code=entry.org_code,
            name=entry.name,
            address=entry.address,
            category=entry.category,
            now=now,
        )
    elif directory.org_by_id(db, team.org_id).code != entry.org_code:
        raise ManifestError(
            f"team {entry.address} belongs to another organisation in this gateway",
            entry=f"team {entry.address}: organisation",
        )
    return team


def _apply(
    db: sqlite_utils.Database, actor: Actor, manifest: Manifest, now: str, source_id: str
) -> SyncReport:
    report = SyncReport()
    listed = set()
    for entry in manifest.teams:
        team = _ensure_team(db, actor, entry, now)
        listed.add(team.id)
        for m in entry.members:
            outcome = pin(
                db,
                actor,
                team=team,
                name=m.name,
                email=m.email,
                fingerprint=m.fingerprint,
                verified_by=m.verified_by,
                verified_how=m.verified_how,
                verified_at=m.verified_at,
                now=now,
                source_id=source_id,
            )
            report.changes.append((outcome, team.address, m.email, m.fingerprint))
        keep = {m.fingerprint for m in entry.members}
        for gone in remove_unlisted(db, actor, team, keep):
            report.changes.append((REMOVED, team.address, gone.email, gone.fingerprint))
    for team in directory.list_teams(db):
        if team.id not in listed and directory.members(db, team.id):
            report.warnings.append(
                f"team {team.address} has pinned keys but is not in the manifest; "
                "list it (with its members, or none) to manage it from the manifest"
            )
    return report


async def sync(svc: Services, folder: Path, actor: Actor) -> SyncReport:
    """Make the gateway's pinned keys what ``folder/directory.toml`` says (see the module
    invariants). Raises ManifestError, naming the entry, before changing anything."""
    require(actor, "directory.manage", Resource("directory"))
    manifest = load_manifest(folder)
    report = SyncReport()
    certificates = await _stage(svc, manifest, report)
    for fpr, certificate in certificates.items():
        imported = await svc.keyring.import_keys(certificate)
        if imported != [fpr]:  # one certificate in, exactly the pinned one
            raise ManifestError(f"export of {fpr} held other keys", entry=fpr)
        report.imported.append(fpr)
    now = svc.now_iso()
    source_id = svc.settings.gateway.source_id
    applied = await svc.store.write(lambda db: _apply(db, actor, manifest, now, source_id))
    applied.imported, applied.warnings = report.imported, report.warnings + applied.warnings
    return applied


async def import_and_pin(
    svc: Services,
    actor: Actor,
    team: Team,
    armor: str,
    *,
    name: str | None = None,
    verified_how: str = "",
) -> list[tuple[str, str, str]]:
    """Import public keys into the keyring and pin each for team by the change-of-key rule;
    return (fingerprint, email, outcome) per key. Member names default to the key's address."""
    results = []
    for fpr in await svc.keyring.import_keys(armor):
        info = await svc.keyring.key_info(fpr)
        email = info.uids[0] if info.uids else ""

        def pin_one(db: sqlite_utils.Database, fpr: str = fpr, email: str = email) -> str:
            return pin(
                db,
                actor,
                team=team,
                name=name or email,
                email=email,
                fingerprint=fpr,
                verified_by=actor.username,
                verified_how=verified_how,
                verified_at=svc.now_iso()[:10],
                now=svc.now_iso(),
                source_id=svc.settings.gateway.source_id,
            )

        outcome = svc.store.write_sync(pin_one)
        results.append((str(fpr), email, outcome))
    return results


def drift(db: sqlite_utils.Database, manifest: Manifest) -> list[str]:
    """Where the gateway's pinned team keys and the reviewed directory disagree (English).

    The directory is the reviewed truth; a difference means a sync is due, a changed key waits
    for its phone code, or a key was pinned outside the review (the demo does, on purpose).
    """
    listed = {(t.address, m.fingerprint) for t in manifest.teams for m in t.members}
    rows = db.execute(
        "SELECT t.address, m.fingerprint, m.status FROM team_members m "
        "JOIN teams t ON t.id = m.team_id WHERE m.status != 'removed'"
    ).fetchall()
    active = {(a, f) for a, f, status in rows if status == "active"}
    waiting = {(a, f) for a, f, status in rows if status == "quarantined"}
    out = []
    for address, fpr in sorted(listed - active):
        why = (
            "quarantined until `securemail keys confirm` with its phone code"
            if (address, fpr) in waiting
            else "not synced: run `securemail keys sync`"
        )
        out.append(f"{address}: {fpr} is in {manifest.folder} but not in use ({why})")
    for address, fpr in sorted(active - listed):
        out.append(
            f"{address}: encrypts to {fpr}, which {manifest.folder} does not list "
            "(pinned outside the reviewed directory)"
        )
    return out
