"""Every kind of mail the gateway sends, opened by independent readers: RNP (Thunderbird's
engine) and Sequoia ``sq``, next to gpg (tests/e2e/test_readers.py has the request).

- a change (wijziging) and a withdrawal (intrekking): decrypted as the team, the GP's
  signature verified over the signed order;
- a passed-on request: decrypted as the second team, the gateway's signature on the message
  and the GP's own signature on the order nested in it;
- a notice: signed by the gateway (multipart/signed, RFC 3156 6.1) with its From, Subject
  and Message-ID repeated inside (RFC 9788 ``hp="clear"``); a notice whose words were changed
  on the way no longer verifies.
"""

from __future__ import annotations

import email
import shutil
import subprocess
from email import policy
from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.delivery import outbox
from securemail.delivery.worker import Worker
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.home import gateway_fingerprint, notice_signer
from securemail.message import mime, notify
from securemail.store import set_meta
from tests.e2e.test_readers import ciphertext, gp_fingerprint, uid_addresses
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, Gateway, deliver_all, example, gpg_cli
from tests.loop_fixtures import TEAM_B, Loop

pytestmark = [
    pytest.mark.xdist_group("readers"),
    pytest.mark.skipif(
        shutil.which("rnp") is None or shutil.which("sq") is None,
        reason="rnp and sq are not installed (Debian packages rnp, sq; `make test` installs them)",
    ),
]
PATIENT = (EXAMPLE["patient"]["bsn"].encode(), EXAMPLE["patient"]["name"].encode())


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(args), capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )


class Readers:
    """One reader's keys in files: the team's secret key and the certificates it trusts."""

    def __init__(self, tmp: Path, secret: bytes, certs: dict[str, bytes]) -> None:
        self.tmp = tmp
        self.rnp_home = tmp / "rnp"
        self.rnp_home.mkdir(mode=0o700)
        (tmp / "secret.asc").write_bytes(secret)
        for name, cert in certs.items():
            (tmp / f"{name}.asc").write_bytes(cert)
        for name in ("secret", *certs):
            done = run(
                "rnpkeys", "--homedir", str(self.rnp_home), "--import", str(tmp / f"{name}.asc")
            )
            assert done.returncode == 0, done.stderr.decode()

    def decrypt(self, raw: bytes, signer: str = "") -> dict[str, tuple[bytes, str]]:
        """reader -> (plaintext, its report) for rnp and sq; ``signer``: the certificate
        (by name) sq checks an inline signature against."""
        (self.tmp / "msg.asc").write_bytes(ciphertext(raw))
        msg = str(self.tmp / "msg.asc")
        by_rnp = run("rnp", "--homedir", str(self.rnp_home), "--decrypt", msg, "--output", "-")
        sq = ["sq", "decrypt", "--recipient-key", str(self.tmp / "secret.asc")]
        if signer:
            sq += ["--signer-cert", str(self.tmp / f"{signer}.asc")]
        by_sq = run(*sq, msg)
        out = {}
        for name, done in (("rnp", by_rnp), ("sq", by_sq)):
            assert done.returncode == 0, f"{name}: {done.stderr.decode()}"
            out[name] = (done.stdout, done.stderr.decode())
        return out

    def verify(self, signed: bytes, signer: str) -> dict[str, str]:
        """reader -> its report on the first multipart/signed entity in ``signed``, checked
        against certificate ``signer``; each must say the signature is good."""
        content, signature = mime.signed_parts(signed)
        (self.tmp / "part.eml").write_bytes(content)
        (self.tmp / "part.eml.sig").write_bytes(signature)
        part, sig = str(self.tmp / "part.eml"), str(self.tmp / "part.eml.sig")
        by_rnp = run("rnp", "--homedir", str(self.rnp_home), "--verify", sig, "--source", part)
        cert = str(self.tmp / f"{signer}.asc")
        by_sq = run("sq", "verify", "--signer-cert", cert, "--detached", sig, part)
        out = {}
        for name, done in (("rnp", by_rnp), ("sq", by_sq)):
            report = done.stderr.decode()
            assert done.returncode == 0, f"{name}: {report}"
            assert "Good signature" in report, f"{name}: {report}"
            out[name] = report
        return out


