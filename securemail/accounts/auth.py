"""Users, password hashing and who an authenticated person is (their Actor).

Invariant: passwords are stored only as scrypt hashes (memory-hard, from
``cryptography``); a GP's signing passphrase is never stored anywhere: only gpg's
protected secret key holds it. An admin's password reset always forces a new
second-factor enrolment, ends every session and token of that person and tells them
(``reset_password``);
the second factor itself lives in ``securemail.accounts.totp``.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlite_utils
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlite_utils import Migrations

from securemail.access import ROLES, Actor, Person, Resource, require
from securemail.accounts import apitoken, session, totp
from securemail.audit import trail as audit
from securemail.config import Settings
from securemail.delivery import outbox
from securemail.errors import ConflictError, InputError, NotFoundError
from securemail.form.fields import require_text
from securemail.message import notify
from securemail.region.directory import (
    find_team,
    org_by_code,
    org_by_id,
    require_email,
    team_by_address,
)
from securemail.store import insert_row

MIGRATIONS = Migrations("securemail.auth")

# scrypt cost: n=2**15, r=8 is 32 MiB per hash, OWASP's current minimum recommendation.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
#: Longest display name, and longest other profile text (phone, AGB) of an account.
MAX_NAME, MAX_PROFILE_TEXT = 200, 40
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
BIG_RE = re.compile(r"[0-9]{11}")

#: Who may give an order for a reserved procedure (Wet BIG art. 35-38), as enrolled with
#: ``user add --function``: the values of the form's ``principal.role`` (the definition's
#: enum carries their Dutch labels; tests/test_orders.py checks the two agree).
PRINCIPAL_FUNCTIONS = (
    "huisarts", "waarnemend_huisarts", "haio", "specialist_ouderengeneeskunde",
    "arts_verstandelijk_gehandicapten", "medisch_specialist", "verpleegkundig_specialist",
    "physician_assistant",
)  # fmt: skip


@MIGRATIONS(name="0001_users")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            email TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL,
            org_id INTEGER REFERENCES organisations(id),
            password_hash TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            -- GP profile: the principal section of the form is filled from these
            big TEXT NOT NULL DEFAULT '',
            agb TEXT NOT NULL DEFAULT '',
            function TEXT NOT NULL DEFAULT '',
            phone TEXT NOT NULL DEFAULT '',
            out_of_hours_phone TEXT NOT NULL DEFAULT '',
            signing_fingerprint TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE user_teams (
            user_id INTEGER NOT NULL REFERENCES users(id),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            PRIMARY KEY (user_id, team_id))"""
    )


@MIGRATIONS(name="0002_responsible_gp")
def _m2(db: sqlite_utils.Database) -> None:
    """A practice assistant's responsible GP (access.Person.responsible_user_id)."""
    db.execute("ALTER TABLE users ADD COLUMN responsible_user_id INTEGER REFERENCES users(id)")


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
        password.encode("utf-8")
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = Scrypt(salt=base64.b64decode(salt), length=32, n=int(n), r=int(r), p=int(p)).derive(
        password.encode("utf-8")
    )
    return hmac.compare_digest(computed, base64.b64decode(key))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    name: str
    email: str
    role: str
    org_id: int | None
    active: bool
    big: str
    agb: str
    function: str
    phone: str
    out_of_hours_phone: str
    signing_fingerprint: str
    #: A practice assistant's responsible GP (users.id), None for everyone else.
    responsible_user_id: int | None = None


def _user(row: dict[str, Any]) -> User:
    return User(
        row["id"],
        row["username"],
        row["name"],
        row["email"],
        row["role"],
        row["org_id"],
        bool(row["active"]),
        row["big"],
        row["agb"],
        row["function"],
        row["phone"],
        row["out_of_hours_phone"],
        row["signing_fingerprint"],
        row.get("responsible_user_id"),
    )


