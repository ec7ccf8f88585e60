"""A whole gateway for end-to-end tests: an initialised home, a practice with a GP whose
signing key is made in the test, a nursing team whose member keys are made in the test
(secret halves only in the test's 'mail client' keyring), consent on record, and a real
STARTTLS relay on 127.0.0.1 that records every byte."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from securemail import config, demo
from securemail.access import SYSTEM, Actor, org_of
from securemail.accounts import auth
from securemail.cli.directory import enrol_gp_key
from securemail.delivery import worker as delivery
from securemail.exchange.send import Hooks
from securemail.home import autocrypt_headers, init_home, notice_signer, open_services
from securemail.keys import pinning as keydir
from securemail.region import directory
from securemail.services import Services, utcnow
from tests.conftest import SCRATCH_HOMES, kill_gpg_agent, remove_scratch_home

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "examples" / "uitvoeringsverzoek.json").read_text(encoding="utf-8"))
TEAM = "wijkteam-centrum@zorg-noord.example"
OTHER_TEAM = "wijkteam-zonder-sleutel@zorg-noord.example"
GP_PASSWORD = "correct horse battery staple"
GP_PASSPHRASE = "signing passphrase of the GP"
NURSE_PASSWORD = "nurse password 12345"


@dataclass
class Gateway:
    home: Path
    svc: Services
    nurse_home: Path  # the team's mail client keyring (gpg --homedir) with the secret keys
    gp: Actor
    member_fingerprints: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def decrypt_as_nurse(self, raw: bytes) -> subprocess.CompletedProcess[bytes]:
        """What the nurse's mail client does: gpg --decrypt, reporting the signature."""
        return subprocess.run(
            ["gpg", "--homedir", str(self.nurse_home), "--batch", "--status-fd", "2", "--decrypt"],
            input=raw,
            capture_output=True,
            check=False,
            timeout=60,
        )


