"""API tokens: how a GP practice's own information system (HIS) calls the JSON API.

Invariants:

- a token is created by a GP for their own practice, acts as that GP and nobody else, and
  is shown once: the table keeps only its SHA-256 (the token has 256 random bits, so a
  fast hash is enough) and an 8-character prefix to recognise it by;
- a token carries scopes (``request:send``, ``request:read``); the access policy
  (``access.is_allowed``) refuses every action outside them, so a token can never do more
  than its scopes *and* its GP's role allow;
- a token stops working when revoked, when it expires, or when its GP's account is
  deactivated or moves to another organisation;
- a token never replaces the signing passphrase: every send still needs it;
- creation and revocation are audited (``auth.token``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.errors import InputError, NotFoundError, SecuremailError
from securemail.store import insert_row

MIGRATIONS = Migrations("securemail.apitoken")

PREFIX = "smk_"
DOMAIN = b"securemail.api-token.v1\x00"
DEFAULT_DAYS = 365
#: scope -> the policy actions it opens (access.POLICY still decides by role and organisation).
SCOPES: dict[str, frozenset[str]] = {
    "request:send": frozenset({"request.create", "request.send"}),
    # request.view: GET /api/requests/{ref}, the team's answer for the practice's record
    # (tokens reach /api/ routes only; no API route shows the request's own content)
    "request:read": frozenset({"request.status", "request.list", "request.view", "request.record"}),
}


@MIGRATIONS(name="0001_api_tokens")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),   -- the GP it acts as
            org_id INTEGER NOT NULL REFERENCES organisations(id),
            name TEXT NOT NULL,                              -- e.g. the HIS product
            token_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            scopes TEXT NOT NULL,                            -- space-separated
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            last_used_at TEXT NOT NULL DEFAULT '',
            revoked_at TEXT NOT NULL DEFAULT '')"""
    )
    db.execute("CREATE INDEX api_tokens_org ON api_tokens (org_id)")


class TokenInvalidError(SecuremailError):
    """Unknown, revoked or expired token; deliberately one error for all three."""

    code = "auth.token_invalid"
    nl = "Het API-token is ongeldig, ingetrokken of verlopen."
    http_status = 401


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    user_id: int
    org_id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: str
    expires_at: str
    last_used_at: str
    revoked_at: str

    @property
    def active(self) -> bool:
        return not self.revoked_at


def _hash(token: str) -> str:
    return hashlib.sha256(DOMAIN + token.encode("utf-8")).hexdigest()


def _token(row: dict[str, Any]) -> ApiToken:
    return ApiToken(
        row["id"],
        row["user_id"],
        row["org_id"],
        row["name"],
        row["prefix"],
        tuple(row["scopes"].split()),
        row["created_at"],
        row["expires_at"],
        row["last_used_at"],
        row["revoked_at"],
    )


def parse_scopes(scopes: list[str] | str) -> tuple[str, ...]:
    """Validate requested scopes: known names only, at least one, sorted and unique."""
    items = scopes.split() if isinstance(scopes, str) else [s.strip() for s in scopes]
    wanted = sorted({s for s in items if s})
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InputError(f"scopes must be among {', '.join(SCOPES)}", field="scopes")
    return tuple(wanted)


def create(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    name: str,
    scopes: list[str] | str,
    now: datetime,
    days: int = DEFAULT_DAYS,
    source_id: str | None = None,
) -> tuple[str, ApiToken]:
    """A new token acting as actor (a GP) for their practice: (the token, shown once; its row)."""
    require(actor, "token.manage", Resource("token", org_id=actor.org_id))
    name = name.strip()
    if not 1 <= len(name) <= 80:
        raise InputError("a token needs a name of 1-80 characters", field="name")
    if not 1 <= days <= 3 * 365:
        raise InputError("a token lives 1 to 1095 days", field="days")
    wanted = parse_scopes(scopes)
    token = PREFIX + secrets.token_urlsafe(32)
    row = {
        "user_id": actor.user_id,
        "org_id": actor.org_id,
        "name": name,
        "token_hash": _hash(token),
        "prefix": token[: len(PREFIX) + 8],
        "scopes": " ".join(wanted),
        "created_at": now.isoformat(timespec="seconds"),
        "expires_at": (now + timedelta(days=days)).isoformat(timespec="seconds"),
        "last_used_at": "",
        "revoked_at": "",
    }
    tid = insert_row(db, "api_tokens", row)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.token",
            object_type="api_token",
            object_id=str(tid),
            nature="technical",
            outcome_detail=f"created {row['prefix']}… scopes={row['scopes']}",
        ),
    )
    return token, token_by_id(db, tid)