def validate_password(password: str) -> None:
    """A new password: long enough, bounded (scrypt's work must not follow an attacker's
    length) and free of control characters (a NUL or a line break cannot be typed at a
    login). Not normalised: what a person typed is what is hashed."""
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password must be at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"password must be at most {MAX_PASSWORD} characters", field="password")
    if _CONTROL.search(password):
        raise InputError("password contains a control character", field="password")


def parse_username(value: object) -> str:
    """A username as stored (trimmed, lower case), or InputError: the one gate for a
    username an admin types, at ``user add`` and at every admin action on an account."""
    text = require_text("username", value, max_length=63).lower()
    if not USERNAME_RE.fullmatch(text):
        raise InputError("username: 2-63 of a-z 0-9 . _ -", field="username")
    return text


def add_user(
    db: sqlite_utils.Database,
    actor: Actor,
    *,
    username: str,
    name: str,
    role: str,
    org_code: str | None,
    password: str,
    email: str = "",
    teams: list[str] | None = None,
    profile: dict[str, str] | None = None,
    responsible: str = "",
    now: str,
) -> User:
    """Create a personal account. Nurses name their teams; GPs carry their BIG profile."""
    username = parse_username(username)
    name = require_text("name", name, max_length=MAX_NAME)
    profile = {
        k: require_text(k, v, max_length=MAX_PROFILE_TEXT) for k, v in (profile or {}).items()
    }
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}", field="role")
    validate_password(password)
    if db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
        raise ConflictError(f"user {username} already exists", username=username)
    org_id = None
    if role != "admin" or org_code:
        if not org_code:
            raise InputError(f"a {role} belongs to an organisation (--org)", field="org")
        org = org_by_code(db, org_code)
        if role == "gp" and org.kind != "practice":
            raise InputError("a GP belongs to a GP practice", field="org")
        if role == "nurse" and org.kind != "nursing":
            raise InputError("a nurse belongs to a nursing organisation", field="org")
        if role == "assistant" and org.kind != "practice":
            raise InputError("a practice assistant belongs to a GP practice", field="org")
        if role == "coordinator" and org.kind != "region":
            raise InputError("a coordinator belongs to a region (--org REGIONCODE)", field="org")
        org_id = org.id
    if email:
        email = require_email(email, "email")
        if find_team(db, email) is not None:
            # Personal accounts only: a team's entry address is a mailbox, never a login.
            raise InputError(
                "a team mailbox is never a login; give the person's own address", field="email"
            )
    profile = dict(profile or {})
    big = profile.get("big", "").strip()
    if role == "gp" and not BIG_RE.fullmatch(big):
        raise InputError("a GP needs an 11-digit BIG number (--big)", field="big")
    if big and not BIG_RE.fullmatch(big):  # a nurse who performs: optional, never malformed
        raise InputError("a BIG number has 11 digits (--big)", field="big")
    function = _function(role, profile.get("function", "").strip())
    team_rows = [team_by_address(db, a) for a in (teams or [])]
    if role == "nurse":
        if not team_rows:
            raise InputError("a nurse is a member of at least one team (--team)", field="team")
        if any(t.org_id != org_id for t in team_rows):
            raise InputError("a nurse's teams belong to her organisation", field="team")
    responsible_id = _responsible_gp(db, role, org_id, responsible)
    uid = insert_row(
        db,
        "users",
        {
            "responsible_user_id": responsible_id,
            "username": username,
            "name": name,
            "email": email,
            "role": role,
            "org_id": org_id,
            "password_hash": hash_password(password),
            "active": 1,
            "big": big,
            "agb": profile.get("agb", "").strip(),
            "function": function,
            "phone": profile.get("phone", "").strip(),
            "out_of_hours_phone": profile.get("out_of_hours_phone", "").strip(),
            "signing_fingerprint": "",
            "created_at": now,
        },
    )
    for t in team_rows:
        db.table("user_teams").insert({"user_id": uid, "team_id": t.id})
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "user.create",
            object_type="user",
            object_id=username,
            outcome_detail=f"role={role}",
            nature="technical",
        ),
    )
    return user_by_id(db, uid)


