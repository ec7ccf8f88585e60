"""openpgp.Keyring with real gpg: seal as the gateway, read as the nurse, and every refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import json
import logging
import os
import time
from collections.abc import Callable
from email.policy import default
from pathlib import Path

import pytest

from securemail.config import GpgSettings
from securemail.errors import ConfigError, InputError
from securemail.message import armor, mime, sealcheck
from securemail.openpgp.keyring import (
    DecryptionError,
    DecryptUnavailableError,
    Envelope,
    Keyring,
    RecipientKeyError,
    SealedMessage,
    SealError,
    SealInput,
    SealTimeoutError,
    SignerKeyError,
    SigningError,
    VerificationError,
)
from tests.conftest import GP_PASSPHRASE, GpgTestKey, kill_gpg_agent, new_gpg_home, run_gpg

REFERENCE = "UVZ-2026-000123"
# A fictional patient. Every test that seals asserts these never show outside the ciphertext.
PATIENT_NAME = "Jansen-de Vries"
BSN = "123456782"
BIRTH_DATE = "07-03-1948"
BIRTH_DATE_ISO = "1948-03-07"
PATIENT_DATA = (PATIENT_NAME, BSN, BIRTH_DATE, BIRTH_DATE_ISO)
ENVELOPE = Envelope(
    sender="gateway@gw.example",
    author="huisarts@praktijk.example",  # on the GP's key (gp_key), as seal() demands
    recipient="noord@team.example",
    subject=f"Uitvoeringsverzoek {REFERENCE}",
    extra_headers=(("X-Securemail-Reference", REFERENCE),),
)


def make_document(gp_key: GpgTestKey) -> SealInput:
    request = {
        "reference": REFERENCE,
        "patient": {"name": PATIENT_NAME, "bsn": BSN, "birth_date": BIRTH_DATE_ISO},
        "procedure": "insuline injecteren (s.c.), 2× daags",
    }
    return SealInput(
        reference=REFERENCE,
        text=f"Uitvoeringsverzoek {REFERENCE}\nPatiënt: mevr. A. {PATIENT_NAME}, BSN {BSN}, "
        f"geboren {BIRTH_DATE}.\nHandeling: insuline injecteren (s.c.), 2× daags.\n",
        html=f"<p>Patiënt: mevr. A. {PATIENT_NAME} (BSN {BSN}), geboren {BIRTH_DATE}</p>",
        json=json.dumps(
            request, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode(),
        signer_public_key=gp_key.public,
    )


async def seal(
    ring: Keyring, gp_key: GpgTestKey, recipients: list[str], passphrase: str = GP_PASSPHRASE
) -> SealedMessage:
    return await ring.seal(
        make_document(gp_key),
        signer=gp_key.fingerprint,
        passphrase=passphrase,
        recipients=recipients,
        envelope=ENVELOPE,
    )


def detached_signature(ring: Keyring, signer: GpgTestKey, data: bytes) -> bytes:
    """A detached signature by ``signer`` (gpg command line), for verify_detached tests."""
    out = run_gpg(
        ring.homedir,
        "--passphrase",
        GP_PASSPHRASE,
        "--local-user",
        signer.fingerprint,
        "--armor",
        "--detach-sign",
        input=data,
    )
    return out.stdout


def ciphertext_of(sealed: bytes) -> bytes:
    msg = email.message_from_bytes(sealed, policy=default)
    return msg.get_payload()[1].get_payload().encode("ascii")


@pytest.fixture
def nurse_home(
    tmp_path_factory: pytest.TempPathFactory, team_keypair: GpgTestKey, gp_key: GpgTestKey
):
    """A nurse's own gpg: the team member's secret key and the GP's public key."""
    home = new_gpg_home(tmp_path_factory, "nurse")
    run_gpg(home, "--import", input=team_keypair.secret.encode())
    run_gpg(home, "--import", input=gp_key.public.encode())
    yield home
    kill_gpg_agent(home)


def fake_gpg(directory: Path, body: str) -> str:
    """A gpg binary that is a shell script: real gpg for setup commands, ``body`` otherwise."""
    script = directory / "gpg"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--list-config*|*--list-keys*|*--import*|*--export*) exec gpg "$@";; esac\n'
        + body
    )
    script.chmod(0o755)
    return str(script)


def wrap_gpg(directory: Path, pattern: str, shell: str) -> str:
    """Real gpg, except that a run whose arguments contain ``pattern`` runs ``shell``."""
    return fake_gpg(directory, f'case "$*" in *{pattern}*) {shell};; esac\nexec gpg "$@"\n')


# -- sealing, read back as the nurse --------------------------------------------------------