def gpg_cli(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def make_team_member_keys(home: Path) -> dict[str, str]:
    """Two nurses' key pairs in a new keyring at ``home``: {'public': armor, 'secret': armor}."""
    home.mkdir(mode=0o700)
    for email in ("nurse1@zorg-noord.example", "nurse2@zorg-noord.example"):
        gpg_cli(
            home,
            "--passphrase",
            "",
            "--quick-gen-key",
            f"Nurse <{email}>",
            "ed25519",
            "sign,cert",
            "2y",
        )
        fpr = [
            line.split(":")[9]
            for line in gpg_cli(home, "--with-colons", "--list-keys", email).decode().splitlines()
            if line.startswith("fpr:")
        ][0]
        gpg_cli(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
    keys = {
        "public": gpg_cli(home, "--armor", "--export").decode(),
        "secret": gpg_cli(
            home,
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--export-secret-keys",
        ).decode(),
    }
    kill_gpg_agent(home)  # a key-making home: nothing more runs in it
    return keys


@pytest.fixture(scope="session")
def team_member_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two nurses' key pairs, made once per session: {'public': armor, 'secret': armor}."""
    return make_team_member_keys(tmp_path_factory.mktemp("team-keys") / "gnupg")


async def build_gateway(
    tmp_path: Path,
    team_member_keys: dict[str, str],
    smtp: dict[str, Any],
    clock: Callable[[], datetime] | None = None,
) -> Gateway:
    """A gateway home with its directory, people and consent. With a `clock` (tests/clock.py),
    everything it records is dated by that clock from the first row on."""
    # gpg-agent's socket path must stay under ~100 bytes: pytest's tmp_path can be longer.
    home = Path(tempfile.mkdtemp(prefix="sm-"))
    SCRATCH_HOMES.append(home)
    await init_home(
        home,
        overrides={
            "smtp": smtp,
            "gateway": {
                "from_address": "gateway@gateway.example",
                "base_url": "https://gateway.example",
            },
            "delivery": {
                "retry_initial_seconds": 0.2,
                "retry_max_seconds": 1.0,
                "poll_seconds": 0.05,
            },
        },
    )
    svc = open_services(config.load(home), clock=clock or utcnow)
    now = svc.now_iso()

    def dir_data(db: Any) -> None:
        directory.add_org(
            db,
            SYSTEM,
            code="01234567",
            kind="practice",
            name="Praktijk Test",
            notify_address="praktijk@praktijk.example",
            now=now,
        )
        directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="Zorg Noord", now=now)
        directory.add_org(
            db, SYSTEM, code="11223344", kind="practice", name="Andere praktijk", now=now
        )
        directory.add_team(
            db, SYSTEM, org_code="87654321", name="Wijkteam Centrum", address=TEAM, now=now
        )
        directory.add_team(
            db,
            SYSTEM,
            org_code="87654321",
            name="Wijkteam zonder sleutel",
            address=OTHER_TEAM,
            now=now,
        )

    svc.store.write_sync(dir_data)
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    pinned = await keydir.import_and_pin(svc, SYSTEM, team, team_member_keys["public"])
    fprs = [fpr for fpr, _, _ in pinned]
    gp_user = svc.store.write_sync(
        lambda db: auth.add_user(
            db,
            SYSTEM,
            username="huisarts",
            name="A. Huisarts",
            role="gp",
            org_code="01234567",
            password=GP_PASSWORD,
            email="huisarts@praktijk.example",
            profile={
                "big": "19012345601",
                "phone": "020-1234567",
                "out_of_hours_phone": "088-0030600",
            },
            now=now,
        )
    )
    await enrol_gp_key(svc, gp_user, GP_PASSPHRASE)
    svc.store.write_sync(
        lambda db: auth.add_user(
            db,
            SYSTEM,
            username="nurse1",
            name="Nurse One",
            role="nurse",
            org_code="87654321",
            password=NURSE_PASSWORD,
            teams=[TEAM],
            now=now,
        )
    )
    gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "huisarts"))
    grant_consent(svc, gp, EXAMPLE["patient"]["bsn"], TEAM)
    nurse_home = home / "nurse-gnupg"
    nurse_home.mkdir(mode=0o700)
    gpg_cli(nurse_home, "--import", stdin=team_member_keys["secret"].encode())
    # The nurse's client knows the GP's public key from the regional directory.
    gp_fpr = svc.store.read_sync(lambda db: auth.user_by_name(db, "huisarts").signing_fingerprint)
    gpg_cli(nurse_home, "--import", stdin=(await svc.keyring.export_public(gp_fpr)).encode())
    # Every login needs a second factor: pair the people with authenticators the tests hold.
    totp_secrets = {
        u: svc.store.write_sync(
            lambda db, u=u: auth.enrol_totp_for_demo(db, auth.user_by_name(db, u).id)
        )
        for u in ("huisarts", "nurse1")
    }
    return Gateway(
        home, svc, nurse_home, gp, [str(f) for f in fprs], extra={"totp_secrets": totp_secrets}
    )


def grant_consent(svc: Services, gp: Actor, bsn: str, team_address: str) -> None:
    svc.store.write_sync(
        lambda db: demo.record_team_consent(db, svc, gp, bsn, org_of(gp), team_address)
    )


@pytest.fixture
async def gw(
    tmp_path: Path, team_member_keys: dict[str, str], smtp_server: Any, relay_cafile: str
) -> AsyncIterator[Gateway]:
    smtp = {
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "starttls": "required",
        "cafile": relay_cafile,
        "timeout_seconds": 5.0,
    }
    g = await build_gateway(tmp_path, team_member_keys, smtp)
    yield g
    g.svc.close()
    remove_scratch_home(g.home)


def example() -> dict[str, Any]:
    return json.loads(json.dumps(EXAMPLE))


def env_for_cli() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


async def deliver_all(
    svc: Services, timeout: float = 30.0, clock: Callable[[], datetime] | None = None
) -> None:
    """Run a real delivery worker (with the exchange's hooks) until nothing is due any more,
    on the gateway's clock (``svc.clock``, or ``clock`` when given): the outbox is stamped by
    it, so a worker on another clock would find nothing due, or stamp outcomes elsewhere."""
    hooks = Hooks(svc)
    clock = clock or svc.clock
    worker = delivery.Worker(
        svc.settings,
        svc.store,
        owner_id="test-worker",
        on_final=hooks.on_final,
        before_send=hooks.before_send,
        autocrypt=await autocrypt_headers(svc),
        sign_notice=notice_signer(svc),
        clock=lambda: clock().timestamp(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pending = await svc.store.read(
            lambda db: db.execute(
                "SELECT count(*) FROM outbox WHERE status NOT IN ('sent', 'failed', 'stopped', "
                "'cancelled') OR final_handled_at IS NULL"
            ).fetchone()[0]
        )
        if not pending:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