def _responsible_gp(
    db: sqlite_utils.Database, role: str, org_id: int | None, responsible: str
) -> int | None:
    """A practice assistant acts under a GP of the same practice (--responsible); no other role
    names one."""
    if role != "assistant":
        if responsible:
            raise InputError(
                "only a practice assistant names a responsible GP", field="responsible"
            )
        return None
    row = db.execute(
        "SELECT id, role, org_id, active FROM users WHERE username = ?", [responsible]
    ).fetchone()
    if row is None or row[1] != "gp" or row[2] != org_id or not row[3]:
        raise InputError(
            "a practice assistant needs an active GP of the same practice (--responsible)",
            field="responsible",
        )
    return int(row[0])


def _function(role: str, function: str) -> str:
    """The enrolled function of someone who signs orders (a GP account): one of
    PRINCIPAL_FUNCTIONS, huisarts when not given; other roles sign no orders and have none."""
    if role != "gp":
        if function:
            raise InputError("only a GP account has a function (--function)", field="function")
        return ""
    function = function or "huisarts"
    if function not in PRINCIPAL_FUNCTIONS:
        raise InputError(
            f"function must be one of {', '.join(PRINCIPAL_FUNCTIONS)}", field="function"
        )
    return function


def set_signing_key(db: sqlite_utils.Database, actor: Actor, user_id: int, fpr: str) -> None:
    db.table("users").update(user_id, {"signing_fingerprint": fpr})
    audit.record(
        db,
        audit.AuditEvent.of(
            actor, "key.generate", object_type="key", object_id=fpr, nature="technical"
        ),
    )


def user_by_id(db: sqlite_utils.Database, user_id: int) -> User:
    rows = list(db.table("users").rows_where("id = ?", [user_id]))
    if not rows:
        raise NotFoundError(f"unknown user id {user_id}")
    return _user(rows[0])


def user_by_name(db: sqlite_utils.Database, username: str) -> User:
    username = parse_username(username)
    rows = list(db.table("users").rows_where("username = ?", [username.strip().lower()]))
    if not rows:
        raise NotFoundError(f"unknown user {username}", username=username)
    return _user(rows[0])


def find_user(db: sqlite_utils.Database, username: str) -> tuple[User, str] | None:
    """(user, password hash) or None; for the login check."""
    rows = list(db.table("users").rows_where("username = ?", [username.strip().lower()]))
    return (_user(rows[0]), rows[0]["password_hash"]) if rows else None


def team_ids(db: sqlite_utils.Database, user_id: int) -> frozenset[int]:
    return frozenset(
        r[0] for r in db.execute("SELECT team_id FROM user_teams WHERE user_id = ?", [user_id])
    )


def actor_for(db: sqlite_utils.Database, user: User, access_point: str) -> Person:
    org_code = org_by_id(db, user.org_id).code if user.org_id is not None else ""
    return Person(
        user_id=user.id,
        username=user.username,
        name=user.name,
        role=user.role,
        org_id=user.org_id,
        org_code=org_code,
        team_ids=team_ids(db, user.id),
        access_point=access_point,
        responsible_user_id=user.responsible_user_id,
    )


def actor_for_cli(db: sqlite_utils.Database, username: str) -> Person:
    """The Actor for `--as USER` on the command line (the operator vouches for the person)."""
    user = user_by_name(db, username)
    if not user.active:
        raise InputError(f"user {username} is not active", field="as")
    return actor_for(db, user, access_point=f"cli@{os.uname().nodename}")


def principal_profile(db: sqlite_utils.Database, user: User) -> dict[str, str]:
    """The form's principal section, from the GP's own profile (what the GP may not alter).
    ``role`` is the function enrolled with the account, never a default: an account without
    one is refused on send (securemail.exchange.send)."""
    org = org_by_id(db, user.org_id) if user.org_id is not None else None
    profile = {
        "name": user.name,
        "role": user.function,
        "big": user.big,
        "agb": user.agb,
        "practice_name": org.name if org else "",
        "practice_agb": org.code if org else "",
        "phone": user.phone,
        "out_of_hours_phone": user.out_of_hours_phone,
    }
    return {k: v for k, v in profile.items() if v}


