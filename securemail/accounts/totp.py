"""The second factor: TOTP (RFC 6238) enrolment and checks, recovery codes, failures and lockout.

Invariants:

- a TOTP secret is stored only sealed (AES-GCM under the home's ``secrets.key``, bound to
  its user id, see ``secretbox``) and never logged; it is shown once, as a QR code and as
  text, while enrolling;
- a time step's code is accepted at most once per user: ``last_totp_step`` only moves
  forward, so a code seen over someone's shoulder (or replayed from a proxy log) is refused
  even inside its 30-second window; the server accepts one step either side of its clock;
- recovery codes carry 80 random bits each, are stored only as SHA-256 hashes, and each
  works once;
- every failed password or second factor counts; at ``max_failures`` the account locks
  for ``minutes``. The count is cleared only by a *complete* login (password and second
  factor): otherwise someone who knows the password could reset it between guesses;
- every failure, lockout and enrolment writes its audit row in the caller's transaction,
  which is why the checks here return a ``Verdict`` instead of raising.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno
import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import SYSTEM, Actor
from securemail.audit import trail as audit
from securemail.errors import SecuremailError
from securemail.secretbox import SecretBox

MIGRATIONS = Migrations("securemail.totp")

STEP_SECONDS = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of the server clock (phones drift; RFC 6238 §5.2)
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
RECOVERY_LENGTH = 16  # 16 x 5 bits = 80 bits: offline guessing of a stolen hash is hopeless
ENROL_MINUTES = 10  # a secret shown for enrolment must be confirmed within this time
RECOVERY_DOMAIN = b"securemail.recovery-code.v1\x00"
_CODE_RE = re.compile(r"^[0-9]{6}$")
#: failure reason -> the audit row's outcome_detail (no secrets, no codes).
FAILURES = {
    "bad_password": "wrong password",
    "bad_code": "second factor: wrong code",
    "replayed": "second factor: code already used",
    "bad_recovery_code": "second factor: wrong recovery code",
    "malformed": "second factor: malformed code",
    "locked": "attempt while locked",
}


@MIGRATIONS(name="0001_second_factor")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE user_security (
            user_id INTEGER PRIMARY KEY REFERENCES users(id),
            totp_secret TEXT NOT NULL DEFAULT '',      -- sealed (secretbox); '' = none
            totp_pending TEXT NOT NULL DEFAULT '',     -- sealed secret being enrolled
            totp_pending_at TEXT NOT NULL DEFAULT '',
            totp_enrolled_at TEXT NOT NULL DEFAULT '',
            last_totp_step INTEGER NOT NULL DEFAULT 0, -- replay guard: highest step used
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT NOT NULL DEFAULT '',
            must_enrol INTEGER NOT NULL DEFAULT 1)"""
    )
    db.execute(
        """CREATE TABLE recovery_codes (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            code_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            used_at TEXT NOT NULL DEFAULT '')"""
    )
    db.execute("CREATE INDEX recovery_codes_user ON recovery_codes (user_id)")


class SecondFactorError(SecuremailError):
    """A code that does not fit while enrolling (login checks return a Verdict instead)."""

    code = "auth.totp_invalid"
    nl = "De code klopt niet. Controleer de tijd op uw telefoon en probeer de nieuwe code."
    http_status = 422


class EnrolmentExpiredError(SecuremailError):
    code = "auth.enrol_expired"
    nl = "De koppelcode is verlopen. Scan de nieuwe QR-code."
    http_status = 422


@dataclass(frozen=True, slots=True)
class Lockout:
    """How many failures lock an account, and for how long (from [web] settings)."""

    max_failures: int = 5
    minutes: int = 15


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What the person sees once while enrolling: the secret as QR code and as text."""

    secret: str  # base32; shown once, never logged
    uri: str  # otpauth://totp/...
    qr_data_uri: str  # data:image/svg+xml;... (the CSP allows img-src data:)

    @property
    def secret_grouped(self) -> str:
        """The secret in groups of four, for typing into an authenticator app."""
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one login check; ``reason`` is "ok", "not_enrolled" or a FAILURES key."""

    ok: bool
    reason: str
    method: str = ""  # "totp" | "recovery_code" when ok
    locked_until: datetime | None = None
    recovery_left: int = 0


# -- rows ----------------------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _row(db: sqlite_utils.Database, user_id: int) -> dict[str, object]:
    rows = list(db.table("user_security").rows_where("user_id = ?", [user_id]))
    if rows:
        return rows[0]
    return {
        "user_id": user_id,
        "totp_secret": "",
        "totp_pending": "",
        "totp_pending_at": "",
        "totp_enrolled_at": "",
        "last_totp_step": 0,
        "failed_logins": 0,
        "locked_until": "",
        "must_enrol": 1,
    }


def _update(db: sqlite_utils.Database, user_id: int, **values: object) -> None:
    db.execute("INSERT OR IGNORE INTO user_security (user_id) VALUES (?)", [user_id])
    db.table("user_security").update(user_id, values)