def token_by_id(db: sqlite_utils.Database, token_id: int) -> ApiToken:
    rows = list(db.table("api_tokens").rows_where("id = ?", [token_id]))
    if not rows:
        raise NotFoundError("api token not found", token=str(token_id))
    return _token(rows[0])


def list_tokens(db: sqlite_utils.Database, actor: Actor) -> list[ApiToken]:
    """The practice's tokens (active and revoked), newest first."""
    require(actor, "token.manage", Resource("token", org_id=actor.org_id))
    return [
        _token(r)
        for r in db.table("api_tokens").rows_where("org_id = ?", [actor.org_id], order_by="id DESC")
    ]


def end_all(db: sqlite_utils.Database, user_id: int, *, now: datetime) -> int:
    """Revoke every live token of one person (password reset, deactivation): the caller
    checked the policy and writes the audit row. Returns the number revoked."""
    live = [
        r["id"] for r in db["api_tokens"].rows_where("user_id = ? AND revoked_at = ''", [user_id])
    ]
    for token_id in live:
        db.table("api_tokens").update(token_id, {"revoked_at": now.isoformat(timespec="seconds")})
    return len(live)


def list_every(db: sqlite_utils.Database) -> list[ApiToken]:
    """Every token of every practice, for the operator's CLI (no patient data in a token)."""
    return [_token(r) for r in db["api_tokens"].rows_where(order_by="id")]


def revoke(
    db: sqlite_utils.Database,
    actor: Actor,
    token_id: int,
    *,
    now: datetime,
    source_id: str | None = None,
) -> ApiToken:
    """Revoke a token of actor's practice; another practice's token looks like 'not found'."""
    rows = list(db.table("api_tokens").rows_where("id = ?", [token_id]))
    org = rows[0]["org_id"] if rows else None
    require(actor, "token.manage", Resource("token", org_id=org, ref=str(token_id)), hide=True)
    if not rows:
        raise NotFoundError("api token not found", token=str(token_id))
    if not rows[0]["revoked_at"]:
        db.table("api_tokens").update(token_id, {"revoked_at": now.isoformat(timespec="seconds")})
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "auth.token",
                object_type="api_token",
                object_id=str(token_id),
                nature="technical",
                outcome_detail=f"revoked {rows[0]['prefix']}…",
            ),
        )
    return token_by_id(db, token_id)


def authenticate(db: sqlite_utils.Database, token: str, *, now: datetime) -> ApiToken:
    """The live token for a bearer value (and marks it used), or TokenInvalidError."""
    if not token.startswith(PREFIX) or len(token) > 100:
        raise TokenInvalidError("malformed api token")
    digest = _hash(token)
    rows = list(db.table("api_tokens").rows_where("token_hash = ?", [digest]))
    # The lookup is by hash (an index probe); compare again in constant time for good measure.
    if not rows or not hmac.compare_digest(rows[0]["token_hash"], digest):
        raise TokenInvalidError("unknown api token")
    found = _token(rows[0])
    if found.revoked_at:
        raise TokenInvalidError("revoked api token", token=found.prefix)
    if datetime.fromisoformat(found.expires_at) <= now:
        raise TokenInvalidError("expired api token", token=found.prefix)
    db.table("api_tokens").update(found.id, {"last_used_at": now.isoformat(timespec="seconds")})
    return found


def scoped_actions(scopes: tuple[str, ...]) -> frozenset[str]:
    """Every policy action the scopes open."""
    out: set[str] = set()
    for s in scopes:
        out |= SCOPES.get(s, frozenset())
    return frozenset(out)
