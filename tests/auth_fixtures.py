"""Shared fixtures for the account, second-factor and access tests: a real store and people.

Everything is real: a sqlite file in tmp_path with every migration applied, scrypt
password hashes, sealed TOTP secrets under a real secrets.key. Only the clock is a
parameter (style.md §4).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from securemail.access import SYSTEM, Actor
from securemail.accounts import auth, totp
from securemail.home import open_store
from securemail.region import directory
from securemail.store import Store

PASSWORD = "correct horse battery staple"
T0 = datetime(2025, 3, 3, 9, 0, 0, tzinfo=UTC)  # a Monday morning


@dataclass
class Person:
    username: str
    user_id: int
    role: str
    secret: str = ""  # TOTP secret ('' until enrolled)

    def code(self, now: datetime, offset: int = 0) -> str:
        return totp.code_at(self.secret, totp.step_of(now) + offset)


PEOPLE = {
    # username: (role, org code, teams)
    "gp_a": ("gp", "01000001", []),
    "gp_a2": ("gp", "01000001", []),
    "gp_b": ("gp", "01000002", []),
    "nurse_c": ("nurse", "87000001", ["centrum@zorg.example"]),
    "nurse_o": ("nurse", "87000001", ["oost@zorg.example"]),
    "privacy_a": ("privacy_officer", "01000001", []),
    "privacy_b": ("privacy_officer", "01000002", []),
    "admin": ("admin", None, []),
    "coord_r": ("coordinator", "99000001", []),
}


def populate(db: sqlite_utils.Database, now: str = T0.isoformat()) -> None:
    """Two practices, one nursing organisation with two teams, a region (its coordinator),
    one person per PEOPLE entry."""
    directory.add_org(db, SYSTEM, code="01000001", kind="practice", name="Praktijk A", now=now)
    directory.add_org(db, SYSTEM, code="01000002", kind="practice", name="Praktijk B", now=now)
    directory.add_org(db, SYSTEM, code="87000001", kind="nursing", name="Zorg", now=now)
    directory.add_org(db, SYSTEM, code="99000001", kind="region", name="Regio", now=now)
    directory.add_team(
        db, SYSTEM, org_code="87000001", name="Centrum", address="centrum@zorg.example", now=now
    )
    directory.add_team(
        db, SYSTEM, org_code="87000001", name="Oost", address="oost@zorg.example", now=now
    )
    directory.set_preferred(
        db, practice_code="01000001", team_addresses=["centrum@zorg.example", "oost@zorg.example"]
    )
    directory.set_preferred(db, practice_code="01000002", team_addresses=["centrum@zorg.example"])
    for i, (username, (role, org, teams)) in enumerate(PEOPLE.items()):
        auth.add_user(
            db,
            SYSTEM,
            username=username,
            name=username.replace("_", " ").title(),
            role=role,
            org_code=org,
            password=PASSWORD,
            teams=teams,
            email=f"{username}@example.org",
            profile={"big": f"1901234560{i}"} if role == "gp" else None,
            now=now,
        )


_TEMPLATE: dict[str, bytes] = {}


def make_store(path: Path) -> Store:
    """A populated store in path. The people are hashed once per test session (scrypt is slow
    by design) and the database file is copied for each test."""
    if "db" not in _TEMPLATE:
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(Path(tmp) / "securemail.db")
            store.write_sync(populate)
            store.close()  # checkpoints the WAL into the main file
            _TEMPLATE["db"] = (Path(tmp) / "securemail.db").read_bytes()
    (path / "securemail.db").write_bytes(_TEMPLATE["db"])
    return open_store(path / "securemail.db")


def person(store: Store, username: str, *, enrol: bool = True) -> Person:
    user = store.read_sync(lambda db: auth.user_by_name(db, username))
    secret = ""
    if enrol:
        secret = store.write_sync(lambda db: auth.enrol_totp_for_demo(db, user.id, T0))
    return Person(username, user.id, user.role, secret)


def actor(store: Store, username: str, access_point: str = "test") -> Actor:
    return store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, username), access_point)
    )


def audit_rows(store: Store, code: str | None = None) -> list[dict[str, object]]:
    where, params = ("event_code = ?", [code]) if code else ("1", [])
    return store.read_sync(
        lambda db: list(db["audit_events"].rows_where(where, params, order_by="seq"))
    )