def needs_enrolment(db: sqlite_utils.Database, user_id: int) -> bool:
    """True until the person has confirmed an authenticator (and again after an admin reset)."""
    row = _row(db, user_id)
    return bool(row["must_enrol"]) or not row["totp_secret"]


def locked_until(db: sqlite_utils.Database, user_id: int, now: datetime) -> datetime | None:
    """When the account's temporary lock ends, or None when it is not locked."""
    value = str(_row(db, user_id)["locked_until"])
    if not value:
        return None
    until = datetime.fromisoformat(value)
    return until if until > now else None


def _context(user_id: int) -> str:
    # Binds each sealed secret to its user: a row copied onto another user does not open.
    return f"totp:{user_id}"


# -- TOTP ------------------------------------------------------------------------------------


def step_of(now: datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def code_at(secret: str, step: int) -> str:
    """The code for one time step (tests and the demo use it; so does matching)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).at(step * STEP_SECONDS)


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    here = step_of(now)
    found = None
    for step in range(here - WINDOW, here + WINDOW + 1):
        # Compare every candidate (no early exit) in constant time.
        if hmac.compare_digest(code_at(secret, step), code):
            found = step
    return found


def normalise_code(code: str) -> str:
    """Drop spaces and dashes; upper-case; read O as 0 and I/L as 1 (recovery codes)."""
    cleaned = re.sub(r"[\s-]", "", code).upper()
    return cleaned.translate(str.maketrans("OIL", "011"))


def begin_enrolment(
    db: sqlite_utils.Database, user_id: int, username: str, *, issuer: str, now: datetime
) -> Enrolment:
    """A fresh secret for this person, kept as pending until a code from it is confirmed.

    Each call replaces the pending secret, so a QR code is valid only as long as it is the
    one last shown."""
    secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, RFC 4226's recommendation
    box = SecretBox.for_db(db)
    _update(
        db,
        user_id,
        totp_pending=box.seal(secret, context=_context(user_id)),
        totp_pending_at=_iso(now),
    )
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=issuer
    )
    qr = segno.make(uri, error="m")
    return Enrolment(secret, uri, qr.svg_data_uri(scale=5, border=2))


def confirm_enrolment(
    db: sqlite_utils.Database,
    actor: Actor,
    code: str,
    *,
    now: datetime,
) -> list[str]:
    """Make the pending secret the person's second factor once a code from it fits.

    Returns the new recovery codes (shown once); any earlier codes stop working."""
    user_id = _user_id(actor)
    row = _row(db, user_id)
    if not row["totp_pending"] or not row["totp_pending_at"]:
        raise EnrolmentExpiredError("no enrolment in progress")
    started = datetime.fromisoformat(str(row["totp_pending_at"]))
    if now - started > timedelta(minutes=ENROL_MINUTES):
        raise EnrolmentExpiredError("enrolment secret expired")
    secret = SecretBox.for_db(db).open(str(row["totp_pending"]), context=_context(user_id))
    cleaned = normalise_code(code)
    step = _matching_step(secret, cleaned, now) if _CODE_RE.match(cleaned) else None
    if step is None:
        raise SecondFactorError("enrolment code does not match")
    _update(
        db,
        user_id,
        totp_secret=row["totp_pending"],
        totp_pending="",
        totp_pending_at="",
        totp_enrolled_at=_iso(now),
        last_totp_step=step,
        must_enrol=0,
    )
    codes = _new_recovery_codes(db, user_id, now)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.totp_enrol",
            object_type="user",
            object_id=actor.username,
            nature="technical",
            outcome_detail="authenticator paired; recovery codes issued",
        ),
    )
    return codes


def enrol_for_demo(
    db: sqlite_utils.Database,
    user_id: int,
    username: str,
    *,
    now: datetime,
) -> str:
    """Pair a demo account with a known secret, returned for the demo's credentials file.

    Only the demo uses this: a real person's secret is shown to them once and nowhere else."""
    secret = pyotp.random_base32()
    box = SecretBox.for_db(db)
    _update(
        db,
        user_id,
        totp_secret=box.seal(secret, context=_context(user_id)),
        totp_pending="",
        totp_pending_at="",
        totp_enrolled_at=_iso(now),
        last_totp_step=0,
        must_enrol=0,
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            SYSTEM,
            "auth.totp_enrol",
            object_type="user",
            object_id=username,
            outcome_detail="demo account paired",
        ),
    )
    return secret


def require_reenrolment(db: sqlite_utils.Database, user_id: int) -> None:
    """Forget the second factor and the recovery codes: the next login enrols again."""
    _update(
        db,
        user_id,
        totp_secret="",
        totp_pending="",
        totp_pending_at="",
        totp_enrolled_at="",
        must_enrol=1,
    )
    db.execute("DELETE FROM recovery_codes WHERE user_id = ?", [user_id])


# -- recovery codes ----------------------------------------------------------------------------


def _recovery_hash(user_id: int, normalised: str) -> str:
    return hashlib.sha256(
        RECOVERY_DOMAIN + str(user_id).encode() + b"\x00" + normalised.encode()
    ).hexdigest()