def reset_password(
    db: sqlite_utils.Database,
    actor: Actor,
    username: str,
    password: str,
    *,
    source_id: str | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> int:
    """An admin sets a new password: the person must enrol a new authenticator at the next
    login, their recovery codes stop working, any lock is lifted, and every session and API
    token of theirs ends (audited user.update). Returns the number of sessions ended.

    With settings (the admin page and the CLI always pass them) the person is told in the
    same write: a patient-free ``account_reset`` notice to their e-mail address, else to
    their organisation's notice address, so a reset they did not ask for is noticed."""
    require(actor, "user.manage", Resource("user", ref=username))
    user = user_by_name(db, username)
    validate_password(password)
    db.table("users").update(user.id, {"password_hash": hash_password(password)})
    totp.require_reenrolment(db, user.id)
    totp.clear_lock(db, user.id)
    ended = session.end_all(db, user.id)
    # Whoever knew the old password may have made a token with it: tokens end too.
    at = now or datetime.now(UTC)
    tokens = apitoken.end_all(db, user.id, now=at)
    told = _tell_reset(db, actor, user, at, settings) if settings is not None else ""
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "user.update",
            object_type="user",
            object_id=user.username,
            nature="technical",
            outcome_detail=(
                f"password reset; second factor to enrol again; {ended} sessions ended; "
                f"{tokens} api tokens revoked{told}"
            ),
        ),
    )
    return ended


def _tell_reset(
    db: sqlite_utils.Database, actor: Actor, user: User, now: datetime, settings: Settings
) -> str:
    """Queue the account_reset notice; the audit detail's tail saying who was told."""
    to = user.email
    if not to and user.org_id is not None:
        to = org_by_id(db, user.org_id).notify_address
    if not to:
        return "; no address to tell the person"
    reference = notify.account_reference(user.id, now)
    outbox.enqueue_notice(
        db, notify.notice_account_reset, reference, to, settings, actor=actor, now=now.timestamp()
    )
    return f"; person told ({reference})"


def deactivate(
    db: sqlite_utils.Database,
    actor: Actor,
    username: str,
    *,
    now: datetime,
) -> tuple[int, int]:
    """An admin ends an account: it can no longer log in, and its sessions and API tokens
    end at once (audited user.update). Returns (sessions ended, tokens revoked)."""
    require(actor, "user.manage", Resource("user", ref=username))
    user = user_by_name(db, username)
    db.table("users").update(user.id, {"active": 0})
    ended = session.end_all(db, user.id)
    tokens = apitoken.end_all(db, user.id, now=now)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "user.update",
            object_type="user",
            object_id=user.username,
            nature="technical",
            outcome_detail=f"deactivated; {ended} sessions ended; {tokens} api tokens revoked",
        ),
    )
    return ended, tokens


def unlock(
    db: sqlite_utils.Database, actor: Actor, username: str, *, source_id: str | None = None
) -> None:
    """An admin lifts a temporary lock before it runs out (audited user.update)."""
    require(actor, "user.manage", Resource("user", ref=username))
    user = user_by_name(db, username)
    totp.clear_lock(db, user.id)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "user.update",
            object_type="user",
            object_id=user.username,
            nature="technical",
            outcome_detail="unlocked",
        ),
    )


def enrol_totp_for_demo(
    db: sqlite_utils.Database, user_id: int, now: datetime | None = None
) -> str:
    """Pair a demo user with a fresh TOTP secret and return it (for the demo credentials file,
    so a newcomer can make codes with pyotp or an authenticator app). Demo only."""
    user = user_by_id(db, user_id)
    return totp.enrol_for_demo(db, user.id, user.username, now=now or datetime.now(UTC))