async def test_seal_for_team_decrypts_as_nurse_with_good_gp_signature(
    keyring: Keyring,
    gp_key: GpgTestKey,
    team_keypair: GpgTestKey,
    nurse_home: Path,
    tmp_path: Path,
) -> None:
    # Given a sealed request for the team member
    sealed = await seal(keyring, gp_key, [team_keypair.fingerprint])
    # Then the bytes that leave the gateway hold no patient data (asserted before decrypting)
    for secret in PATIENT_DATA:
        assert secret.encode() not in sealed.mime
    # When the nurse decrypts with the gpg command line
    out = run_gpg(nurse_home, "--decrypt", input=ciphertext_of(sealed.mime))
    status = out.stderr.decode()
    # Then the GP's key made a good signature over the whole inner entity
    assert "Good signature from" in status
    assert "[GNUPG:] GOODSIG" in status
    assert f"[GNUPG:] VALIDSIG {gp_key.fingerprint}" in status
    # And it is the one signature in the message: request.json carries no second one
    assert status.count("[GNUPG:] VALIDSIG ") == 1
    assert status.count("[GNUPG:] SIG_ID ") == 1
    inner = email.message_from_bytes(out.stdout, policy=default)
    types = [part.get_content_type() for part in inner.walk()]
    assert {"text/plain", "text/html", "application/json", "application/pgp-keys"} <= set(types)
    assert "application/pgp-signature" not in types
    parts = mime.parse_inner(out.stdout)
    assert PATIENT_NAME in parts.text
    assert json.loads(parts.json)["patient"]["bsn"] == BSN
    assert parts.signer_key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    # And the GP's signature covers request.json: unwrapped from the encryption, the signed
    # message verifies on its own, and what it signs is exactly the inner entity above
    signed = run_gpg(nurse_home, "--decrypt", "--unwrap", input=ciphertext_of(sealed.mime))
    (tmp_path / "signed.gpg").write_bytes(signed.stdout)
    verified = run_gpg(nurse_home, "--verify", str(tmp_path / "signed.gpg"))
    assert f"[GNUPG:] VALIDSIG {gp_key.fingerprint}" in verified.stderr.decode()
    assert run_gpg(nurse_home, "--decrypt", input=signed.stdout).stdout == out.stdout


