"""mime and armor without gpg: inner round trips, the outer envelope, the strict PGP/MIME check."""

from __future__ import annotations

import base64
import dataclasses
import email
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP, default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.errors import InputError
from securemail.message import armor, mime, sealcheck
from securemail.message.mime import Envelope, SealInput

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n"
ENVELOPE = Envelope(
    sender="gateway@gw.example",
    recipient="noord@team.example",
    subject="Uitvoeringsverzoek UVZ-2026-000123",
    message_id="<0123abcd@gw.example>",
    extra_headers=(("X-Securemail-Reference", "UVZ-2026-000123"),),
    date=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
)
SIGNATURE = b"-----BEGIN PGP SIGNATURE-----\n\niHUEABYIAB0\n=wxyz\n-----END PGP SIGNATURE-----\n"
DUTCH = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,;:!?'\"<>&\n\r\téëïöüáóú€ĳ–—…"


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def _armor(data: bytes) -> str:
    crc = base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    body = base64.encodebytes(data).decode()
    return f"{armor.BEGIN_MESSAGE}\n\n{body}={crc}\n{armor.END_MESSAGE}\n"


def _packet(tag: int, body: bytes) -> bytes:
    return bytes([0xC0 | tag, len(body)]) + body


def fake_ciphertext(*key_ids: bytes) -> str:
    """Armor of PKESK packets (v3, ECDH) for ``key_ids`` followed by an SEIPD packet."""
    packets = b"".join(_packet(1, b"\x03" + kid + b"\x12" + b"\x00" * 20) for kid in key_ids)
    return _armor(packets + _packet(18, b"\x01" + b"\xaa" * 40))


CIPHERTEXT = fake_ciphertext(bytes.fromhex("EAEED6B654EC3C09"))


def document(text: str = "Tekst\n", html: str = "<p>x</p>", data: bytes = b"{}") -> SealInput:
    return SealInput(
        reference="UVZ-2026-000123", text=text, html=html, json=data, signer_public_key=KEY
    )


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- inner entity ---------------------------------------------------------------------------


@settings(max_examples=75, deadline=None, database=None)
@given(
    text=st.text(alphabet=DUTCH, max_size=400) | st.text(max_size=200),
    html=st.text(alphabet=DUTCH, max_size=400),
    data=st.binary(max_size=600),
)
def test_mime_inner_round_trip_preserves_content(text: str, html: str, data: bytes) -> None:
    inner = mime.build_inner(document(text, html, data))
    # The signed and encrypted bytes are 7-bit and in canonical CRLF form
    assert inner.isascii()
    assert b"\n" not in inner.replace(b"\r\n", b"") and b"\r" not in inner.replace(b"\r\n", b"")
    assert not any(p.defects for p in email.message_from_bytes(inner, policy=default).walk())
    parts = mime.parse_inner(inner)
    assert parts.text == _newlines(text)
    assert parts.html == _newlines(html)
    assert parts.json == data
    assert parts.signer_key == KEY
    assert not sealcheck.is_pgp_mime(inner)


def test_mime_inner_has_neutral_attachment_names() -> None:
    inner = email.message_from_bytes(
        mime.build_inner(document("Mevr. Jansen, BSN 123456782")), policy=default
    )
    names = [p.get_filename() for p in inner.walk() if p.get_filename()]
    # No detached signature part: the GP's one signature is the combined sign+encrypt
    assert names == ["request.json", "opdrachtgever.asc"]
    types = [p.get_content_type() for p in inner.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/json",
        "application/pgp-keys",
    ]
    assert b"Jansen" not in b"".join(str(p.get_filename()).encode() for p in inner.walk())


def test_mime_inner_refuses_secret_key_attachment() -> None:
    leaked = SealInput("UVZ-1", "t", "h", b"{}", armor.SECRET_KEY_ARMOR.decode() + "\n")
    with pytest.raises(ValueError, match="secret key"):
        mime.build_inner(leaked)


def test_mime_parse_inner_missing_part_raises_input_error() -> None:
    msg = EmailMessage(policy=SMTP)
    msg.set_content("alleen tekst")
    with pytest.raises(InputError):
        mime.parse_inner(msg.as_bytes())


# -- outer envelope -------------------------------------------------------------------------


