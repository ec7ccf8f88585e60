"""A whole gateway for the benchmarks: a home in a short temporary path, a GP with a
passphrase-protected signing key, a team of three member keys, consent on record, and a
recording STARTTLS relay on 127.0.0.1 (a trustme CA). Everything is thrown away by
``close()``: the gpg-agents are killed by homedir, the relay stopped, the files removed.

Shaped like tests/e2e/conftest.py, without pytest. Benchmarks never import tests/ (they run
from a checkout without the test suite's fixtures); what both need lives in securemail (the
consent: ``demo.record_team_consent``). Two small gpg command-line helpers stay here and in
tests/gateway.py: a mail client's keyring is not the gateway's business.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller

from securemail import config, demo
from securemail.access import SYSTEM, Actor, org_of, person
from securemail.accounts import apitoken, auth
from securemail.cli.directory import enrol_gp_key
from securemail.home import init_home, open_services
from securemail.keys import pinning as keydir
from securemail.region import directory
from securemail.services import Services

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "examples" / "uitvoeringsverzoek.json").read_text(encoding="utf-8"))
TEAM = "wijkteam-centrum@zorg-noord.example"
GP_PASSWORD = "correct horse battery staple"
GP_PASSPHRASE = "signing passphrase of the GP"
MEMBERS = 3


def gpg_cli(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def kill_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
        timeout=30,
    )


def team_keys(n: int = MEMBERS) -> str:
    """n nurses' public keys (ed25519 + cv25519), made in a throw-away homedir."""
    home = Path(tempfile.mkdtemp(prefix="smb-"))
    try:
        for i in range(1, n + 1):
            email = f"nurse{i}@zorg-noord.example"
            gpg_cli(
                home,
                "--passphrase",
                "",
                "--quick-gen-key",
                f"Nurse {i} <{email}>",
                "ed25519",
                "sign,cert",
                "2y",
            )
            colons = gpg_cli(home, "--with-colons", "--list-keys", email).decode()
            fpr = next(x.split(":")[9] for x in colons.splitlines() if x.startswith("fpr:"))
            gpg_cli(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
        return gpg_cli(home, "--armor", "--export").decode()
    finally:
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


# -- the relay ------------------------------------------------------------------------------


class CountingHandler:
    """Answers 250 to every DATA and notes when, per X-Securemail-Reference."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, float] = {}  # reference -> time.monotonic() of the 250
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        ref = str(msg.get("X-Securemail-Reference", ""))
        with self.lock:
            self.count += 1
            if ref:
                self.accepted.setdefault(ref, time.monotonic())
        return "250 2.0.0 Ok: queued"


@dataclass
class Relay:
    controller: Controller
    handler: CountingHandler
    port: int
    cafile: str

    def stop(self) -> None:
        self.controller.stop()


def start_relay(workdir: Path) -> Relay:
    ca = trustme.CA()
    cafile = workdir / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    handler = CountingHandler()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True
    )
    controller.start()
    return Relay(controller, handler, port, str(cafile))


# -- the gateway ----------------------------------------------------------------------------


@dataclass
class Gateway:
    home: Path
    svc: Services
    gp: Actor
    gp_fingerprint: str
    member_fingerprints: list[str]
    relay: Relay
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.svc.close()
        self.relay.stop()
        kill_agent(self.home / "gnupg")
        shutil.rmtree(self.home, ignore_errors=True)


async def build(
    team_armor: str,
    *,
    gpg: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
) -> Gateway:
    """An initialised home with directory, keys and consent, and a running relay."""
    home = Path(tempfile.mkdtemp(prefix="smb-"))  # gpg-agent's socket path limit
    relay = start_relay(home)
    overrides: dict[str, dict[str, object]] = {
        "smtp": {
            "host": "127.0.0.1",
            "port": relay.port,
            "starttls": "required",
            "cafile": relay.cafile,
            "timeout_seconds": 10.0,
        },
        "gateway": {
            "from_address": "gateway@gateway.example",
            "base_url": "https://gateway.example",
        },
        "delivery": dict(delivery or {}),  # production defaults (poll 1 s)
    }
    if gpg:
        overrides["gpg"] = dict(gpg)
    await init_home(home, overrides=overrides)
    svc = open_services(config.load(home))
    now = svc.now_iso()

    def dir_data(db: Any) -> None:
        directory.add_org(
            db,
            SYSTEM,
            code="01234567",
            kind="practice",
            name="Praktijk Bench",
            notify_address="praktijk@praktijk.example",
            now=now,
        )
        directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="Zorg Noord", now=now)
        directory.add_team(
            db, SYSTEM, org_code="87654321", name="Wijkteam Centrum", address=TEAM, now=now
        )

    svc.store.write_sync(dir_data)
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    pinned = await keydir.import_and_pin(svc, SYSTEM, team, team_armor)
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
    gp_fpr = await enrol_gp_key(svc, gp_user, GP_PASSPHRASE)
    gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "huisarts"))

    # the same consent the demo and the tests' builder record (securemail.demo)
    bsn = EXAMPLE["patient"]["bsn"]
    svc.store.write_sync(lambda db: demo.record_team_consent(db, svc, gp, bsn, org_of(gp), TEAM))
    token, _ = svc.store.write_sync(
        lambda db: apitoken.create(
            db, gp, name="bench", scopes=["request:send", "request:read"], now=svc.now()
        )
    )
    return Gateway(
        home, svc, gp, str(gp_fpr), [str(f) for f in fprs], relay, extra={"api_token": token}
    )


def example() -> dict[str, Any]:
    return json.loads(json.dumps(EXAMPLE))


def request_data(gw: Gateway) -> dict[str, Any]:
    """The example request with the principal section from the GP's profile (as send does)."""
    profile = gw.svc.store.read_sync(
        lambda db: auth.principal_profile(db, auth.user_by_id(db, person(gw.gp).user_id))
    )
    data = example()
    data["principal"] = {**(data.get("principal") or {}), **profile}
    return data


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of values, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
