"""The check at the SMTP edge: only sealed bytes (or our own status notice) may leave.

The one PGP/MIME checker of the gateway: ``openpgp.seal`` runs it on what it builds, the
outbox when a message is queued, the delivery worker on the bytes about to go out
(``is_pgp_mime`` is its yes/no form).

Invariant: ``require_sendable`` passes only (a) RFC 3156 PGP/MIME whose payload is one
ASCII-armored block of public-key (v3) session-key packets followed by one encrypted-data
packet with integrity protection, in 7bit parts, with no readable text anywhere (no
preamble beyond the customary sentence, no armor Comment, no extra part or part header),
or (b) a notice built by
``securemail.message.notify``. It runs when a message is queued and again right before its
bytes go to the relay (defence in depth, SecureDrop's ``NotEncrypted``). Refusals name
the rule that failed and never quote the content. Bytes that passed are remembered in
this process by their SHA-256, so the same bytes checked again (at enqueue, then at the
edge) cost one hash, not a parse; one byte different and the full check runs. It
checks structure, not cryptography: it catches plaintext that slipped through by
mistake; that only ``openpgp.seal`` makes a SealedMessage is what keeps everything else
out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from securemail.config import Settings
from securemail.errors import InputError, SecuremailError
from securemail.message import armor, notify


class NotSealedError(SecuremailError):
    """Something that is not a sealed PGP/MIME message (or a notice) reached the outbox."""

    code = "outbox.not_sealed"
    nl = "Het bericht is niet versleuteld en is daarom niet verzonden."


_BEGIN, _END = "-----BEGIN PGP MESSAGE-----", "-----END PGP MESSAGE-----"
_PREAMBLES = ("", "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)")
_PART_HEADERS = {
    "content-type",
    "content-transfer-encoding",
    "content-description",
    "content-disposition",
    "mime-version",
}
_ARMOR_HEADERS = {"Version", "Charset"}  # not Comment: it is free text


#: SHA-256 digests of bytes that passed require_pgp_mime in this process (bounded, FIFO).
_PASSED: OrderedDict[bytes, None] = OrderedDict()
_PASSED_MAX = 4096
_PASSED_LOCK = threading.Lock()


def _refuse(why: str) -> NotSealedError:
    return NotSealedError(f"not a PGP/MIME encrypted message: {why}")


def require_pgp_mime(raw: bytes) -> None:
    """Refuse anything but an RFC 3156 multipart/encrypted message whose payload is armored
    OpenPGP encrypted data (session-key packets + one encrypted-data packet), with no
    readable text around it. Raises NotSealedError naming the rule, never quoting content.

    """
    if not isinstance(raw, bytes):
        raise _refuse("not 7-bit bytes")
    digest = hashlib.sha256(raw).digest()
    with _PASSED_LOCK:
        if digest in _PASSED:  # these exact bytes passed the full check below
            return
    _check_pgp_mime(raw)
    with _PASSED_LOCK:
        _PASSED[digest] = None
        while len(_PASSED) > _PASSED_MAX:
            _PASSED.popitem(last=False)


def is_pgp_mime(raw: bytes) -> bool:
    """True only for what ``require_pgp_mime`` passes (exactly what ``mime.build_outer``
    makes around real public-key ciphertext)."""
    try:
        require_pgp_mime(raw)
    except NotSealedError:
        return False
    return True


def _check_pgp_mime(raw: bytes) -> None:
    if not raw.isascii():
        raise _refuse("not 7-bit bytes")
    msg = BytesParser(EmailMessage, policy=policy.default).parsebytes(raw)
    if msg.get_content_type() != "multipart/encrypted":
        raise _refuse("top-level type is not multipart/encrypted")
    if msg.get_param("protocol") != "application/pgp-encrypted":
        raise _refuse('protocol is not "application/pgp-encrypted"')
    parts = [p for p in msg.iter_parts() if isinstance(p, EmailMessage)]
    if msg.defects or len(parts) != 2 or len(parts) != len(list(msg.iter_parts())):
        raise _refuse("malformed multipart or not exactly two parts")
    if (msg.preamble or "").strip() not in _PREAMBLES or (msg.epilogue or "").strip():
        raise _refuse("text outside the MIME parts")
    control, data = parts
    for part in parts:
        if part.defects or part.is_multipart() or set(map(str.lower, part.keys())) - _PART_HEADERS:
            raise _refuse("unexpected part structure or part headers")
        if str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower() != "7bit":
            raise _refuse("a transfer encoding other than 7bit")  # base64 could hide anything
    if control.get_content_type() != "application/pgp-encrypted":
        raise _refuse("first part is not application/pgp-encrypted")
    if _payload_bytes(control).strip() != b"Version: 1":
        raise _refuse("control part is not 'Version: 1'")
    if data.get_content_type() != "application/octet-stream":
        raise _refuse("second part is not application/octet-stream")
    _require_armored_encrypted(_payload_bytes(data))


def _payload_bytes(part: EmailMessage) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _require_armored_encrypted(payload: bytes) -> None:
    lines = payload.decode("ascii", "replace").strip().splitlines()
    if len(lines) < 4 or lines[0].strip() != _BEGIN or lines[-1].strip() != _END:
        raise _refuse("payload is not one armored PGP MESSAGE block")
    body = [line.strip() for line in lines[1:-1]]
    if "" not in body:
        raise _refuse("armor without the blank line after its headers")
    blank = body.index("")
    for header in body[:blank]:
        if header.partition(":")[0] not in _ARMOR_HEADERS:
            raise _refuse("armor header other than Version/Charset")
    data_lines = body[blank + 1 :]
    crc = data_lines.pop()[1:] if data_lines and data_lines[-1].startswith("=") else None
    try:
        packets = base64.b64decode("".join(data_lines), validate=True)
        if crc is not None and base64.b64decode(crc, validate=True) != _crc24(packets):
            raise _refuse("armor checksum mismatch")
    except binascii.Error:
        raise _refuse("armor body is not base64") from None
    tags = _packet_tags(packets)
    if len(tags) < 2 or tags[-1] not in (18, 20) or any(t not in (1, 3) for t in tags[:-1]):
        raise _refuse("packets are not session keys followed by one encrypted-data packet")
    try:  # only public-key (v3) session keys: no password, no unprotected data
        armor.encrypted_to(payload)
    except ValueError:
        raise _refuse("session keys are not public-key session keys") from None


def _crc24_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB  # RFC 4880 section 6.1
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC24_TABLE = _crc24_table()


def _crc24(data: bytes) -> bytes:
    """RFC 4880 section 6.1 CRC-24, a byte at a time from a table (the bit-at-a-time loop
    of the RFC took 60 ms for a 40 kB message, twice per message on the way out)."""
    crc, table = 0xB704CE, _CRC24_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ byte]
    return crc.to_bytes(3, "big")


def _packet_tags(data: bytes) -> list[int]:
    """Walk the OpenPGP packet headers (RFC 4880 section 4.2); return the tags in order."""
    tags: list[int] = []
    pos = 0
    try:
        while pos < len(data):
            first = data[pos]
            pos += 1
            if not first & 0x80:
                raise _refuse("not an OpenPGP packet stream")
            if first & 0x40:  # new format, possibly with partial body lengths
                tags.append(first & 0x3F)
                while True:
                    octet = data[pos]
                    if octet < 192:
                        pos, size, partial = pos + 1, octet, False
                    elif octet < 224:
                        pos, size, partial = (
                            pos + 2,
                            ((octet - 192) << 8) + data[pos + 1] + 192,
                            False,
                        )
                    elif octet == 255:
                        pos, size, partial = pos + 5, int.from_bytes(data[pos + 1 : pos + 5]), False
                    else:
                        pos, size, partial = pos + 1, 1 << (octet & 0x1F), True
                    pos += size
                    if not partial:
                        break
            else:  # old format
                tags.append((first >> 2) & 0x0F)
                if first & 3 == 3:  # indeterminate length: to the end
                    return tags
                n = (1, 2, 4)[first & 3]
                pos += n + int.from_bytes(data[pos : pos + n])
            if pos > len(data):
                raise _refuse("truncated OpenPGP packet")
    except IndexError:
        raise _refuse("truncated OpenPGP packet") from None
    return tags


def require_sendable(kind: str, raw: bytes, settings: Settings) -> None:
    """The check at the SMTP edge: sealed PGP/MIME for a request; for a notice, exactly the
    text ``securemail.message.notify`` builds under these settings."""
    if kind == "request":
        require_pgp_mime(raw)
    elif kind == "notice":
        try:
            notify.require_notice_mime(raw, settings)
        except InputError as err:
            raise NotSealedError("plain mail that is not exactly a securemail notice") from err
    else:
        raise NotSealedError(f"unknown outbox kind {kind!r}")
