"""What arrives is read by independent OpenPGP implementations the way mail clients do.

Next to gpg: RNP (the engine inside Thunderbird) and Sequoia's ``sq``, Debian's packages
(installed by ``make test``). Each decrypts the request as the nurse and names the GP as the
signer; and From is an address on the signer's key, checked the way Thunderbird does it
(signer user ids against From), so no "uncertain signature" warning. The headers a client
shows (the real Subject, threading) are inside the encryption (RFC 9788).
"""

from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from securemail.accounts import auth
from securemail.exchange import send as exchange
from securemail.message import mime
from securemail.store import get_meta
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    Gateway,
    deliver_all,
    example,
    gpg_cli,
)
from tests.loop_fixtures import verify_order

pytestmark = pytest.mark.xdist_group("readers")


def requires(program: str) -> Any:
    return pytest.mark.skipif(
        shutil.which(program) is None,
        reason=f"{program} is not installed (Debian package {program}; `make test` installs it)",
    )


async def send_and_fetch(gw: Gateway, smtp_server: Any, data: dict[str, Any]) -> bytes:
    """Send one request and return the raw request mail the relay got (not the notices)."""
    before = set(smtp_server.handler.mailbox())
    result = await exchange.send(gw.svc, gw.gp, data, GP_PASSPHRASE)
    await deliver_all(gw.svc)
    mails = [
        raw
        for key, raw in smtp_server.handler.mailbox().items()
        if key not in before and b"multipart/encrypted" in raw
    ]
    [raw] = [m for m in mails if result.reference.encode() in m]
    for marker in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"]):
        assert marker.encode() not in raw, "patient data outside the encryption"
    return raw


def ciphertext(raw: bytes) -> bytes:
    found = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", raw, re.DOTALL)
    assert found is not None
    return found.group(0).replace(b"\r\n", b"\n") + b"\n"


def gp_fingerprint(gw: Gateway) -> str:
    return gw.svc.store.read_sync(lambda db: auth.user_by_name(db, "huisarts").signing_fingerprint)


def uid_addresses(home: Path, fingerprint: str) -> set[str]:
    """The addresses of a key's user ids as gpg lists them (--with-colons, field 10)."""
    out = gpg_cli(home, "--with-colons", "--list-keys", fingerprint).decode()
    uids = [line.split(":")[9] for line in out.splitlines() if line.startswith("uid:")]
    return {u.rpartition("<")[2].rstrip(">").lower() for u in uids if "<" in u}


def open_with_gpg(gw: Gateway, raw: bytes) -> tuple[str, EmailMessage]:
    """(the signer's primary fingerprint, the decrypted inner entity): the GP's order is
    RFC 3156 6.1, so the signature is verified over the multipart/signed part."""
    out = gw.decrypt_as_nurse(raw)
    assert out.returncode == 0, out.stderr.decode()
    status, payload = verify_order(gw.nurse_home, out.stdout)
    valid = [line.split() for line in status.splitlines() if line.startswith("[GNUPG:] VALIDSIG ")]
    assert len(valid) == 1
    # the cryptographic payload (RFC 9788): the signed part, which carries the real headers
    inner = email.message_from_bytes(payload, policy=policy.default)
    assert isinstance(inner, EmailMessage)
    return valid[0][-1], inner


def export(gw: Gateway, *args: str) -> bytes:
    return gpg_cli(
        gw.nurse_home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", *args
    )


async def test_from_is_a_user_id_of_the_signer_the_way_thunderbird_checks(
    gw: Gateway, smtp_server: Any
) -> None:
    raw = await send_and_fetch(gw, smtp_server, example())
    outer = email.message_from_bytes(raw, policy=policy.default)
    signer, _ = open_with_gpg(gw, raw)
    assert signer == gp_fingerprint(gw)
    # Thunderbird: the signature is "uncertain" unless From is among the signer's user ids
    from_address = outer["From"].addresses[0].addr_spec.lower()
    assert from_address in uid_addresses(gw.nurse_home, signer)
    # the gateway transmits it, and replies go to its reply address, not to the GP's
    assert outer["Sender"].addresses[0].addr_spec == gw.svc.settings.gateway.from_address
    assert outer["Reply-To"].addresses[0].addr_spec == gw.svc.settings.gateway.reply_to()