def test_mime_outer_has_only_the_envelope_headers() -> None:
    raw = mime.build_outer(CIPHERTEXT.encode(), ENVELOPE)
    msg = email.message_from_bytes(raw, policy=default)
    assert list(msg.items())[:7] == [
        ("From", "gateway@gw.example"),
        ("To", "noord@team.example"),
        ("Subject", "Uitvoeringsverzoek UVZ-2026-000123"),
        ("Date", "Mon, 02 Mar 2026 09:30:00 +0000"),
        ("Message-ID", "<0123abcd@gw.example>"),
        ("MIME-Version", "1.0"),
        ("X-Securemail-Reference", "UVZ-2026-000123"),
    ]
    assert len(msg) == 8
    assert msg.get_content_type() == "multipart/encrypted"
    assert msg.get_param("protocol") == "application/pgp-encrypted"
    version, payload = msg.get_payload()
    assert version.get_payload().strip() == "Version: 1"
    assert payload.get_filename() == "encrypted.asc"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert sealcheck.is_pgp_mime(raw)


def test_mime_outer_generates_message_id_from_sender_domain() -> None:
    raw = mime.build_outer(CIPHERTEXT.encode(), Envelope("gw@gw.example", "t@team.example", "S"))
    msg_id = email.message_from_bytes(raw, policy=default)["Message-ID"]
    assert msg_id.startswith("<") and msg_id.endswith("@gw.example>")


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope("gw@gw.example", "t@team.example", "Onderwerp\r\nBcc: x@evil.example"),
        Envelope("gw@gw.example", "Team <t@team.example>", "S"),
        Envelope("gw@gw.example", "t@team.example", "S", extra_headers=(("Bcc", "x@e.example"),)),
        Envelope("gw@gw.example", "t@team.example", "S", extra_headers=(("Content-Type", "x"),)),
        Envelope("gw@gw.example", "t@team.example", "S", message_id="geen-id"),
    ],
    ids=["header-injection", "display-name", "bcc", "content-type", "message-id"],
)
def test_mime_outer_refuses_unsafe_envelope(envelope: Envelope) -> None:
    with pytest.raises(InputError):
        mime.build_outer(CIPHERTEXT.encode(), envelope)


def test_mime_outer_refuses_non_ciphertext() -> None:
    with pytest.raises(ValueError):
        mime.build_outer(b"Mevr. Jansen", ENVELOPE)


# -- the SMTP-edge guard --------------------------------------------------------------------


def test_is_pgp_mime_rejects_plain_text_message() -> None:
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = "a@b.example", "c@d.example", "Verzoek"
    msg.set_content("Mevr. Jansen, BSN 123456782")
    assert not sealcheck.is_pgp_mime(msg.as_bytes())


def test_is_pgp_mime_rejects_multipart_signed() -> None:
    msg = EmailMessage(policy=SMTP)
    msg["Content-Type"] = (
        'multipart/signed; protocol="application/pgp-signature"; micalg="pgp-sha256"'
    )
    body = EmailMessage(policy=SMTP)
    body.set_content("Mevr. Jansen")
    sig = EmailMessage(policy=SMTP)
    sig.set_content(SIGNATURE, maintype="application", subtype="pgp-signature")
    msg.set_payload([body, sig])
    assert not sealcheck.is_pgp_mime(msg.as_bytes())


def _tampered(old: bytes, new: bytes) -> bytes:
    raw = mime.build_outer(CIPHERTEXT.encode(), ENVELOPE)
    assert old in raw
    return raw.replace(old, new, 1)


@pytest.mark.parametrize(
    "raw",
    [
        # plaintext dressed up as armor (a valid checksum, but not OpenPGP packets)
        _tampered(
            CIPHERTEXT.replace("\n", "\r\n").encode(),
            _armor(b"Mevr. Jansen, BSN 123456782").replace("\n", "\r\n").encode(),
        ),
        # plaintext after the armor, inside the payload part
        _tampered(armor.END_MESSAGE.encode(), armor.END_MESSAGE.encode() + b"\r\nMevr. Jansen"),
        # plaintext in the preamble
        _tampered(mime.PREAMBLE.encode(), b"Mevr. Jansen, BSN 123456782"),
        # a base64 transfer encoding could hide anything
        _tampered(
            b"Content-Transfer-Encoding: 7bit\r\n\r\n-----BEGIN",
            b"Content-Transfer-Encoding: base64\r\n\r\n-----BEGIN",
        ),
        # wrong protocol
        _tampered(b'protocol="application/pgp-encrypted"', b'protocol="application/pkcs7-mime"'),
        # 8-bit bytes anywhere
        _tampered(b"Uitvoeringsverzoek", "Uitvoeringsverzoek é".encode()),
    ],
    ids=["fake-armor", "trailing-text", "preamble", "base64-cte", "protocol", "8bit"],
)
def test_is_pgp_mime_rejects_tampered_envelope(raw: bytes) -> None:
    assert not sealcheck.is_pgp_mime(raw)


