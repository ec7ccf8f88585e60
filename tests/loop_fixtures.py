"""Fixtures for closing the loop: the e2e gateway plus a second team with its own key, a nurse
in each team, consent for both, a controllable clock, and a real delivery worker run.

Registered in tests/conftest.py (pytest_plugins), so tests/test_answer.py, tests/test_asks.py
and tests/e2e/test_loop.py share them. Keys are generated once per session, one member key
per team; the secret halves live only in each team's 'mail client' homedir.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.home import gateway_fingerprint
from securemail.region import directory
from tests.clock import Clock, working_wednesday
from tests.e2e.conftest import (
    EXAMPLE,
    GP_PASSWORD,
    NURSE_PASSWORD,
    TEAM,
    Gateway,
    build_gateway,
    gpg_cli,
    grant_consent,
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


def _make_keys(home: Path, email: str) -> None:
    gpg_cli(home, "--passphrase", "", "--quick-gen-key", f"Nurse <{email}>", "ed25519", "sign")
    fpr = next(
        line.split(":")[9]
        for line in gpg_cli(home, "--with-colons", "--list-keys", email).decode().splitlines()
        if line.startswith("fpr:")
    )
    gpg_cli(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")


@pytest.fixture(scope="session")
def loop_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """One member key pair per team, as armor: {'a': {...}, 'b': {...}}."""
    out: dict[str, dict[str, str]] = {}
    for team, email in (("a", "nurse1@zorg-noord.example"), ("b", "west@zorg-zuid.example")):
        home = tmp_path_factory.mktemp(f"loopkeys{team}") / "g"
        home.mkdir(mode=0o700)
        _make_keys(home, email)
        out[team] = {
            "public": gpg_cli(home, "--armor", "--export").decode(),
            "secret": gpg_cli(
                home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor",
                "--export-secret-keys",
            ).decode(),
        }  # fmt: skip
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
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
    smtp = {
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "starttls": "required",
        "cafile": relay_cafile,
        "timeout_seconds": 5.0,
    }
    # The clock is frozen first, on a Wednesday morning after today with three working days
    # ahead: everything the gateway records (users, consent, sessions) is dated by it.
    clock = Clock(loop_start or working_wednesday())
    gw = await build_gateway(tmp_path, loop_keys["a"], smtp, clock=clock)
    svc = gw.svc
    now = svc.now_iso()

    def team_b(db: Any) -> None:
        directory.add_org(db, SYSTEM, code="12345678", kind="nursing", name="Zorg Zuid", now=now)
        directory.add_team(
            db, SYSTEM, org_code="12345678", name="Wijkteam West", address=TEAM_B, now=now
        )
        directory.set_preferred(db, practice_code="01234567", team_addresses=[TEAM])

    svc.store.write_sync(team_b)
    [fpr] = await svc.keyring.import_keys(loop_keys["b"]["public"])
    svc.store.write_sync(
        lambda db: (
            directory.add_member(
                db, SYSTEM, team_address=TEAM_B, name="West", email="west@zorg-zuid.example",
                fingerprint=fpr, now=now,
            ),
            auth.add_user(
                db, SYSTEM, username="nurse_b", name="Nurse Bee", role="nurse",
                org_code="12345678", password=NURSE_B_PASSWORD, teams=[TEAM_B], now=now,
            ),
        )
    )  # fmt: skip
    grant_consent(svc, gw.gp, EXAMPLE["patient"]["bsn"], TEAM_B)
    team_b_home = gw.home / "b-gnupg"
    team_b_home.mkdir(mode=0o700)
    gpg_cli(team_b_home, "--import", stdin=loop_keys["b"]["secret"].encode())
    gp_fpr = svc.store.read_sync(lambda db: auth.user_by_name(db, "huisarts").signing_fingerprint)
    gpg_cli(team_b_home, "--import", stdin=(await svc.keyring.export_public(gp_fpr)).encode())
    # ... and the gateway's key, which seals what it forwards (from the regional directory too)
    gw_fpr = gateway_fingerprint(svc.store)
    gpg_cli(team_b_home, "--import", stdin=(await svc.keyring.export_public(gw_fpr)).encode())
    nurse_a = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "nurse1"))
    nurse_b = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "nurse_b"))
    yield Loop(gw, clock, nurse_a, nurse_b, team_b_home)
    gw.svc.close()
    for gnupg in (gw.home / "gnupg", gw.nurse_home, team_b_home):
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"],
            check=False,
            capture_output=True,
        )
    shutil.rmtree(gw.home, ignore_errors=True)


def notices(svc: Any, kind: str) -> list[bytes]:
    """The queued notices of one kind (X-Securemail-Notice), as raw bytes."""
    rows = svc.store.read_sync(
        lambda db: db.execute("SELECT mime FROM outbox WHERE kind = 'notice'").fetchall()
    )
    marker = f"X-Securemail-Notice: {kind}\r\n".encode()
    return [bytes(r[0]) for r in rows if marker in bytes(r[0])]


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
