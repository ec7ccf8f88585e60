"""Organisations, teams, team members with their pinned keys, and preferred providers.

Invariant: a team is reached only through the fingerprints pinned here (team_members
with status 'active'); a key that merely sits in the keyring is never a recipient.
Every change is written with its audit row in the caller's transaction. Every name and
address typed here passes the one text policy (``require_text``: no control or
bidi-override characters, NFC, bounded) before anything is written, from the CLI, the
key directory and the demo alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor
from securemail.audit import trail as audit
from securemail.consent import Recipient
from securemail.errors import ConflictError, InputError, NotFoundError
from securemail.form.fields import require_text
from securemail.openpgp.keyring import Fingerprint
from securemail.store import insert_row

ORG_KINDS = ("practice", "nursing", "operator", "region")  # region: its coordinators
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
FPR_RE = re.compile(r"^[0-9A-F]{40}$")
#: Longest name of an organisation, team or member, and of an address (RFC 5321's path).
MAX_NAME, MAX_EMAIL = 200, 254

MIGRATIONS = Migrations("securemail.directory")


@MIGRATIONS(name="0001_directory")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE organisations (
            id INTEGER PRIMARY KEY,
            code TEXT NOT NULL UNIQUE,      -- AGB (practices) or URA (care providers)
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            notify_address TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE teams (
            id INTEGER PRIMARY KEY,
            org_id INTEGER NOT NULL REFERENCES organisations(id),
            name TEXT NOT NULL,
            address TEXT NOT NULL UNIQUE,   -- the team's one entry address
            category TEXT NOT NULL DEFAULT 'wijkverpleging',
            active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE team_members (
            id INTEGER PRIMARY KEY,
            team_id INTEGER NOT NULL REFERENCES teams(id),
            name TEXT NOT NULL,
            email TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active',   -- active | quarantined | removed
            verified_by TEXT NOT NULL DEFAULT '',
            verified_how TEXT NOT NULL DEFAULT '',
            verified_at TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            UNIQUE (team_id, fingerprint))"""
    )
    db.execute(
        """CREATE TABLE preferred_providers (
            practice_org_id INTEGER NOT NULL REFERENCES organisations(id),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            rank INTEGER NOT NULL,
            PRIMARY KEY (practice_org_id, team_id))"""
    )


@dataclass(frozen=True, slots=True)
class Organisation:
    id: int
    code: str
    kind: str
    name: str
    notify_address: str


@dataclass(frozen=True, slots=True)
class Team:
    id: int
    org_id: int
    name: str
    address: str
    category: str
    active: bool


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    team_id: int
    name: str
    email: str
    fingerprint: Fingerprint
    status: str


def _org(row: dict[str, Any]) -> Organisation:
    return Organisation(row["id"], row["code"], row["kind"], row["name"], row["notify_address"])


def _team(row: dict[str, Any]) -> Team:
    return Team(
        row["id"], row["org_id"], row["name"], row["address"], row["category"], bool(row["active"])
    )


def normalise_fingerprint(fpr: str) -> Fingerprint:
    clean = fpr.replace(" ", "").upper()
    if not FPR_RE.match(clean):
        raise InputError("fingerprint must be 40 hexadecimal characters", field="fingerprint")
    return Fingerprint(clean)


def require_email(value: str, field: str) -> str:
    value = require_text(field, value, max_length=MAX_EMAIL).lower()
    if not EMAIL_RE.match(value):
        raise InputError(f"{field} is not an e-mail address", field=field)
    return value


def add_org(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    code: str,
    kind: str,
    name: str,
    notify_address: str = "",
    now: str,
) -> Organisation:
    """Create an organisation; code is its AGB (8 digits) or URA (8 digits)."""
    code = code.strip()
    if not re.fullmatch(r"[0-9]{8}", code):
        raise InputError("organisation code must be an 8-digit AGB or URA code", field="code")
    if kind not in ORG_KINDS:
        raise InputError(f"kind must be one of {', '.join(ORG_KINDS)}", field="kind")
    name = require_text("name", name, max_length=MAX_NAME, required=True)
    if notify_address:
        notify_address = require_email(notify_address, "notify_address")
    if db.execute("SELECT 1 FROM organisations WHERE code = ?", [code]).fetchone():
        raise ConflictError(f"organisation {code} already exists", code=code)
    row = {
        "code": code,
        "kind": kind,
        "name": name,
        "notify_address": notify_address,
        "created_at": now,
    }
    oid = insert_row(db, "organisations", row)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor, "org.create", object_type="organisation", object_id=code, nature="technical"
        ),
    )
    return Organisation(oid, code, kind, row["name"], notify_address)