def export(home: Path, *args: str) -> bytes:
    return gpg_cli(home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", *args)


def names(report: str, fingerprint: str) -> bool:
    return fingerprint[-16:].lower() in report.lower()


async def gateway_cert(gw: Gateway) -> bytes:
    return (await gw.svc.keyring.export_public(gateway_fingerprint(gw.svc.store))).encode()


async def team_a_readers(gw: Gateway, tmp: Path) -> Readers:
    return Readers(
        tmp,
        export(gw.nurse_home, "--export-secret-keys"),
        {
            "gp": export(gw.nurse_home, "--export", gp_fingerprint(gw)),
            "gateway": await gateway_cert(gw),
        },
    )


def encrypted_to(smtp_server: Any, team: str, reference: str) -> bytes:
    [raw] = [
        r.content
        for r in smtp_server.handler.snapshot()
        if team in r.rcpt_tos and b"multipart/encrypted" in r.content
        and reference.encode() in r.content
    ]  # fmt: skip
    assert not any(marker in raw for marker in PATIENT), "patient data outside the encryption"
    return bytes(raw)


@pytest.mark.parametrize("kind", ["wijziging", "intrekking"])
async def test_rnp_and_sq_verify_the_gp_on_a_change_and_a_withdrawal(
    gw: Gateway, smtp_server: Any, tmp_path: Path, kind: str
) -> None:
    first = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    data = example()
    data.update(kind=kind, supersedes=first.reference)
    second = await exchange.send(gw.svc, gw.gp, data, GP_PASSPHRASE)
    await deliver_all(gw.svc)
    raw = encrypted_to(smtp_server, TEAM, second.reference)
    assert kind.upper().encode() not in raw  # only inside the encryption
    readers = await team_a_readers(gw, tmp_path)
    for name, (plain, _) in readers.decrypt(raw).items():
        report = readers.verify(plain, "gp")
        assert all(names(r, gp_fingerprint(gw)) for r in report.values()), name
        inner = mime.parse_inner(plain)
        assert kind.encode() in inner.json and first.reference.encode() in inner.json, name
        # the threading and the real subject are inside what the GP signed (RFC 9788)
        content, _ = mime.signed_parts(plain)
        protected = email.message_from_bytes(content, policy=policy.default)
        assert first.reference in str(protected["Subject"]), name
        assert kind.upper() in str(protected["Subject"]), name  # the inbox tells them apart
        assert protected["In-Reply-To"], name


async def test_rnp_and_sq_verify_the_gateway_and_the_gp_on_a_passed_on_request(
    loop: Loop, smtp_server: Any, tmp_path: Path
) -> None:
    svc, gw = loop.gw.svc, loop.gw
    sent = await exchange.send(svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "doorbemiddeld", "passed_to": TEAM_B, "reason": "Geen capaciteit"},
    )  # fmt: skip
    await deliver_all(svc)
    raw = encrypted_to(smtp_server, TEAM_B, sent.reference)
    readers = Readers(
        tmp_path,
        export(loop.team_b_home, "--export-secret-keys"),
        {
            "gp": export(gw.nurse_home, "--export", gp_fingerprint(gw)),
            "gateway": await gateway_cert(gw),
        },
    )
    sealer = gateway_fingerprint(svc.store)
    outer = email.message_from_bytes(raw, policy=policy.default)
    # the gateway signs the pass-on, so From is an address on the gateway's key
    from_address = outer["From"].addresses[0].addr_spec.lower()
    assert from_address in uid_addresses(svc.settings.gnupg_home, sealer)
    for name, (plain, report) in readers.decrypt(raw, signer="gateway").items():
        # the message: signed by the gateway (one signature inside the encryption)
        assert "Good signature" in report, f"{name}: {report}"
        assert names(report, sealer), f"{name}: {report}"
        # the order nested in it: still the GP's own signature, verified by each reader
        nested = readers.verify(plain, "gp")
        assert all(names(r, gp_fingerprint(gw)) for r in nested.values()), name