def test_is_pgp_mime_rejects_password_encrypted_payload() -> None:
    skesk = _armor(_packet(3, b"\x04\x09\x03" + b"\x00" * 10) + _packet(18, b"\x01\xaa"))
    with pytest.raises(ValueError, match="password"):
        mime.build_outer(skesk.encode(), ENVELOPE)
    raw = _tampered(CIPHERTEXT.replace("\n", "\r\n").encode(), skesk.replace("\n", "\r\n").encode())
    assert not sealcheck.is_pgp_mime(raw)


# -- armor ----------------------------------------------------------------------------------


def test_armor_encrypted_to_lists_key_ids_in_order() -> None:
    ids = (bytes.fromhex("0102030405060708"), bytes.fromhex("A1B2C3D4E5F60718"))
    assert armor.encrypted_to(fake_ciphertext(*ids)) == ("0102030405060708", "A1B2C3D4E5F60718")


@pytest.mark.parametrize(
    "text",
    [
        "\n".join("=AAAAA" if line.startswith("=") else line for line in CIPHERTEXT.split("\n")),
        _armor(_packet(11, b"b\x00\x00\x00\x00\x00Jansen")),  # literal data: plaintext
        _armor(_packet(9, b"\xaa" * 30)),  # no integrity protection
        _armor(_packet(1, b"\x03" + b"\x00" * 12)),  # no encrypted data follows
        CIPHERTEXT.replace(armor.BEGIN_MESSAGE, "-----BEGIN PGP SIGNATURE-----"),
    ],
    ids=["bad-checksum-line", "literal", "sed", "truncated", "not-a-message"],
)
def test_armor_encrypted_to_refuses_non_ciphertext(text: str) -> None:
    with pytest.raises(ValueError):
        armor.encrypted_to(text)


def test_mime_inner_of_a_forwarded_legacy_request_keeps_the_gps_json_signature() -> None:
    inner = mime.build_inner(document("Tekst\n", "<p>x</p>", b'{"a":1}'), SIGNATURE)
    parts = mime.parse_inner(inner)
    assert parts.json_signature == SIGNATURE and parts.json == b'{"a":1}'
    names = [p.get_filename() for p in email.message_from_bytes(inner, policy=default).walk()]
    assert [n for n in names if n] == ["request.json", "request.json.asc", "opdrachtgever.asc"]


def _same_but_boundary(raw: bytes) -> bytes:
    boundary = email.message_from_bytes(raw, policy=default).get_boundary()
    return raw.replace(boundary.encode(), b"BOUNDARY")


def test_mime_outer_written_directly_equals_the_email_packages() -> None:
    env = ENVELOPE.resolved()
    body = mime._ascii_armor(CIPHERTEXT, armor.BEGIN_MESSAGE)
    headers = [
        ("From", env.sender),
        ("To", env.recipient),
        ("Subject", env.subject),
        ("Date", "Mon, 02 Mar 2026 09:30:00 +0000"),
        ("Message-ID", str(env.message_id)),
        ("MIME-Version", "1.0"),
        *env.extra_headers,
    ]
    direct, generated = mime._outer(headers, body), mime._outer_with_email(headers, body)
    assert _same_but_boundary(direct) == _same_but_boundary(generated)
    assert sealcheck.is_pgp_mime(direct)


def test_mime_outer_with_a_header_to_encode_goes_through_the_email_package() -> None:
    raw = mime.build_outer(
        CIPHERTEXT.encode(), dataclasses.replace(ENVELOPE, subject="Uitvoeringsverzoek – één")
    )
    assert raw.isascii() and b"=?utf-8?" in raw
    assert sealcheck.is_pgp_mime(raw)