def add_team(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    org_code: str,
    name: str,
    address: str,
    category: str = "wijkverpleging",
    now: str,
) -> Team:
    name = require_text("name", name, max_length=MAX_NAME, required=True)
    org = org_by_code(db, org_code)
    if org.kind != "nursing":
        raise InputError("a team belongs to a nursing organisation", field="org")
    address = require_email(address, "address")
    if db.execute("SELECT 1 FROM teams WHERE address = ?", [address]).fetchone():
        raise ConflictError(f"team address {address} already exists", address=address)
    tid = insert_row(
        db,
        "teams",
        {
            "org_id": org.id,
            "name": name,
            "address": address,
            "category": category,
            "active": 1,
            "created_at": now,
        },
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor, "team.create", object_type="team", object_id=address, nature="technical"
        ),
    )
    return Team(tid, org.id, name, address, category, True)


def add_member(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    team_address: str,
    name: str,
    email: str,
    fingerprint: str,
    verified_how: str = "",
    now: str,
) -> Member:
    """Pin a member key for a team (the keyring import is the caller's step)."""
    name = require_text("name", name, max_length=MAX_NAME, required=True)
    verified_how = require_text("verified_how", verified_how, max_length=MAX_NAME)
    team = team_by_address(db, team_address)
    fpr = normalise_fingerprint(fingerprint)
    email = require_email(email, "email")
    if db.execute(
        "SELECT 1 FROM team_members WHERE team_id = ? AND fingerprint = ?", [team.id, fpr]
    ).fetchone():
        raise ConflictError("key already pinned for this team", fingerprint=fpr)
    mid = insert_row(
        db,
        "team_members",
        {
            "team_id": team.id,
            "name": name,
            "email": email,
            "fingerprint": fpr,
            "status": "active",
            "verified_by": actor.username,
            "verified_how": verified_how,
            "verified_at": now,
            "created_at": now,
        },
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "key.import",
            object_type="key",
            object_id=fpr,
            recipient_org=team.address,
            nature="technical",
        ),
    )
    return Member(mid, team.id, name, email, fpr, "active")


def set_preferred(
    db: sqlite_utils.Database, *, practice_code: str, team_addresses: list[str]
) -> None:
    """A practice's 1 to 3 preferred nursing providers, in order."""
    if not 1 <= len(team_addresses) <= 3:
        raise InputError("a practice has 1 to 3 preferred providers", field="preferred")
    practice = org_by_code(db, practice_code)
    if practice.kind != "practice":
        raise InputError("preferred providers belong to a GP practice", field="practice")
    teams = [team_by_address(db, a) for a in team_addresses]
    db.execute("DELETE FROM preferred_providers WHERE practice_org_id = ?", [practice.id])
    for rank, team in enumerate(teams, start=1):
        db.table("preferred_providers").insert(
            {"practice_org_id": practice.id, "team_id": team.id, "rank": rank}
        )


# -- lookups ---------------------------------------------------------------------------------


def org_by_code(db: sqlite_utils.Database, code: str) -> Organisation:
    rows = list(db.table("organisations").rows_where("code = ?", [code.strip()]))
    if not rows:
        raise NotFoundError(f"unknown organisation {code}", code=code)
    return _org(rows[0])


def org_by_id(db: sqlite_utils.Database, org_id: int) -> Organisation:
    rows = list(db.table("organisations").rows_where("id = ?", [org_id]))
    if not rows:
        raise NotFoundError(f"unknown organisation id {org_id}")
    return _org(rows[0])


def team_by_address(db: sqlite_utils.Database, address: str) -> Team:
    rows = list(db.table("teams").rows_where("address = ?", [address.strip().lower()]))
    if not rows:
        raise NotFoundError(f"unknown team address {address}", address=address)
    return _team(rows[0])


def team_by_id(db: sqlite_utils.Database, team_id: int) -> Team:
    rows = list(db.table("teams").rows_where("id = ?", [team_id]))
    if not rows:
        raise NotFoundError(f"unknown team id {team_id}")
    return _team(rows[0])


