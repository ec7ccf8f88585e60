"""The signing pool: N homes, each with its own gpg-agent, over one set of keys (issue 24).

Real gpg throughout: key changes made through the keyring must hold in every signing home at
once, a dead agent is replaced, a signature that keeps failing is refused (never unsigned),
and one GP's queue never stands in front of another GP's send.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from securemail.config import GpgSettings
from securemail.errors import ConfigError
from securemail.openpgp.keyring import Keyring, SealError, SignerKeyError, SigningError
from securemail.openpgp.keystore import kill_agents
from securemail.openpgp.signers import SignerPool, signer_home
from tests.conftest import GP_PASSPHRASE, GpgTestKey, kill_gpg_agent, new_gpg_home, run_gpg
from tests.test_openpgp import ciphertext_of, seal, wrap_gpg

SIGNERS = 3


@pytest.fixture
async def pool_ring(
    gnupg_home: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> AsyncIterator[Keyring]:
    """A keyring with three signing homes, each of which has signed (its agent runs)."""
    ring = Keyring.create(gnupg_home, signer_count=SIGNERS)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    await asyncio.gather(*(seal(ring, gp_key, [team_keypair.fingerprint]) for _ in range(6)))
    yield ring
    await ring.close()


@pytest.fixture
def reader_home(
    tmp_path_factory: pytest.TempPathFactory, team_keypair: GpgTestKey, gp_key: GpgTestKey
) -> Iterator[Path]:
    """A nurse's gpg: the team member's secret key, to decrypt and check what was sealed."""
    home = new_gpg_home(tmp_path_factory, "reader")
    run_gpg(home, "--import", input=team_keypair.secret.encode())
    run_gpg(home, "--import", input=gp_key.public.encode())
    yield home
    kill_gpg_agent(home)


def homes(ring: Keyring) -> list[Path]:
    return [signer_home(ring.homedir, i) for i in range(SIGNERS)]


def sign_in(home: Path, fpr: str, passphrase: str) -> subprocess.CompletedProcess[bytes]:
    """A detached signature made by gpg (and the agent) of one signing home."""
    return run_gpg(
        home,
        "--passphrase",
        passphrase,
        "--local-user",
        fpr,
        "--detach-sign",
        input=b"opdracht",
        check=False,
    )


def agent_pid(home: Path) -> int:
    out = subprocess.run(
        ["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "getinfo pid", "/bye"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(next(line[2:] for line in out.splitlines() if line.startswith("D ")))


async def test_every_signing_home_is_in_use_with_its_own_agent(pool_ring: Keyring) -> None:
    pids = {agent_pid(h) for h in homes(pool_ring)}
    assert len(pids) == SIGNERS  # three agents: three S2K derivations side by side
    for home in homes(pool_ring)[1:]:  # no key material of their own: links to the primary's
        assert (home / "private-keys-v1.d").is_symlink()
        assert (home / "pubring.kbx").is_symlink()


async def test_a_passphrase_change_holds_in_every_signing_home_at_once(
    pool_ring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # Given three running agents that have all signed with the old passphrase
    await pool_ring.change_passphrase(gp_key.fingerprint, GP_PASSPHRASE, "nieuw geheim 42")
    # Then the old passphrase signs in none of them, and the new one in each
    for home in homes(pool_ring):
        assert sign_in(home, gp_key.fingerprint, GP_PASSPHRASE).returncode != 0, home
        assert sign_in(home, gp_key.fingerprint, "nieuw geheim 42").returncode == 0, home
    # And the gateway, on every home at once, refuses the old one
    results = await asyncio.gather(
        *(seal(pool_ring, gp_key, [team_keypair.fingerprint]) for _ in range(SIGNERS * 2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, SigningError) for r in results), results


async def test_a_revocation_holds_in_every_signing_home_at_once(
    pool_ring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    await pool_ring.revoke(gp_key.fingerprint, GP_PASSPHRASE, reason="retired")
    for home in homes(pool_ring):  # the right passphrase, and still no signature
        assert sign_in(home, gp_key.fingerprint, GP_PASSPHRASE).returncode != 0, home
    results = await asyncio.gather(
        *(seal(pool_ring, gp_key, [team_keypair.fingerprint]) for _ in range(SIGNERS * 2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, SignerKeyError) for r in results), results


async def test_a_killed_signing_agent_is_replaced(
    pool_ring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey, reader_home: Path
) -> None:
    # When every signing home's gpg-agent is killed outright
    for home in homes(pool_ring):
        os.kill(agent_pid(home), signal.SIGKILL)
    # Then the next seals, on every home, are signed (by a fresh agent) and verify
    sealed = await asyncio.gather(
        *(seal(pool_ring, gp_key, [team_keypair.fingerprint]) for _ in range(SIGNERS * 2))
    )
    for s in sealed:
        out = run_gpg(reader_home, "--decrypt", input=ciphertext_of(s.mime), check=False)
        assert f"VALIDSIG {gp_key.fingerprint}".encode() in out.stderr or (b"GOODSIG" in out.stderr)
    assert len({agent_pid(h) for h in homes(pool_ring)}) == SIGNERS


async def test_a_signature_that_breaks_once_is_retried_with_a_fresh_agent(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # The first signing run dies as a crashed gpg/agent would (no signature, exit 2)
    log, flag = tmp_path / "runs.log", tmp_path / "crashed-once"
    crash = f'echo run >> {log}; if [ ! -e {flag} ]; then touch {flag}; exit 2; fi; exec gpg "$@"'
    ring = Keyring.create(gnupg_home, binary=wrap_gpg(tmp_path, "--sign", crash), signer_count=2)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    try:
        sealed = await seal(ring, gp_key, [team_keypair.fingerprint])
    finally:
        await ring.close()
    assert sealed.mime.count(b"-----BEGIN PGP MESSAGE-----") == 1
    assert log.read_text().split() == ["run", "run"]


async def test_a_signature_that_keeps_breaking_is_refused_never_sent_unsigned(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    log = tmp_path / "runs.log"
    binary = wrap_gpg(tmp_path, "--sign", f"echo run >> {log}; exit 2")
    ring = Keyring.create(gnupg_home, binary=binary, signer_count=2)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    try:
        with pytest.raises(SealError) as info:
            await seal(ring, gp_key, [team_keypair.fingerprint])
    finally:
        await ring.close()
    assert info.value.code == "seal.failed"
    assert "failed twice" in str(info.value) and "fresh gpg-agent" in str(info.value)
    assert log.read_text().split() == ["run", "run"]  # once more, then refused


async def test_checks_do_not_wait_behind_a_signature(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # A signature held in gpg (as a slow S2K would) until this test lets it go
    gate = tmp_path / "go"
    started = tmp_path / "started"
    hold = f'touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done; exec gpg "$@"'
    ring = Keyring.create(gnupg_home, binary=wrap_gpg(tmp_path, "--sign", hold), signer_count=1)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    try:
        sending = asyncio.create_task(seal(ring, gp_key, [team_keypair.fingerprint]))
        while not started.exists():
            await asyncio.sleep(0.05)
        # a fresh listing (another request's key checks) runs while the signature is held
        info = await ring.probe_secret(gp_key.fingerprint)
        assert info is not None and not sending.done()
        gate.touch()
        await sending
    finally:
        gate.touch()
        await ring.close()


async def test_the_pool_serves_gps_in_turn() -> None:
    pool = SignerPool(1)
    held = await pool.acquire("A")
    order: list[str] = []

    async def send(owner: str) -> None:
        index = await pool.acquire(owner)
        order.append(owner)
        await asyncio.sleep(0)
        pool.release(index)

    # GP A queues three more sends before GP B's one
    tasks = [asyncio.create_task(send(o)) for o in ("A", "A", "A", "B")]
    await asyncio.sleep(0)
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == ["A", "B", "A", "A"]  # B waits for one of A's, not for all of them


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    pool = SignerPool(1)
    held = await pool.acquire("A")
    waiter = asyncio.create_task(pool.acquire("B"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(held)
    assert await asyncio.wait_for(pool.acquire("C"), 5) == held


def test_signers_setting_defaults_to_the_cores_and_is_bounded(gnupg_home: Path) -> None:
    Keyring.create(gnupg_home)
    ring = Keyring.from_settings(gnupg_home, GpgSettings())
    assert ring.signer_count == len(os.sched_getaffinity(0))
    assert Keyring.from_settings(gnupg_home, GpgSettings(signers=3)).signer_count == 3
    with pytest.raises(ConfigError):
        Keyring(gnupg_home, signer_count=0)
    kill_agents(gnupg_home)
