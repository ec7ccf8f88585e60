"""Fixtures for closing the loop: the e2e gateway plus a second team with its own key, a nurse
in each team, consent for both, a controllable clock, and a real delivery worker run.

Registered in tests/conftest.py (pytest_plugins), so tests/test_answer.py, tests/test_asks.py
and tests/e2e/test_loop.py share them. Keys are generated once per session, one member key
per team; the secret halves live only in each team's 'mail client' homedir.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from securemail.access import Actor
from securemail.accounts import auth
from tests.clock import Clock, working_wednesday
from tests.gateway import (
    GP_PASSWORD,
    NURSE_PASSWORD,
    TEAM,
    Gateway,
    Team,
    build_gateway,
    close_gateway,
    export_pair,
    kill_agents,
    make_member_key,
    relay_settings,
)

TEAM_B = "wijkteam-west@zorg-zuid.example"
NURSE_B_PASSWORD = "nurse b password 12345"


@dataclass
class Loop:
    gw: Gateway
    clock: Clock
    nurse_a: Actor  # nurse1, team A (TEAM)
    nurse_b: Actor  # nurse_b, team B (TEAM_B)
    team_b_home: Path  # team B's mail client keyring (its secret key)

    def credentials(self, username: str) -> dict[str, Any]:
        """What webflow.login needs for a user paired by build_gateway, at this clock."""
        passwords = {"huisarts": GP_PASSWORD, "nurse1": NURSE_PASSWORD}
        return {
            "username": username,
            "password": passwords[username],
            "totp_secret": self.gw.extra["totp_secrets"][username],
            "clock": self.clock,
        }


@pytest.fixture(scope="session")
def loop_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """One member key pair per team, as armor: {'a': {...}, 'b': {...}}."""
    out: dict[str, dict[str, str]] = {}
    for team, email in (("a", "nurse1@zorg-noord.example"), ("b", "west@zorg-zuid.example")):
        home = tmp_path_factory.mktemp(f"loopkeys{team}") / "g"
        home.mkdir(mode=0o700)
        make_member_key(home, email, usage="sign", expire=None)
        out[team] = export_pair(home)
        kill_agents(home)
    return out


@pytest.fixture
def loop_start() -> datetime | None:
    """Where the loop's clock starts: None is the next plain working Wednesday after today. A
    test module whose story is set in a given month overrides this fixture with that month's
    start, so the clock is frozen there before anything is recorded and only moves forward."""
    return None


@pytest.fixture
async def loop(
    tmp_path: Path,
    loop_keys: dict[str, dict[str, str]],
    smtp_server: Any,
    relay_cafile: str,
    loop_start: datetime | None,
) -> AsyncIterator[Loop]:
    # The clock is frozen first, on a Wednesday morning after today with three working days
    # ahead: everything the gateway records (users, consent, sessions) is dated by it.
    clock = Clock(loop_start or working_wednesday())
    team_b = Team(
        address=TEAM_B,
        name="Wijkteam West",
        org_code="12345678",
        org_name="Zorg Zuid",
        keys=loop_keys["b"],
        member=("West", "west@zorg-zuid.example"),
        nurse=("nurse_b", "Nurse Bee", NURSE_B_PASSWORD),
        keyring="b-gnupg",
    )
    gw = await build_gateway(
        team_keys=loop_keys["a"],
        teams=[team_b],
        preferred=[TEAM],
        smtp=relay_settings(smtp_server, relay_cafile),
        clock=clock,
    )
    svc = gw.svc
    nurse_a = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "nurse1"))
    nurse_b = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "nurse_b"))
    yield Loop(gw, clock, nurse_a, nurse_b, gw.extra["team_homes"][TEAM_B])
    close_gateway(gw)


def notices(svc: Any, kind: str) -> list[bytes]:
    """The queued notices of one kind (X-Securemail-Notice), as raw bytes."""
    rows = svc.store.read_sync(
        lambda db: db.execute("SELECT mime FROM outbox WHERE kind = 'notice'").fetchall()
    )
    marker = f"X-Securemail-Notice: {kind}\r\n".encode()
    return [bytes(r[0]) for r in rows if marker in bytes(r[0])]


def other_practice_gp(svc: Any) -> Actor:
    """A GP of another practice (Elders, 07654321): the stranger of the scoping tests."""
    from securemail.access import SYSTEM
    from securemail.region import directory

    now = svc.now_iso()

    def add(db: Any) -> None:
        directory.add_org(db, SYSTEM, code="07654321", kind="practice", name="Elders", now=now)
        auth.add_user(
            db, SYSTEM, username="gp_elders", name="Dr. Elders", role="gp",
            org_code="07654321", password="another password 123", now=now,
            profile={"big": "19012345699"},
        )  # fmt: skip

    svc.store.write_sync(add)
    actor: Actor = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_elders"))
    return actor


def audit_codes(svc: Any, object_id: str) -> list[str]:
    return svc.store.read_sync(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT event_code FROM audit_events WHERE object_id = ? ORDER BY seq", [object_id]
            )
        ]
    )


def verify_order(home: Path, decrypted: bytes) -> tuple[str, bytes]:
    """What a team's mail client does with the GP's order (RFC 3156 6.1): take the
    multipart/signed entity out of the decrypted message and have the team's own gpg
    verify its detached signature. Returns gpg's status lines and the signed bytes."""
    from securemail.message import mime

    content, signature = mime.signed_parts(decrypted)
    with tempfile.NamedTemporaryFile(dir=home, suffix=".asc") as sig:
        sig.write(signature)
        sig.flush()
        out = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", "--verify",
             sig.name, "-"],
            input=content,
            capture_output=True,
            check=False,
            timeout=60,
        )  # fmt: skip
    return out.stderr.decode(), content
