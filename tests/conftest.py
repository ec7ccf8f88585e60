"""Shared fixtures: real gpg, real keys generated once per session, a fresh homedir per test.

No key material is ever committed: every key below is generated when the session starts,
in a scratch homedir, and handed to tests as armor; each test imports what it needs into
its own homedir (mode 0700).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.web_fixtures import WebApp

pytest_plugins = ["tests.smtp_fixtures", "tests.loop_fixtures"]

GPG_AGENT_CONF = "allow-loopback-pinentry\ndefault-cache-ttl 0\nmax-cache-ttl 0\n"
GP_PASSPHRASE = " Correct paard batterij nietje é "  # fictional; spaces and non-ASCII on purpose


@dataclass(frozen=True)
class GpgTestKey:
    """A generated key as armor: what a test imports into its own homedir."""

    fingerprint: str
    email: str
    public: str
    secret: str
    passphrase: str | None
    revocation: str  # armored revocation certificate, as gpg makes one at generation


def run_gpg(
    home: Path, *args: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """The gpg command line as a person would run it: batch, statuses on stderr, English."""
    return subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--status-fd",
            "2",
            "--pinentry-mode",
            "loopback",
            *args,
        ],
        input=input,
        capture_output=True,
        check=check,
        timeout=60,
        env={**os.environ, "LC_ALL": "C.UTF-8", "LANGUAGE": "C"},
    )


def kill_gpg_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
        timeout=30,
    )


# Gateway homes made outside tmp_path (gpg-agent's socket path is short): removed, their
# gpg-agents stopped, by their test or at the latest when this worker's session ends, even
# when the test that made one failed halfway.
SCRATCH_HOMES: list[Path] = []


def remove_scratch_home(home: Path) -> None:
    for gnupg in (home / "gnupg", home / "nurse-gnupg"):
        if gnupg.is_dir():
            kill_gpg_agent(gnupg)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _remove_scratch_homes() -> Iterator[None]:
    yield
    for home in SCRATCH_HOMES:
        remove_scratch_home(home)


def new_gpg_home(factory: pytest.TempPathFactory, name: str) -> Path:
    """A short-pathed (gpg-agent's socket path is limited) 0700 homedir, no passphrase cache."""
    home = factory.mktemp(name)
    home.chmod(0o700)
    (home / "gpg-agent.conf").write_text(GPG_AGENT_CONF)
    return home


@pytest.fixture(scope="session")
def gpg_scratch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = new_gpg_home(tmp_path_factory, "gpgscratch")
    yield home
    kill_gpg_agent(home)


@pytest.fixture(scope="session")
def gpg_keygen(gpg_scratch_home: Path) -> Callable[..., GpgTestKey]:
    """make(name, email, *, algo, usage, subkey, expire, passphrase, faked_time) -> GpgTestKey.

    ``faked_time`` ("20200101T000000!") makes keys that are already expired today.
    """

    def make(
        name: str,
        email: str,
        *,
        algo: str = "ed25519",
        usage: str = "sign",
        subkey: str | None = "cv25519",
        expire: str = "never",
        passphrase: str | None = None,
        faked_time: str | None = None,
    ) -> GpgTestKey:
        home = gpg_scratch_home
        common = (["--faked-system-time", faked_time] if faked_time else []) + [
            "--passphrase",
            passphrase or "",
        ]
        out = run_gpg(
            home, *common, "--yes", "--quick-gen-key", f"{name} <{email}>", algo, usage, expire
        )
        fpr = next(
            line.split()[3]
            for line in out.stderr.decode().splitlines()
            if line.startswith("[GNUPG:] KEY_CREATED P")
        )
        if subkey:
            run_gpg(home, *common, "--quick-add-key", fpr, subkey, "encr", expire)
        rev = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
        return GpgTestKey(
            fingerprint=fpr,
            email=email,
            public=run_gpg(home, "--armor", "--export", fpr).stdout.decode(),
            secret=run_gpg(home, *common, "--armor", "--export-secret-keys", fpr).stdout.decode(),
            passphrase=passphrase,
            # gpg puts a ':' before the armor so that the file cannot be imported by mistake
            revocation=rev[rev.index(":-----BEGIN") + 1 :],
        )

    return make


@pytest.fixture(scope="session")
def gp_key(gpg_keygen: Callable[..., GpgTestKey]) -> GpgTestKey:
    """A GP's personal signing key (ed25519, no encryption subkey), passphrase GP_PASSPHRASE."""
    return gpg_keygen(
        "Huisarts Test", "huisarts@praktijk.example", subkey=None, passphrase=GP_PASSPHRASE
    )


@pytest.fixture(scope="session")
def team_keypairs(gpg_keygen: Callable[..., GpgTestKey]) -> tuple[GpgTestKey, GpgTestKey]:
    """Two members of team Noord: ed25519 + cv25519, no passphrase (their secret is the nurse's)."""
    return (
        gpg_keygen("Wijkverpleegkundige Een", "een@noord.team.example"),
        gpg_keygen("Wijkverpleegkundige Twee", "twee@noord.team.example"),
    )


@pytest.fixture(scope="session")
def team_keypair(team_keypairs: tuple[GpgTestKey, GpgTestKey]) -> GpgTestKey:
    return team_keypairs[0]


@pytest.fixture
def gnupg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty homedir of this test, mode 0700 (Keyring.create writes its config)."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    yield home
    kill_gpg_agent(home)


@pytest.fixture
async def keyring(
    gnupg_home: Path, gp_key: GpgTestKey, team_keypairs: tuple[GpgTestKey, GpgTestKey]
) -> AsyncIterator[object]:
    """The gateway's Keyring: the GP's secret key and the team's public keys imported."""
    from securemail.openpgp.keyring import Keyring

    ring = Keyring.create(gnupg_home)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    for member in team_keypairs:
        await ring.import_keys(member.public)
    yield ring
    await ring.close()


# -- the web app over real HTTP (accounts, access, hardening tests) -----------------------------


@pytest.fixture(scope="session")
def web_template() -> Iterator[tuple[Path, dict[str, str]]]:
    """The web cast's home (tests/gateway.py), built once: (root, {username: TOTP secret})."""
    import shutil

    from tests.web_fixtures import build_template_home, short_dir

    root = short_dir("smt-")
    yield root, build_template_home(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def webapp(
    web_template: tuple[Path, dict[str, str]], aiohttp_client: Any
) -> AsyncIterator[WebApp]:
    """The real app over HTTP on 127.0.0.1, on a fresh copy of the template home."""
    from tests.web_fixtures import start_web

    w = await start_web(web_template[0], aiohttp_client)
    yield w
    await w.close()


def chain_alone(db: Any) -> Any:
    """The hash chain recomputed from its anchor without the signed checkpoints: what
    ``audit.integrity.verify`` checks first, and what the signatures add to it is shown
    against it (tests/test_audit.py)."""
    from securemail.audit import trail

    first, last, start_hash, _lowest = trail.bounds(db.conn)
    return trail.scan(db.conn, first, last, start_prev=start_hash)