def _new_recovery_codes(db: sqlite_utils.Database, user_id: int, now: datetime) -> list[str]:
    db.execute("DELETE FROM recovery_codes WHERE user_id = ?", [user_id])
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        db.table("recovery_codes").insert(
            {
                "user_id": user_id,
                "code_hash": _recovery_hash(user_id, raw),
                "created_at": _iso(now),
                "used_at": "",
            }
        )
        codes.append("-".join(raw[i : i + 4] for i in range(0, RECOVERY_LENGTH, 4)))
    return codes


def renew_recovery_codes(db: sqlite_utils.Database, actor: Actor, *, now: datetime) -> list[str]:
    """New recovery codes for a signed-in person (the old ones stop working); shown once."""
    user_id = _user_id(actor)
    if needs_enrolment(db, user_id):
        raise SecondFactorError("no authenticator paired")
    codes = _new_recovery_codes(db, user_id, now)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.totp_enrol",
            object_type="user",
            object_id=actor.username,
            nature="technical",
            outcome_detail="recovery codes renewed",
        ),
    )
    return codes


def recovery_codes_left(db: sqlite_utils.Database, user_id: int) -> int:
    row = db.execute(
        "SELECT count(*) FROM recovery_codes WHERE user_id = ? AND used_at = ''", [user_id]
    ).fetchone()
    return int(row[0])


# -- login checks --------------------------------------------------------------------------


def _user_id(actor: Actor) -> int:
    if actor.user_id is None:
        raise SecuremailError("the system account has no second factor")
    return actor.user_id


def register_failure(
    db: sqlite_utils.Database,
    actor: Actor,
    reason: str,
    *,
    now: datetime,
    policy: Lockout,
) -> Verdict:
    """Count one failed password or code (audited auth.fail); lock at the limit (auth.lockout).

    reason is a FAILURES key."""
    user_id = _user_id(actor)
    row = _row(db, user_id)
    already = locked_until(db, user_id, now)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.fail",
            outcome="refused",
            outcome_detail=FAILURES[reason],
            object_type="user",
            object_id=actor.username,
        ),
    )
    if already is not None:
        # Attempts during a lock do not extend it: otherwise anyone could keep a GP out for good.
        return Verdict(False, "locked", locked_until=already)
    failures = int(str(row["failed_logins"])) + 1
    if failures < policy.max_failures:
        _update(db, user_id, failed_logins=failures)
        return Verdict(False, reason)
    until = now + timedelta(minutes=policy.minutes)
    _update(db, user_id, failed_logins=0, locked_until=_iso(until))
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.lockout",
            outcome="refused",
            object_type="user",
            object_id=actor.username,
            outcome_detail=f"{failures} failures; locked until {_iso(until)}",
        ),
    )
    return Verdict(False, "locked", locked_until=until)


def verify_second_factor(
    db: sqlite_utils.Database,
    actor: Actor,
    code: str,
    *,
    now: datetime,
    policy: Lockout,
    lock_applies: bool = True,
) -> Verdict:
    """Check a TOTP code (±1 step, each step once) or an unused recovery code.

    On success the failure count is cleared (and any lock lifted) and ``auth.login``
    recorded; on failure the failure is counted (and may lock the account). Never raises
    for a wrong code. ``lock_applies=False``: the caller found that this attempt comes from
    a source that did not fail for this account, so someone else's guesses do not keep the
    person out (securemail.web.throttle.AccountSources)."""
    user_id = _user_id(actor)
    until = locked_until(db, user_id, now)
    if until is not None and lock_applies:
        return register_failure(db, actor, "locked", now=now, policy=policy)
    row = _row(db, user_id)
    if needs_enrolment(db, user_id):
        return Verdict(False, "not_enrolled")
    cleaned = normalise_code(code)
    if _CODE_RE.match(cleaned):
        secret = SecretBox.for_db(db).open(str(row["totp_secret"]), context=_context(user_id))
        step = _matching_step(secret, cleaned, now)
        if step is None:
            return register_failure(db, actor, "bad_code", now=now, policy=policy)
        if step <= int(str(row["last_totp_step"])):
            return register_failure(db, actor, "replayed", now=now, policy=policy)
        _update(db, user_id, last_totp_step=step)
        method = "totp"
    elif len(cleaned) == RECOVERY_LENGTH:
        used = db.execute(
            "UPDATE recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? "
            "AND used_at = ''",
            [_iso(now), user_id, _recovery_hash(user_id, cleaned)],
        ).rowcount
        if used != 1:
            return register_failure(db, actor, "bad_recovery_code", now=now, policy=policy)
        method = "recovery_code"
    else:
        return register_failure(db, actor, "malformed", now=now, policy=policy)
    _update(db, user_id, failed_logins=0, locked_until="")
    left = recovery_codes_left(db, user_id)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "auth.login",
            object_type="user",
            object_id=actor.username,
            outcome_detail=f"password + {method}",
        ),
    )
    return Verdict(True, "ok", method=method, recovery_left=left)


def clear_lock(db: sqlite_utils.Database, user_id: int) -> None:
    """Lift a temporary lock and forget the failures (an admin's unlock)."""
    _update(db, user_id, failed_logins=0, locked_until="")