async def test_protected_subject_and_threading_are_inside_the_encryption(
    gw: Gateway, smtp_server: Any
) -> None:
    first_raw = await send_and_fetch(gw, smtp_server, example())
    first = email.message_from_bytes(first_raw, policy=policy.default)
    reference = str(first["X-Securemail-Reference"])
    change = example()
    change.update(kind="wijziging", supersedes=reference, urgency="spoed")
    raw = await send_and_fetch(gw, smtp_server, change)
    outer = email.message_from_bytes(raw, policy=policy.default)
    # outside: neutral, but threaded to what it replaces
    assert str(outer["Subject"]).startswith("Uitvoeringsverzoek UVZ-")
    assert b"SPOED" not in raw and b"WIJZIGING" not in raw
    assert outer["In-Reply-To"] == outer["References"] == first["Message-ID"]
    # inside, signed by the GP: the real Subject and the same headers (RFC 9788)
    signer, inner = open_with_gpg(gw, raw)
    assert signer == gp_fingerprint(gw)
    assert inner.get_param("hp") == "cipher"
    new_reference = str(outer["X-Securemail-Reference"])
    assert inner["Subject"] == (
        f"SPOED WIJZIGING Uitvoeringsverzoek {new_reference} (vervangt {reference})"
    )
    for name in ("From", "To", "Date", "Message-ID", "In-Reply-To", "References"):
        assert inner[name] == outer[name], name
    assert f"Subject: {outer['Subject']}" in inner.get_all("HP-Outer", [])


@requires("rnp")
async def test_rnp_decrypts_and_verifies_the_gp_as_signer(
    gw: Gateway, smtp_server: Any, tmp_path: Path
) -> None:
    raw = await send_and_fetch(gw, smtp_server, example())
    home = tmp_path / "rnp"
    home.mkdir(mode=0o700)
    (tmp_path / "secret.asc").write_bytes(export(gw, "--export-secret-keys"))
    (tmp_path / "gp.asc").write_bytes(export(gw, "--export", gp_fingerprint(gw)))
    for keyfile in ("secret.asc", "gp.asc"):
        subprocess.run(
            ["rnpkeys", "--homedir", str(home), "--import", str(tmp_path / keyfile)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    (tmp_path / "msg.asc").write_bytes(ciphertext(raw))
    out = subprocess.run(
        ["rnp", "--homedir", str(home), "--decrypt", str(tmp_path / "msg.asc"), "--output", "-"],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr.decode()
    # the GP's order is multipart/signed (RFC 3156 6.1): rnp verifies its detached signature
    content, signature = mime.signed_parts(out.stdout)
    (tmp_path / "order.eml").write_bytes(content)
    (tmp_path / "order.eml.sig").write_bytes(signature)
    verified = subprocess.run(
        ["rnp", "--homedir", str(home), "--verify", str(tmp_path / "order.eml.sig"),
         "--source", str(tmp_path / "order.eml")],
        capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report = verified.stderr.decode()
    assert verified.returncode == 0, report
    assert "Good signature" in report
    assert gp_fingerprint(gw)[-16:].lower() in report.lower()
    assert json.loads(mime.parse_inner(out.stdout).json)["patient"] == EXAMPLE["patient"]


@requires("sq")
async def test_sq_decrypts_and_verifies_the_gp_as_signer(
    gw: Gateway, smtp_server: Any, tmp_path: Path
) -> None:
    raw = await send_and_fetch(gw, smtp_server, example())
    (tmp_path / "secret.asc").write_bytes(export(gw, "--export-secret-keys"))
    (tmp_path / "gp.asc").write_bytes(export(gw, "--export", gp_fingerprint(gw)))
    (tmp_path / "msg.asc").write_bytes(ciphertext(raw))
    out = subprocess.run(
        [
            "sq",
            "decrypt",
            "--recipient-key",
            str(tmp_path / "secret.asc"),
            str(tmp_path / "msg.asc"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr.decode()
    # the GP's order is multipart/signed (RFC 3156 6.1): sq verifies its detached signature
    content, signature = mime.signed_parts(out.stdout)
    (tmp_path / "order.eml").write_bytes(content)
    (tmp_path / "order.sig").write_bytes(signature)
    verified = subprocess.run(
        ["sq", "verify", "--signer-cert", str(tmp_path / "gp.asc"),
         "--detached", str(tmp_path / "order.sig"), str(tmp_path / "order.eml")],
        capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report = verified.stderr.decode()
    assert verified.returncode == 0, report
    assert "Good signature" in report
    assert gp_fingerprint(gw)[-16:].upper() in report.upper()
    assert json.loads(mime.parse_inner(out.stdout).json)["patient"] == EXAMPLE["patient"]


async def test_notice_from_is_on_the_gateways_key_and_says_only_what_the_gateway_knows(
    gw: Gateway, smtp_server: Any
) -> None:
    await send_and_fetch(gw, smtp_server, example())
    [notice] = [
        email.message_from_bytes(raw, policy=policy.default)
        for raw in smtp_server.handler.mailbox().values()
        if b"X-Securemail-Notice: delivered" in raw
    ]
    gateway = gw.svc.store.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
    addresses = uid_addresses(gw.svc.settings.gnupg_home, gateway)
    assert notice["From"].addresses[0].addr_spec.lower() in addresses
    # the reply address is on the gateway's key too: a client can encrypt a reply to it
    assert gw.svc.settings.gateway.reply_to() in addresses
    body = notice.get_body().get_content()
    assert "afgegeven aan de mailserver" in body
    assert "van het team" not in body  # the relay took it; whether the team has it, we do not know
