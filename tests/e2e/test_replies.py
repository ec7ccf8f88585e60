"""A nurse's reply by mail: taken only encrypted to the gateway and signed by a pinned member
of the team that holds the request; anything else is refused in the SMTP dialogue (5xx, Dutch
and English) and leaves nothing behind (no row, no file, no audit row)."""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from securemail.config import InboundSettings
from securemail.exchange import send as exchange
from securemail.inbound import listener
from securemail.web import create_app
from tests.conftest import kill_gpg_agent
from tests.e2e.webflow import login
from tests.gateway import GP_PASSPHRASE, Gateway, deliver_all, example, gpg_cli
from tests.smtp_fixtures import free_port

REPLY = "gateway@gateway.example"  # from_address; antwoord@gateway.example is the reply_to
REPLY_TO = "antwoord@gateway.example"
TEXT = "Mevrouw is vandaag gezien; wondzorg gestart. Groet, Nurse One"


@asynccontextmanager
async def listening(
    gw: Gateway, ca: trustme.CA, tmp_path: Path, **limits: Any
) -> AsyncIterator[int]:
    """The gateway's reply listener on a free port of 127.0.0.1 with a certificate of ``ca``
    (``limits``: further [inbound] settings, e.g. max_bytes); yields the port."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "inbound.pem", tmp_path / "inbound.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port = free_port()
    settings = InboundSettings(
        enabled=True,
        host="127.0.0.1",
        port=port,
        certfile=str(certfile),
        keyfile=str(keyfile),
        **limits,
    )
    server = await listener.start(gw.svc, settings)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def inbound(gw: Gateway, tls_ca: trustme.CA, tmp_path: Path) -> AsyncIterator[int]:
    async with listening(gw, tls_ca, tmp_path) as port:
        yield port


async def sent_request(gw: Gateway) -> tuple[str, str]:
    """A delivered request: (reference, the Message-ID of the mail the team got)."""
    result = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    mid = gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT message_id FROM outbox WHERE reference = ? AND kind = 'request'",
            [result.reference],
        ).fetchone()[0]
    )
    return result.reference, mid


async def nurse_armor(
    gw: Gateway,
    text: str,
    *,
    sign_as: str | None = "nurse1@zorg-noord.example",
    home: Path | None = None,
    to: str = REPLY_TO,
) -> str:
    """What the nurse's client makes: encrypted to the gateway's reply address (or ``to``),
    signed."""
    home = home or gw.nurse_home
    fpr = gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT value FROM meta WHERE key = 'gateway_fingerprint'"
        ).fetchone()[0]
    )
    gpg_cli(home, "--import", stdin=(await gw.svc.keyring.export_public(fpr)).encode())
    args = ["--trust-model", "always", "--armor", "--encrypt", "-r", to]
    if sign_as:
        args += ["--sign", "-u", sign_as]
    return gpg_cli(home, *args, stdin=text.encode()).decode()


def mail(body: str, reference: str, in_reply_to: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = "nurse1@zorg-noord.example"
    msg["To"] = REPLY_TO
    msg["Subject"] = f"Re: Uitvoeringsverzoek {reference}"
    msg["Message-ID"] = f"<{os.urandom(6).hex()}@zorg-noord.example>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    return msg.as_bytes()


async def deliver(port: int, cafile: str, raw: bytes) -> aiosmtplib.SMTPResponse | Exception:
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        errors, reply = await aiosmtplib.send(
            raw,
            sender="nurse1@zorg-noord.example",
            recipients=[REPLY_TO],
            hostname="127.0.0.1",
            port=port,
            start_tls=True,
            tls_context=ctx,
            timeout=30,
        )
        return aiosmtplib.SMTPResponse(250, reply)
    except aiosmtplib.SMTPResponseException as exc:
        return exc


def counts(gw: Gateway) -> tuple[int, int, int]:
    def q(db: Any) -> tuple[int, int, int]:
        return (
            db["replies"].count,
            db.execute(
                "SELECT count(*) FROM audit_events WHERE event_code = 'request.reply'"
            ).fetchone()[0],
            db.execute("SELECT count(*) FROM outbox").fetchone()[0],
        )

    return gw.svc.store.read_sync(q)


def files(home: Path) -> set[Path]:
    return {p for p in home.rglob("*") if p.is_file() and "gnupg" not in p.parts}


async def test_plaintext_reply_is_refused_in_the_dialogue_and_leaves_nothing(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    before, before_files = counts(gw), files(gw.home)
    result = await deliver(inbound, relay_cafile, mail(TEXT, reference, mid))
    assert isinstance(result, aiosmtplib.SMTPResponseException)
    assert result.code == 550
    assert "Niet versleuteld" in result.message and "Not encrypted" in result.message
    assert counts(gw) == before
    assert files(gw.home) == before_files  # nothing written beside the database either
    text = gw.svc.store.read_sync(
        lambda db: db.execute("SELECT group_concat(body) FROM replies").fetchone()[0]
    )
    assert text is None


async def test_encrypted_signed_reply_of_a_team_member_shows_on_the_gps_request_page(
    gw: Gateway, inbound: int, relay_cafile: str, aiohttp_client: Any
) -> None:
    reference, mid = await sent_request(gw)
    armored = await nurse_armor(gw, TEXT)
    result = await deliver(inbound, relay_cafile, mail(armored, reference, mid))
    assert result.code == 250, result
    stored = gw.svc.store.read_sync(lambda db: list(db["replies"].rows))
    assert len(stored) == 1 and stored[0]["reference"] == reference
    assert stored[0]["body"].startswith("v1:") and "wondzorg" not in stored[0]["body"]
    audit = gw.svc.store.read_sync(
        lambda db: list(db["audit_events"].rows_where("event_code = 'request.reply'"))
    )
    assert [a["object_id"] for a in audit] == [reference]
    notices = gw.svc.store.read_sync(
        lambda db: [
            bytes(r["mime"])
            for r in db["outbox"].rows_where(
                "kind = 'notice' AND recipient = 'praktijk@praktijk.example'"
            )
        ]
    )
    assert any(b"antwoord" in n for n in notices)
    assert not any(b"wondzorg" in n for n in notices)  # the notice is patient-free
    client = await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))
    from tests.e2e.test_web_flow import gp_login

    await login(client, "", gp_login(gw))
    async with client.get(f"/requests/{reference}") as r:
        page = await r.text()
    assert r.status == 200
    assert TEXT.split(";")[0] in page
    assert "Nurse" in page


async def test_reply_found_by_the_reference_in_its_subject(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    reference, _ = await sent_request(gw)
    armored = await nurse_armor(gw, TEXT)
    result = await deliver(inbound, relay_cafile, mail(armored, reference))
    assert result.code == 250, result
    assert counts(gw)[0] == 1


async def test_unknown_signer_is_refused_and_nothing_kept(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    stranger = gw.home / "stranger-gnupg"  # a key the gateway never saw, with the nurse's address
    stranger.mkdir(mode=0o700)
    gpg_cli(
        stranger,
        "--passphrase",
        "",
        "--quick-gen-key",
        "Someone <nurse1@zorg-noord.example>",
        "ed25519",
        "sign",
        "1y",
    )
    armored = await nurse_armor(gw, TEXT, home=stranger)
    kill_gpg_agent(stranger)
    before = counts(gw)
    result = await deliver(inbound, relay_cafile, mail(armored, reference, mid))
    assert isinstance(result, aiosmtplib.SMTPResponseException)
    assert result.code == 550
    assert "ondertekend" in result.message and "signed" in result.message
    assert counts(gw) == before


async def test_signer_known_to_the_gateway_but_not_in_the_team_is_refused(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    """Signed by a key the gateway holds (its own), which is no pinned member of the team."""
    reference, mid = await sent_request(gw)
    home = gw.svc.settings.gnupg_home
    armored = gpg_cli(
        home,
        "--trust-model",
        "always",
        "--armor",
        "--encrypt",
        "-r",
        REPLY_TO,
        "--sign",
        "-u",
        REPLY,
        stdin=TEXT.encode(),
    ).decode()
    before = counts(gw)
    result = await deliver(inbound, relay_cafile, mail(armored, reference, mid))
    assert isinstance(result, aiosmtplib.SMTPResponseException) and result.code == 550
    assert "geen vastgelegd lid" in result.message and "not a pinned member" in result.message
    assert counts(gw) == before


async def test_unsigned_and_unknown_request_and_other_team_are_refused(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    before = counts(gw)
    unsigned = await deliver(
        inbound, relay_cafile, mail(await nurse_armor(gw, TEXT, sign_as=None), reference, mid)
    )
    assert isinstance(unsigned, aiosmtplib.SMTPResponseException) and unsigned.code == 550
    unknown = await deliver(
        inbound,
        relay_cafile,
        mail(await nurse_armor(gw, TEXT), "UVZ-1999-000001", "<nope@x.example>"),
    )
    assert isinstance(unknown, aiosmtplib.SMTPResponseException) and unknown.code == 550
    assert "Onbekend verzoek" in unknown.message and "Unknown request" in unknown.message
    assert counts(gw) == before


async def test_mail_before_starttls_and_for_other_addresses_is_refused(
    gw: Gateway, inbound: int, relay_cafile: str
) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=inbound, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPResponseException) as plain:
        await smtp.mail("nurse1@zorg-noord.example")
    assert plain.value.code == 530
    await smtp.starttls(tls_context=ssl.create_default_context(cafile=relay_cafile))
    await smtp.ehlo()
    await smtp.mail("nurse1@zorg-noord.example")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as other:
        await smtp.rcpt("someone@elsewhere.example")
    assert other.value.code == 550
    await smtp.quit()


async def test_gateway_mail_carries_its_autocrypt_key_and_gp_signed_mail_none(
    gw: Gateway, smtp_server: Any, inbound: int, relay_cafile: str, tmp_path: Path
) -> None:
    """Autocrypt (prefer-encrypt=mutual) on mail From a gateway address, addr = From; none on
    GP-From mail (a client drops a header whose addr is not From). A client that takes the
    key from the header can reply, and the reply is taken."""
    reference, mid = await sent_request(gw)
    box = smtp_server.handler.mailbox()
    by_kind: dict[str, list[EmailMessage]] = {"request": [], "notice": []}
    for raw in box.values():
        msg = message_from_bytes(raw, policy=policy.default)
        kind = "request" if msg.get_content_type() == "multipart/encrypted" else "notice"
        by_kind[kind].append(msg)  # type: ignore[arg-type]
    assert by_kind["request"] and by_kind["notice"]
    for msg in by_kind["request"]:
        assert msg["Autocrypt"] is None  # From is the GP's address
    notice = by_kind["notice"][0]
    header = str(notice["Autocrypt"])
    fields = dict(f.strip().split("=", 1) for f in header.split(";"))
    assert fields["addr"] == str(notice["From"]) == REPLY
    assert fields["prefer-encrypt"] == "mutual"
    # A fresh client imports the key from the header and encrypts its reply to it.
    client = gw.home / "client-gnupg"
    client.mkdir(mode=0o700)
    keydata = base64.b64decode("".join(fields["keydata"].split()))
    gpg_cli(client, "--import", stdin=keydata)
    uids = gpg_cli(client, "--with-colons", "--list-keys").decode()
    assert REPLY_TO in uids
    kill_gpg_agent(client)
    gpg_cli(gw.nurse_home, "--import", stdin=keydata)
    armored = gpg_cli(
        gw.nurse_home,
        "--trust-model",
        "always",
        "--armor",
        "--sign",
        "-u",
        "nurse1@zorg-noord.example",
        "--encrypt",
        "-r",
        REPLY_TO,
        stdin=TEXT.encode(),
    ).decode()
    result = await deliver(inbound, relay_cafile, mail(armored, reference, mid))
    assert result.code == 250, result


def test_listener_is_off_by_default_and_never_on_without_tls(tmp_path: Path) -> None:
    from securemail import config
    from securemail.errors import ConfigError

    assert config.load(tmp_path, env={}).inbound.enabled is False
    with pytest.raises(ConfigError, match="certfile"):
        config.load(tmp_path, env={"SECUREMAIL_INBOUND_ENABLED": "true"})
