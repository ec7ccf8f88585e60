"""A killed gpg-agent (issue 25): real gpg, the real agent process killed with SIGKILL.

An agent killed mid-signature is replaced and the send goes, signed; an agent that cannot
come back is a truthful, passing refusal (``seal.agent_unavailable``, 503 with Retry-After),
never "your signing key is unusable": nothing is stored, queued or sent, the Idempotency-Key
is free again, and the same post succeeds once gpg can start its agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from securemail.openpgp.keyring import AgentUnavailableError, Keyring
from securemail.openpgp.signers import existing_signer_homes
from tests.conftest import GpgTestKey, run_gpg
from tests.gateway import GP_PASSPHRASE, example
from tests.test_idempotency import CENTRUM, _outbox, _post, _requests, _token
from tests.test_openpgp import ciphertext_of, seal, wrap_gpg
from tests.web_fixtures import WebApp

#: gpg.conf line that keeps gpg from starting a new agent: the agent "cannot come back".
NO_AGENT = "agent-program /bin/false\n"


def agent_pid(home: Path) -> int | None:
    out = subprocess.run(
        ["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "getinfo pid", "/bye"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    first = out.split()
    return int(first[1]) if len(first) > 1 and first[0] == "D" else None


def kill_agents_outright(homedir: Path) -> int:
    """SIGKILL every running gpg-agent of homedir and its signer homes; how many."""
    killed = 0
    for home in [homedir, *existing_signer_homes(homedir)]:
        pid = agent_pid(home)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


@pytest.fixture
async def slow_ring(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> AsyncIterator[tuple[Keyring, Path]]:
    """One signing home whose signature takes seconds in gpg-agent (S2K calibrated at 2 s);
    the first gpg signing run in it SIGKILLs the running agent 0.3 s in, then logs its exit."""
    log, pidfile, flag = tmp_path / "runs.log", tmp_path / "agent.pid", tmp_path / "killed"
    killer = (
        f"if [ ! -e {flag} ]; then touch {flag}; (sleep 0.3; kill -9 $(cat {pidfile})) & fi; "
        f'gpg "$@"; rc=$?; echo $rc >> {log}; exit $rc'
    )
    ring = Keyring.create(
        gnupg_home,
        binary=wrap_gpg(tmp_path, "--sign", killer),
        signer_count=1,
        s2k_calibration_ms=2000,
    )
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    flag.touch()  # the first seal unlocks the key once (it is re-protected at 2 s)
    await seal(ring, gp_key, [team_keypair.fingerprint])
    log.unlink()
    flag.unlink()
    pid = agent_pid(gnupg_home)
    assert pid is not None
    pidfile.write_text(str(pid))
    yield ring, log
    await ring.close()


async def test_an_agent_killed_mid_signature_is_replaced_and_the_seal_is_signed(
    slow_ring: tuple[Keyring, Path], gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    ring, log = slow_ring
    killed = agent_pid(ring.homedir)
    # When the agent is SIGKILLed while it derives the GP's key
    sealed = await seal(ring, gp_key, [team_keypair.fingerprint])
    # Then that run failed (exit 2), the next one with a fresh agent signed
    assert log.read_text().split() == ["2", "0"]
    assert agent_pid(ring.homedir) not in (None, killed)
    assert sealed.mime.count(b"-----BEGIN PGP MESSAGE-----") == 1
    out = run_gpg(ring.homedir, "--list-packets", input=ciphertext_of(sealed.mime), check=False)
    assert b"pubkey enc packet" in out.stdout  # sealed, not plain


async def test_an_agent_that_cannot_come_back_is_agent_unavailable_not_a_bad_key(
    gnupg_home: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    ring = Keyring.create(gnupg_home, signer_count=2)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    conf = gnupg_home / "gpg.conf"
    original = conf.read_text()
    try:
        await seal(ring, gp_key, [team_keypair.fingerprint])  # the agents run
        # When the running agents are SIGKILLed and gpg cannot start a new one
        conf.write_text(original + NO_AGENT)
        assert kill_agents_outright(gnupg_home) >= 1
        with pytest.raises(AgentUnavailableError) as info:
            await seal(ring, gp_key, [team_keypair.fingerprint])
        # Then the reason is the agent, passing, not the GP's key or passphrase
        assert info.value.code == "seal.agent_unavailable"
        assert info.value.http_status == 503 and info.value.retry_after > 0
        assert "sleutel" not in info.value.message_nl()
        # And once gpg can start its agent again, the same seal succeeds
        conf.write_text(original)
        sealed = await seal(ring, gp_key, [team_keypair.fingerprint])
        assert sealed.mime.count(b"-----BEGIN PGP MESSAGE-----") == 1
    finally:
        conf.write_text(original)
        await ring.close()


async def test_a_send_while_the_agent_is_gone_is_a_passing_503_and_the_retry_sends_once(
    webapp: WebApp,
) -> None:
    token = await _token(webapp)
    body = {"request": example(), "passphrase": GP_PASSPHRASE, "to": CENTRUM}
    assert (await _post(webapp, token, "warm-up", body)).status == 201  # the agents run
    before_requests, before_outbox = _requests(webapp), _outbox(webapp)
    homedir = webapp.svc.keyring.homedir
    conf = homedir / "gpg.conf"
    original = conf.read_text()
    try:
        # When the gateway's gpg-agents are SIGKILLed and cannot be started again
        conf.write_text(original + NO_AGENT)
        assert kill_agents_outright(homedir) >= 1
        r = await _post(webapp, token, "his-agent-1", body)
        # Then the practice system gets a truthful, passing refusal
        assert r.status == 503, r.text
        answer = json.loads(r.text)
        assert answer["error"] == "seal.agent_unavailable"
        assert int(r.headers["Retry-After"]) > 0
        assert "ondertekeningssleutel" not in r.text  # not "your signing key is unusable"
        # And nothing was stored, queued or sent
        assert _requests(webapp) == before_requests
        assert _outbox(webapp) == before_outbox
    finally:
        conf.write_text(original)
    # When the agent can be started again, the same post under the same key goes, once
    ok = await _post(webapp, token, "his-agent-1", body)
    assert ok.status == 201, ok.text
    again = await _post(webapp, token, "his-agent-1", body)
    assert json.loads(again.text) == json.loads(ok.text)
    assert len(_requests(webapp)) == len(before_requests) + 1
    assert _outbox(webapp) == before_outbox + 1