async def test_every_notice_is_signed_by_the_gateway_and_rnp_and_sq_verify_it(
    gw: Gateway, smtp_server: Any, tmp_path: Path
) -> None:
    sent = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    [raw] = [
        r.content for r in smtp_server.handler.snapshot() if b"X-Securemail-Notice:" in r.content
    ]
    notice = email.message_from_bytes(raw, policy=policy.default)
    assert notice.get_content_type() == "multipart/signed"
    assert notice.get_param("protocol") == "application/pgp-signature"
    sealer = gateway_fingerprint(gw.svc.store)
    assert notice["From"].addresses[0].addr_spec.lower() in uid_addresses(
        gw.svc.settings.gnupg_home, sealer
    )
    readers = Readers(tmp_path, export(gw.nurse_home, "--export-secret-keys"), {
        "gateway": await gateway_cert(gw)
    })  # fmt: skip
    reports = readers.verify(raw, "gateway")
    assert all(names(r, sealer) for r in reports.values()), reports
    # and gpg, the third reader
    content, signature = mime.signed_parts(raw)
    (tmp_path / "n.sig").write_bytes(signature)
    status = subprocess.run(
        ["gpg", "--homedir", str(gw.svc.settings.gnupg_home), "--status-fd", "1", "--verify",
         str(tmp_path / "n.sig"), "-"],
        input=content, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert b"[GNUPG:] VALIDSIG " in status.stdout and sealer.encode() in status.stdout
    # what a client shows is covered by the signature (RFC 9788, hp="clear")
    signed = email.message_from_bytes(content, policy=policy.default)
    assert signed.get_param("hp") == "clear"
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        assert signed[name] == notice[name], name
    assert sent.reference in str(signed["Subject"])
    assert "afgegeven aan de mailserver" in signed.get_content()
    # a notice changed on the way does not verify: the signature holds its words
    forged = raw.replace(b"afgegeven aan de mailserver", b"afgegeven aan het team!!!!!!")
    assert forged != raw
    content, signature = mime.signed_parts(forged)
    (tmp_path / "f.eml").write_bytes(content)
    (tmp_path / "f.sig").write_bytes(signature)
    for cmd in (
        ["rnp", "--homedir", str(readers.rnp_home), "--verify", str(tmp_path / "f.sig"),
         "--source", str(tmp_path / "f.eml")],
        ["sq", "verify", "--signer-cert", str(tmp_path / "gateway.asc"), "--detached",
         str(tmp_path / "f.sig"), str(tmp_path / "f.eml")],
    ):  # fmt: skip
        assert run(*cmd).returncode != 0, cmd[0]


async def test_a_notice_the_gateway_cannot_sign_waits_and_never_leaves_unsigned(
    gw: Gateway, smtp_server: Any
) -> None:
    """The gateway's key unusable (here: the key the gateway names is not in its keyring):
    the notice stays queued as a transient failure; the relay gets no unsigned notice."""
    sent = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)  # the request and its 'afgeleverd' notice go, signed
    real = gateway_fingerprint(gw.svc.store)
    gw.svc.store.write_sync(lambda db: set_meta(db, "gateway_fingerprint", "A" * 40))
    try:
        sign = notice_signer(gw.svc)
    finally:
        gw.svc.store.write_sync(lambda db: set_meta(db, "gateway_fingerprint", real))
    before = set(smtp_server.handler.mailbox())
    await gw.svc.store.write(
        lambda db: outbox.enqueue_notice(
            db, notify.notice_overdue, sent.reference, "praktijk@praktijk.example",
            gw.svc.settings, actor=SYSTEM, now=gw.svc.now().timestamp(),
        )
    )  # fmt: skip
    worker = Worker(
        gw.svc.settings, gw.svc.store, owner_id="unsigned-test", sign_notice=sign,
        clock=lambda: gw.svc.now().timestamp(),
    )  # fmt: skip
    assert await worker.run_once() == 1
    assert set(smtp_server.handler.mailbox()) == before  # nothing went
    [row] = gw.svc.store.read_sync(
        lambda db: [
            dict(r) for r in db["outbox"].rows_where("kind = 'notice' AND status != 'sent'")
        ]
    )
    assert row["status"] == "retrying", row  # transient: tried again, with the key back
    assert "notice not signed" in str(row["last_error"])