def find_team(db: sqlite_utils.Database, address: str) -> Team | None:
    rows = list(db.table("teams").rows_where("address = ?", [address.strip().lower()]))
    return _team(rows[0]) if rows else None


def list_orgs(db: sqlite_utils.Database) -> list[Organisation]:
    return [_org(r) for r in db.table("organisations").rows_where(order_by="name")]


def list_teams(db: sqlite_utils.Database, *, active_only: bool = True) -> list[Team]:
    where = "active = 1" if active_only else None
    return [_team(r) for r in db.table("teams").rows_where(where, order_by="name")]


def preferred_teams(db: sqlite_utils.Database, practice_org_id: int) -> list[Team]:
    rows = db.execute(
        "SELECT t.* FROM preferred_providers p JOIN teams t ON t.id = p.team_id "
        "WHERE p.practice_org_id = ? AND t.active = 1 ORDER BY p.rank",
        [practice_org_id],
    )
    names = [d[0] for d in rows.description]
    return [_team(dict(zip(names, r, strict=True))) for r in rows]


def members(
    db: sqlite_utils.Database, team_id: int, *, status: str | None = "active"
) -> list[Member]:
    where, params = "team_id = ?", list[int | str]([team_id])
    if status is not None:
        where += " AND status = ?"
        params.append(status)
    return [
        Member(
            r["id"], r["team_id"], r["name"], r["email"], Fingerprint(r["fingerprint"]), r["status"]
        )
        for r in db.table("team_members").rows_where(where, params, order_by="id")
    ]


def members_by_team(db: sqlite_utils.Database, team_ids: list[int]) -> dict[int, list[Member]]:
    """members(db, id, status=None) of each of team_ids in one query (a region's teams)."""
    out: dict[int, list[Member]] = {i: [] for i in team_ids}
    for r in db.execute(
        "SELECT id, team_id, name, email, fingerprint, status FROM team_members ORDER BY id"
    ):
        if r[1] in out:
            out[r[1]].append(Member(r[0], r[1], r[2], r[3], Fingerprint(r[4]), r[5]))
    return out


def allowed_receivers(
    db: sqlite_utils.Database, practice_org_id: int, passing_on_address: str = ""
) -> list[Team]:
    """Teams a practice may address: its preferred providers (or every active team when it has
    none configured yet), plus the regional passing-on address."""
    teams = preferred_teams(db, practice_org_id) or list_teams(db)
    if passing_on_address:
        extra = find_team(db, passing_on_address)
        if extra and extra.id not in {t.id for t in teams}:
            teams.append(extra)
    return teams


@dataclass(frozen=True, slots=True)
class ResolvedRecipient:
    """A consent recipient named on the command line: a team, an organisation or a category."""

    team_id: int | None = None
    org_id: int | None = None
    category: str | None = None


CATEGORIES = ("wijkverpleging",)


def covers(db: sqlite_utils.Database, broad: Recipient, narrow: Recipient) -> bool:
    """Whether consent ``narrow`` lies within ``broad`` (a category holds its teams and the
    organisations with a team in it; an organisation holds its teams). Equal recipients are
    not "within": the register compares those by decision, not by specificity."""
    if broad == narrow:
        return False
    if narrow.team_id is not None:
        team = db.execute(
            "SELECT org_id, category FROM teams WHERE id = ?", [narrow.team_id]
        ).fetchone()
        if team is None:
            return False
        return broad.org_id == team[0] or (broad.category is not None and broad.category == team[1])
    if narrow.org_id is not None and broad.category is not None:
        return (
            db.execute(
                "SELECT 1 FROM teams WHERE org_id = ? AND category = ? LIMIT 1",
                [narrow.org_id, broad.category],
            ).fetchone()
            is not None
        )
    return False


def resolve_recipient(db: sqlite_utils.Database, text: str) -> ResolvedRecipient:
    """A team address, an organisation code (AGB/URA) or a category name."""
    text = text.strip()
    if "@" in text:
        return ResolvedRecipient(team_id=team_by_address(db, text).id)
    if re.fullmatch(r"[0-9]{8}", text):
        return ResolvedRecipient(org_id=org_by_code(db, text).id)
    if text in CATEGORIES:
        return ResolvedRecipient(category=text)
    raise InputError(
        "recipient must be a team address, an 8-digit organisation code or a category "
        f"({', '.join(CATEGORIES)})",
        field="recipient",
    )