async def test_seal_headers_are_neutral_and_complete(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    sealed = await seal(keyring, gp_key, [team_keypair.fingerprint])
    msg = email.message_from_bytes(sealed.mime, policy=default)
    assert [name.lower() for name in msg] == [
        "from",
        "sender",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "x-securemail-reference",
        "content-type",
    ]
    assert msg["Subject"] == f"Uitvoeringsverzoek {REFERENCE}"
    assert msg["Message-ID"] == sealed.message_id
    assert sealed.message_id.endswith("@gw.example>")
    headers = "\n".join(f"{k}: {v}" for k, v in msg.items())
    for secret in PATIENT_DATA:
        assert secret not in headers
    assert sealcheck.is_pgp_mime(sealed.mime)
    assert sealed.reference == REFERENCE
    assert sealed.signer_fingerprint == gp_key.fingerprint
    assert (sealed.sender, sealed.recipient) == (ENVELOPE.sender, ENVELOPE.recipient)


def signer_uid_addresses(home: Path, fingerprint: str) -> set[str]:
    """The e-mail addresses of a key's user ids, read the way Thunderbird/RNP match a From:
    from the user id records of ``gpg --with-colons`` (field 10, the part in <>)."""
    out = run_gpg(home, "--with-colons", "--list-keys", fingerprint).stdout.decode()
    uids = [line.split(":")[9] for line in out.splitlines() if line.startswith("uid:")]
    return {uid.rpartition("<")[2].rstrip(">").lower() for uid in uids if "<" in uid}


async def test_seal_from_is_an_address_on_the_signers_key_and_gateway_is_sender(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey, nurse_home: Path
) -> None:
    sealed = await seal(keyring, gp_key, [team_keypair.fingerprint])
    msg = email.message_from_bytes(sealed.mime, policy=default)
    out = run_gpg(nurse_home, "--decrypt", input=ciphertext_of(sealed.mime))
    signer = [
        line.split()[-1]
        for line in out.stderr.decode().splitlines()
        if line.startswith("[GNUPG:] VALIDSIG ")
    ][0]
    assert msg["From"].addresses[0].addr_spec in signer_uid_addresses(nurse_home, signer)
    assert msg["Sender"].addresses[0].addr_spec == ENVELOPE.sender


async def test_seal_refuses_a_from_that_is_not_on_the_signers_key(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    for envelope in (
        dataclasses.replace(ENVELOPE, author=""),  # From would be the gateway's address
        dataclasses.replace(ENVELOPE, author="andere@praktijk.example"),
    ):
        with pytest.raises(SignerKeyError) as err:
            await keyring.seal(
                make_document(gp_key),
                signer=gp_key.fingerprint,
                passphrase=GP_PASSPHRASE,
                recipients=[team_keypair.fingerprint],
                envelope=envelope,
            )
        assert err.value.context["why"] == "from_not_on_key"


async def test_seal_protects_the_real_headers_inside_the_encryption(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey, nurse_home: Path
) -> None:
    envelope = dataclasses.replace(
        ENVELOPE,
        protected_subject=f"SPOED WIJZIGING Uitvoeringsverzoek {REFERENCE}",
        in_reply_to="<earlier@gw.example>",
    )
    sealed = await keyring.seal(
        make_document(gp_key),
        signer=gp_key.fingerprint,
        passphrase=GP_PASSPHRASE,
        recipients=[team_keypair.fingerprint],
        envelope=envelope,
    )
    assert b"SPOED" not in sealed.mime and b"WIJZIGING" not in sealed.mime
    outer = email.message_from_bytes(sealed.mime, policy=default)
    assert outer["References"] == outer["In-Reply-To"] == "<earlier@gw.example>"
    out = run_gpg(nurse_home, "--decrypt", input=ciphertext_of(sealed.mime))
    assert f"[GNUPG:] VALIDSIG {gp_key.fingerprint}" in out.stderr.decode()
    inner = email.message_from_bytes(out.stdout, policy=default)
    assert inner.get_param("hp") == "cipher"
    assert inner["Subject"] == f"SPOED WIJZIGING Uitvoeringsverzoek {REFERENCE}"
    for name in ("From", "Sender", "To", "Date", "Message-ID", "In-Reply-To", "References"):
        assert inner[name] == outer[name], name
    assert f"Subject: Uitvoeringsverzoek {REFERENCE}" in inner.get_all("HP-Outer")
    assert "X-Securemail-Reference" not in inner
    # the parts a nurse's client and the gateway read are unchanged by the headers
    assert json.loads(mime.parse_inner(out.stdout).json)["patient"]["bsn"] == BSN


async def test_seal_encrypts_to_exactly_the_pinned_subkeys(
    keyring: Keyring, gp_key: GpgTestKey, team_keypairs: tuple[GpgTestKey, GpgTestKey]
) -> None:
    fprs = [k.fingerprint for k in team_keypairs]
    sealed = await seal(keyring, gp_key, fprs)
    expected = sorted([(await keyring.key_info(f)).encryption_subkeys[0][-16:] for f in fprs])
    ciphertext = ciphertext_of(sealed.mime)
    assert sorted(armor.encrypted_to(ciphertext)) == expected
    assert sorted(await keyring.recipients_of(ciphertext)) == expected  # gpg agrees
    assert sealed.recipient_fingerprints == tuple(fprs)


async def test_seal_logs_no_patient_data(
    keyring: Keyring,
    gp_key: GpgTestKey,
    team_keypair: GpgTestKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given every logger at DEBUG (python-gnupg logs the first bytes of verified data there)
    caplog.set_level(logging.DEBUG)
    document = make_document(gp_key)
    # When the gateway seals, decrypts (checking the GP's signature) and verifies
    sealed = await seal(keyring, gp_key, [team_keypair.fingerprint])
    await keyring.import_keys(team_keypair.secret, allow_secret=True)  # decrypt as the team
    decrypted = await keyring.decrypt(ciphertext_of(sealed.mime), None)
    assert decrypted.signer == gp_key.fingerprint
    assert mime.parse_inner(decrypted.data).json == document.json
    signature = detached_signature(keyring, gp_key, document.json)
    assert await keyring.verify_detached(document.json, signature) == gp_key.fingerprint
    with pytest.raises(VerificationError):  # python-gnupg logs data[:16] at DEBUG here
        await keyring.verify_detached(BSN.encode() + b" tampered", signature)
    # Then nothing of the patient reached a log record
    for secret in PATIENT_DATA:
        assert secret not in caplog.text


def test_sealed_message_direct_construction_raises_type_error(gp_key: GpgTestKey) -> None:
    with pytest.raises(TypeError):
        SealedMessage(b"raw", "<a@b>", "a@b", "c@d", REFERENCE, (), gp_key.fingerprint)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SealedMessage(
            mime=b"raw",
            message_id="<a@b>",
            sender="a@b",
            recipient="c@d",
            reference=REFERENCE,
            recipient_fingerprints=(),  # type: ignore[arg-type]
            signer_fingerprint=gp_key.fingerprint,
            _token=object(),
        )


# -- refusals: recipient keys ----------------------------------------------------------------


@pytest.fixture(scope="session")
def expired_team_key(gpg_keygen: Callable[..., GpgTestKey]) -> GpgTestKey:
    # Made "in 2020" with a 1-year expiry, so it is expired today without any waiting.
    return gpg_keygen("Oud Team", "oud@team.example", expire="1y", faked_time="20200101T000000!")


@pytest.fixture(scope="session")
def revocable_team_key(gpg_keygen: Callable[..., GpgTestKey]) -> GpgTestKey:
    return gpg_keygen("Vertrokken Verpleegkundige", "weg@team.example")


@pytest.fixture(scope="session")
def signing_only_key(gpg_keygen: Callable[..., GpgTestKey]) -> GpgTestKey:
    return gpg_keygen("Alleen Tekenen", "teken@team.example", subkey=None)


@pytest.fixture(scope="session")
def rsa2048_key(gpg_keygen: Callable[..., GpgTestKey]) -> GpgTestKey:
    return gpg_keygen("Oude Sleutel", "rsa@team.example", algo="rsa2048", subkey="rsa2048")


async def _refused(keyring: Keyring, gp_key: GpgTestKey, fpr: str, why: str) -> None:
    with pytest.raises(RecipientKeyError) as info:
        await keyring.check_recipient(fpr, None)
    assert (info.value.code, info.value.context["why"]) == ("seal.key_unusable", why)
    assert info.value.context["fingerprint"] == fpr
    # And seal() refuses the same key, making nothing
    with pytest.raises(RecipientKeyError) as sealing:
        await seal(keyring, gp_key, [fpr])
    assert sealing.value.context["why"] == why
    for secret in PATIENT_DATA:
        assert secret not in sealing.value.diagnostics()


async def test_seal_refuses_expired_team_key(
    keyring: Keyring, gp_key: GpgTestKey, expired_team_key: GpgTestKey
) -> None:
    await keyring.import_keys(expired_team_key.public)
    await _refused(keyring, gp_key, expired_team_key.fingerprint, "expired")


async def test_seal_refuses_revoked_team_key(
    keyring: Keyring, gp_key: GpgTestKey, revocable_team_key: GpgTestKey
) -> None:
    await keyring.import_keys(revocable_team_key.public)
    assert (await keyring.check_recipient(revocable_team_key.fingerprint, None)).can_encrypt
    # When the revocation certificate arrives
    assert await keyring.import_keys(revocable_team_key.revocation) == [
        revocable_team_key.fingerprint
    ]
    # Then the key is refused at once (the import dropped the key cache)
    assert (await keyring.key_info(revocable_team_key.fingerprint)).revoked
    await _refused(keyring, gp_key, revocable_team_key.fingerprint, "revoked")


async def test_seal_refuses_signing_only_key(
    keyring: Keyring, gp_key: GpgTestKey, signing_only_key: GpgTestKey
) -> None:
    await keyring.import_keys(signing_only_key.public)
    await _refused(keyring, gp_key, signing_only_key.fingerprint, "no_encryption_subkey")


async def test_seal_refuses_rsa2048_key_as_too_weak(
    keyring: Keyring, gp_key: GpgTestKey, rsa2048_key: GpgTestKey
) -> None:
    await keyring.import_keys(rsa2048_key.public)
    info = await keyring.key_info(rsa2048_key.fingerprint)
    assert (info.algorithm, info.bits) == ("rsa", 2048)
    await _refused(keyring, gp_key, rsa2048_key.fingerprint, "too_weak")


async def test_seal_refuses_missing_key(keyring: Keyring, gp_key: GpgTestKey) -> None:
    await _refused(keyring, gp_key, "0123456789ABCDEF0123456789ABCDEF01234567", "missing")


async def test_seal_refuses_when_any_recipient_is_unusable(
    keyring: Keyring,
    gp_key: GpgTestKey,
    team_keypair: GpgTestKey,
    signing_only_key: GpgTestKey,
) -> None:
    await keyring.import_keys(signing_only_key.public)
    with pytest.raises(RecipientKeyError) as info:
        await seal(keyring, gp_key, [team_keypair.fingerprint, signing_only_key.fingerprint])
    assert info.value.context["fingerprint"] == signing_only_key.fingerprint


@pytest.mark.parametrize("recipients", [[], ["een@noord.team.example"], ["9416866AB668459B"]])
async def test_seal_refuses_recipients_that_are_not_fingerprints(
    keyring: Keyring, gp_key: GpgTestKey, recipients: list[str]
) -> None:
    with pytest.raises(RecipientKeyError) as info:
        await seal(keyring, gp_key, recipients)
    assert info.value.context["why"] == "missing"
    for recipient in recipients:  # never looked up as a gpg search pattern
        with pytest.raises(RecipientKeyError):
            await keyring.check_recipient(recipient, None)


async def test_key_info_accepts_spaced_lower_case_fingerprint(
    keyring: Keyring, team_keypair: GpgTestKey
) -> None:
    fpr = team_keypair.fingerprint
    spaced = " ".join(fpr[i : i + 4] for i in range(0, 40, 4)).lower()
    assert (await keyring.key_info(spaced)).fingerprint == fpr
    with pytest.raises(InputError):
        await keyring.key_info(team_keypair.email)


async def test_check_recipient_address_mismatch_refused(
    keyring: Keyring, team_keypair: GpgTestKey
) -> None:
    with pytest.raises(RecipientKeyError) as info:
        await keyring.check_recipient(team_keypair.fingerprint, "iemand@anders.example")
    assert info.value.context["why"] == "address_mismatch"
    assert "hoort niet bij dit adres" in info.value.message_nl()
    # The key's own address (any case) and no address at all are accepted
    ok = await keyring.check_recipient(team_keypair.fingerprint, team_keypair.email.upper())
    assert ok.uids == (team_keypair.email,)
    assert (await keyring.check_recipient(team_keypair.fingerprint, None)).can_encrypt


async def test_seal_concurrent_calls_all_succeed(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # python-gnupg#120: concurrent sign+encrypt has failed intermittently; we cap and check
    sealed = await asyncio.gather(
        *(seal(keyring, gp_key, [team_keypair.fingerprint]) for _ in range(3))
    )
    assert len({s.message_id for s in sealed}) == 3
    assert all(sealcheck.is_pgp_mime(s.mime) for s in sealed)


async def test_the_first_unlock_of_a_secret_key_runs_alone_then_seals_all_succeed(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # gpg-agent rewrites an imported secret key's file, in place, on its first unlock; a
    # concurrent unlock reading it half-written failed as "bad passphrase" (seen in CI). Real
    # gpg, wrapped to log when each signing run starts and ends; room for four at once.
    log = tmp_path / "sign.log"
    binary = wrap_gpg(
        tmp_path, "--sign", f'echo start >> {log}; gpg "$@"; rc=$?; echo end >> {log}; exit $rc'
    )
    ring = Keyring.create(gnupg_home, binary=binary, max_concurrency=4)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    sealed = await asyncio.gather(
        *(seal(ring, gp_key, [team_keypair.fingerprint]) for _ in range(4))
    )
    assert len({s.message_id for s in sealed}) == 4
    runs = log.read_text().split()
    assert runs[:2] == ["start", "end"] and runs.count("start") == 4


# -- refusals: signer and passphrase ---------------------------------------------------------


async def test_seal_wrong_passphrase_right_after_right_one_fails(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # Given a seal with the right passphrase just succeeded
    await seal(keyring, gp_key, [team_keypair.fingerprint])
    # When the next seal comes with a wrong one, it fails: gpg-agent cached nothing
    with pytest.raises(SigningError) as info:
        await seal(keyring, gp_key, [team_keypair.fingerprint], passphrase="fout")
    assert info.value.code == "seal.bad_passphrase"
    assert info.value.message_nl() == "De ondertekeningswachtzin is onjuist."


@pytest.mark.parametrize("passphrase", ["", "twee\nregels"])
async def test_seal_unusable_passphrase_refused_before_gpg(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey, passphrase: str
) -> None:
    with pytest.raises(SigningError):
        await seal(keyring, gp_key, [team_keypair.fingerprint], passphrase=passphrase)


async def test_seal_signer_without_secret_key_refused(
    keyring: Keyring, gp_key: GpgTestKey, team_keypairs: tuple[GpgTestKey, GpgTestKey]
) -> None:
    # The second team key is public only here: it cannot sign for the gateway
    from securemail.openpgp.keyring import SignerKeyError

    with pytest.raises(SignerKeyError) as info:
        await keyring.seal(
            make_document(gp_key),
            signer=team_keypairs[1].fingerprint,
            passphrase="x",
            recipients=[team_keypairs[0].fingerprint],
            envelope=dataclasses.replace(ENVELOPE, author=team_keypairs[1].email),
        )
    assert info.value.context["why"] == "missing"


# -- faults: gpg crashes or hangs ------------------------------------------------------------


@pytest.mark.parametrize("body", ["exit 2\n"], ids=["after-setup"])
async def test_seal_gpg_crash_raises_seal_failed_without_plaintext(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey, body: str
) -> None:
    ring = Keyring.create(gnupg_home, binary=fake_gpg(tmp_path, body))
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    with pytest.raises(SealError) as info:
        await seal(ring, gp_key, [team_keypair.fingerprint])
    assert type(info.value) is SealError
    assert info.value.code == "seal.failed"
    assert "exit 2" in info.value.reason
    for secret in PATIENT_DATA:
        assert secret not in info.value.diagnostics()


async def test_keyring_gpg_that_always_crashes_raises_seal_failed(
    gnupg_home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "gpg"
    script.write_text("#!/bin/sh\nexit 2\n")
    script.chmod(0o755)
    ring = Keyring.create(gnupg_home, binary=str(script))
    with pytest.raises(SealError) as info:
        await ring.key_info("0123456789ABCDEF0123456789ABCDEF01234567")
    assert info.value.code == "seal.failed"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("exit 2\n", DecryptUnavailableError),  # gpg died before a word: ours, temporary
        ("kill -SEGV $$\n", DecryptUnavailableError),  # gpg crashed: no exit code at all
        (None, DecryptionError),  # real gpg: not OpenPGP (NODATA), the sender's fault
    ],
    ids=["exit-2-no-status", "segv", "not-openpgp"],
)
async def test_decrypt_tells_a_failing_gpg_from_a_message_it_cannot_open(
    gnupg_home: Path, tmp_path: Path, body: str | None, error: type[SealError]
) -> None:
    binary = fake_gpg(tmp_path, body) if body else "gpg"
    ring = Keyring.create(gnupg_home, binary=binary)
    junk = b"-----BEGIN PGP MESSAGE-----\n\nAAAA\n-----END PGP MESSAGE-----\n"
    with pytest.raises(SealError) as info:
        await ring.decrypt(junk, None)
    assert type(info.value) is error
    assert (ring.decrypt_fault is not None) is (error is DecryptUnavailableError)


async def test_decrypt_that_hangs_is_a_timeout_and_a_fault_the_health_check_shows(
    gnupg_home: Path, tmp_path: Path
) -> None:
    ring = Keyring.create(gnupg_home, binary=fake_gpg(tmp_path, "exec sleep 60\n"), timeout=1.0)
    junk = b"-----BEGIN PGP MESSAGE-----\n\nAAAA\n-----END PGP MESSAGE-----\n"
    with pytest.raises(SealTimeoutError):  # not DecryptionError: the reply listener says 451
        await ring.decrypt(junk, None)
    assert ring.decrypt_fault is not None and "killed after" in ring.decrypt_fault


async def test_keyring_missing_gpg_binary_raises_seal_failed(gnupg_home: Path) -> None:
    ring = Keyring.create(gnupg_home, binary="/nonexistent/gpg")
    with pytest.raises(SealError) as info:
        await ring.export_public("0123456789ABCDEF0123456789ABCDEF01234567")
    assert info.value.code == "seal.failed"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_seal_gpg_hang_times_out_and_leaves_no_process(
    gnupg_home: Path, tmp_path: Path, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # Given a gpg that hangs in signing (a child process holds its pipes open, too)
    pidfile = tmp_path / "child.pid"
    hang = f'sleep 60 &\necho $! > "{pidfile}"\nwait\n'
    ring = Keyring.create(gnupg_home, binary=fake_gpg(tmp_path, hang), timeout=1.0)
    await ring.import_keys(gp_key.secret, allow_secret=True)
    await ring.import_keys(team_keypair.public)
    # When sealing
    started = time.monotonic()
    with pytest.raises(SealTimeoutError) as info:
        await seal(ring, gp_key, [team_keypair.fingerprint])
    # Then it is refused within the timeout (plus reaping), and nothing of gpg lingers
    assert time.monotonic() - started < 5
    assert info.value.code == "seal.timeout"
    pid = int(pidfile.read_text())
    for _ in range(40):  # the kill is sent at the timeout; on a loaded machine, allow its delivery
        if not _running(pid):
            break
        time.sleep(0.05)
    assert not _running(pid)


# -- keyring housekeeping --------------------------------------------------------------------


def test_keyring_refuses_homedir_not_0700(gnupg_home: Path) -> None:
    Keyring.create(gnupg_home)
    gnupg_home.chmod(0o750)
    with pytest.raises(ConfigError):
        Keyring(gnupg_home)


def test_keyring_refuses_homedir_that_caches_passphrases(gnupg_home: Path) -> None:
    Keyring.create(gnupg_home)
    (gnupg_home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
    with pytest.raises(ConfigError):
        Keyring(gnupg_home)


def test_keyring_from_settings_takes_gpg_section(gnupg_home: Path) -> None:
    Keyring.create(gnupg_home)
    ring = Keyring.from_settings(gnupg_home, GpgSettings(timeout_seconds=7.5, max_concurrency=3))
    assert (ring.binary, ring.timeout) == ("gpg", 7.5)


def test_keyring_s2k_calibration_goes_to_agent_conf_and_never_caching(gnupg_home: Path) -> None:
    # Given a homedir made with gpg-agent's default S2K calibration
    Keyring.create(gnupg_home)
    conf = gnupg_home / "gpg-agent.conf"
    assert "s2k-calibration 100" in conf.read_text().splitlines()
    # When the [gpg] section asks for a cheaper key derivation
    Keyring.from_settings(gnupg_home, GpgSettings(s2k_calibration_ms=20))
    # Then the conf says so, and the passphrase is still never cached
    lines = conf.read_text().splitlines()
    assert "s2k-calibration 20" in lines and "s2k-calibration 100" not in lines
    assert {"default-cache-ttl 0", "max-cache-ttl 0"} <= set(lines)


def test_settings_refuse_s2k_calibration_below_floor(tmp_path: Path) -> None:
    from securemail import config

    with pytest.raises(ConfigError, match="s2k_calibration_ms"):
        config.load(tmp_path, env={"SECUREMAIL_GPG_S2K_CALIBRATION_MS": "5"})


@pytest.mark.skipif(Path(f"/run/user/{os.getuid()}").is_dir(), reason="sockets in /run/user")
def test_keyring_refuses_homedir_too_long_for_agent_sockets(tmp_path_factory) -> None:
    home = tmp_path_factory.mktemp("long")
    home = home / ("x" * (88 - len(str(home)) - 1))
    home.mkdir(mode=0o700)
    (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
    with pytest.raises(ConfigError, match="87 bytes"):
        Keyring(home)


def test_keyring_create_writes_mode_0700_and_agent_conf(tmp_path_factory) -> None:
    home = tmp_path_factory.mktemp("new") / "gnupg"
    Keyring.create(home)
    assert home.stat().st_mode & 0o777 == 0o700
    conf = (home / "gpg-agent.conf").read_text().split("\n")
    assert {"allow-loopback-pinentry", "default-cache-ttl 0", "max-cache-ttl 0"} <= set(conf)


@pytest.mark.parametrize(
    ("kind", "can_encrypt", "can_sign"),
    [("signing", False, True), ("encryption", True, False), ("both", True, True)],
)
async def test_generate_key_kind_gives_ed25519_with_expected_capabilities(
    gnupg_home: Path, kind: str, can_encrypt: bool, can_sign: bool
) -> None:
    ring = Keyring.create(gnupg_home)
    fpr = await ring.generate_key("Gateway Test", "gw@gw.example", None, kind=kind)
    info = await ring.key_info(fpr)
    assert (info.algorithm, info.can_encrypt, info.can_sign) == ("ed25519", can_encrypt, can_sign)
    assert info.uids == ("gw@gw.example",)
    assert len(info.encryption_subkeys) == (1 if can_encrypt else 0)
    await ring.close()


@pytest.mark.parametrize(("error", "made"), [("67108970", True), ("67108875", False)])
async def test_generate_key_tries_again_only_after_the_agents_corrupted_protection(
    gnupg_home: Path, tmp_path: Path, error: str, made: bool
) -> None:
    # The first --quick-gen-key fails as gpg-agent 2.2 now and then does ("Corrupted
    # protection", 4<<24|106); a second try is real gpg. A bad passphrase (11) is not retried.
    flag = tmp_path / "failed-once"
    binary = wrap_gpg(
        tmp_path,
        "--quick-gen-key",
        f'[ -e {flag} ] || {{ touch {flag}; echo "[GNUPG:] ERROR key_generate {error}" >&2; '
        'echo "[GNUPG:] KEY_NOT_CREATED" >&2; exit 2; }',
    )
    ring = Keyring.create(gnupg_home, binary=binary)
    try:
        if made:
            fpr = await ring.generate_key("Huisarts Test", "gp@gp.example", GP_PASSPHRASE)
            assert (await ring.key_info(fpr)).can_sign
        else:
            with pytest.raises(SealError, match="bad passphrase"):
                await ring.generate_key("Huisarts Test", "gp@gp.example", GP_PASSPHRASE)
    finally:
        await ring.close()


async def test_generate_key_refuses_uid_injection(gnupg_home: Path) -> None:
    ring = Keyring.create(gnupg_home)
    with pytest.raises(InputError):
        await ring.generate_key("Naam\n%no-protection", "a@b.example", "x")
    with pytest.raises(InputError):
        await ring.generate_key("Naam", "geen adres", "x")
    with pytest.raises(InputError):
        await ring.generate_key("Naam <x@y.example>", "a@b.example", "x")


async def test_change_passphrase_old_fails_new_works(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    with pytest.raises(SigningError):
        await keyring.change_passphrase(gp_key.fingerprint, "fout", "nieuw wachtwoord")
    await keyring.change_passphrase(gp_key.fingerprint, GP_PASSPHRASE, "nieuw wachtwoord ü")
    with pytest.raises(SigningError):
        await seal(keyring, gp_key, [team_keypair.fingerprint])
    sealed = await seal(keyring, gp_key, [team_keypair.fingerprint], "nieuw wachtwoord ü")
    assert sealcheck.is_pgp_mime(sealed.mime)


async def test_import_keys_refuses_secret_key_unless_allowed(
    gnupg_home: Path, team_keypair: GpgTestKey
) -> None:
    ring = Keyring.create(gnupg_home)
    with pytest.raises(InputError):
        await ring.import_keys(team_keypair.secret)
    with pytest.raises(InputError):
        await ring.import_keys("geen sleutel")
    assert await ring.import_keys(team_keypair.public) == [team_keypair.fingerprint]


async def test_export_and_delete_round_trip(keyring: Keyring, team_keypair: GpgTestKey) -> None:
    public = await keyring.export_public(team_keypair.fingerprint)
    assert public.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    await keyring.delete(team_keypair.fingerprint)
    with pytest.raises(RecipientKeyError):
        await keyring.check_recipient(team_keypair.fingerprint, None)
    assert await keyring.import_keys(public) == [team_keypair.fingerprint]


async def test_export_secret_keeps_passphrase_protection(
    keyring: Keyring, gp_key: GpgTestKey, tmp_path_factory: pytest.TempPathFactory
) -> None:
    exported = await keyring.export_secret(gp_key.fingerprint, GP_PASSPHRASE)
    assert exported.encode().startswith(armor.SECRET_KEY_ARMOR)
    with pytest.raises(SigningError):
        await keyring.export_secret(gp_key.fingerprint, "fout")


# -- verify and decrypt ----------------------------------------------------------------------


async def test_verify_detached_tampered_data_raises(keyring: Keyring, gp_key: GpgTestKey) -> None:
    data = make_document(gp_key).json
    signature = detached_signature(keyring, gp_key, data)
    assert await keyring.verify_detached(data, signature) == gp_key.fingerprint
    with pytest.raises(VerificationError):
        await keyring.verify_detached(data + b" ", signature)


async def test_decrypt_returns_signer_and_refuses_without_key(
    keyring: Keyring, gp_key: GpgTestKey, team_keypairs: tuple[GpgTestKey, GpgTestKey]
) -> None:
    sealed = await seal(keyring, gp_key, [team_keypairs[0].fingerprint])
    # The gateway holds no team secret key: it cannot read what it sealed
    with pytest.raises(DecryptionError):
        await keyring.decrypt(ciphertext_of(sealed.mime), None)
    await keyring.import_keys(team_keypairs[0].secret, allow_secret=True)
    decrypted = await keyring.decrypt(ciphertext_of(sealed.mime), None)
    assert (decrypted.signer, decrypted.valid_signature) == (gp_key.fingerprint, True)
    assert mime.parse_inner(decrypted.data).json == make_document(gp_key).json


def test_gpg_environment_has_no_network_lookups(gnupg_home: Path) -> None:
    Keyring.create(gnupg_home)
    assert "trust-model direct" in (gnupg_home / "gpg.conf").read_text()
    assert os.stat(gnupg_home / "gpg.conf").st_mode & 0o077 == 0


async def test_key_cache_sees_revocation_imported_by_another_process(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # Given a listing and an export that this keyring keeps (no gpg call on the next send)
    await keyring.check_recipient(team_keypair.fingerprint, None)
    exported = await keyring.export_public(team_keypair.fingerprint)
    # When another process (a CLI call next to serve) imports the key's revocation
    other = Keyring(keyring.homedir)
    await other.import_keys(team_keypair.revocation)
    # Then this keyring refuses the key at once, not when a cache lapses, and exports anew
    with pytest.raises(RecipientKeyError) as refused:
        await keyring.check_recipient(team_keypair.fingerprint, None)
    assert refused.value.context["why"] == "revoked"
    assert await keyring.export_public(team_keypair.fingerprint) != exported
    with pytest.raises(RecipientKeyError):
        await seal(keyring, gp_key, [team_keypair.fingerprint])


async def test_sealing_leaves_the_keyring_file_alone(
    keyring: Keyring, gp_key: GpgTestKey, team_keypair: GpgTestKey
) -> None:
    # The key cache is kept while pubring.kbx is unchanged: sealing must not touch it.
    ring = keyring.homedir / "pubring.kbx"
    await seal(keyring, gp_key, [team_keypair.fingerprint])
    before = ring.stat()
    await seal(keyring, gp_key, [team_keypair.fingerprint])
    after = ring.stat()
    assert (before.st_mtime_ns, before.st_size, before.st_ino) == (
        after.st_mtime_ns,
        after.st_size,
        after.st_ino,
    )
