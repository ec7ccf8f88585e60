"""The Autocrypt header (Autocrypt Level 1): the gateway's public key on the mail it sends,
so a reader's client can encrypt its reply and is told to (``prefer-encrypt=mutual``).

Invariant: a header is added only to mail whose From is the header's ``addr`` (Level 1,
section 2.1: a client ignores one whose addr differs from From); the key it carries is
public. GP-signed mail (From: the GP's address on the GP's key) gets none: the GP's own
key is not where replies are read, and the gateway's key under the GP's From would be a
header every client drops. Its Reply-To names the gateway's reply address, whose key is
published with the directory and on the gateway's own mail (docs/mail.md).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from email.parser import BytesHeaderParser
from email.utils import parseaddr

from securemail.message import armor

_FOLD = 72  # base64 characters per folded line (RFC 5322 keeps lines under 78)


def header_value(addr: str, public_key_armor: str) -> str:
    """``addr=...; prefer-encrypt=mutual; keydata=...`` with keydata folded (CRLF + space)."""
    data = base64.b64encode(armor.dearmor(public_key_armor, block="PUBLIC KEY BLOCK")).decode()
    lines = [data[i : i + _FOLD] for i in range(0, len(data), _FOLD)]
    return f"addr={addr}; prefer-encrypt=mutual; keydata=\r\n " + "\r\n ".join(lines)


def from_address(raw: bytes) -> str:
    """The bare From address of a message (headers only are parsed), lower case."""
    headers = BytesHeaderParser().parsebytes(raw)
    return parseaddr(str(headers.get("From", "")))[1].lower()


def add(raw: bytes, headers: Mapping[str, str]) -> bytes:
    """``raw`` with ``Autocrypt:`` first when its From is a key of ``headers`` (lower-case
    address -> header value) and it has none yet; else ``raw`` unchanged."""
    if not headers or b"\nautocrypt:" in raw[:4096].lower() or raw[:10].lower() == b"autocrypt:":
        return raw
    value = headers.get(from_address(raw))
    if value is None:
        return raw
    return b"Autocrypt: " + value.encode("ascii") + b"\r\n" + raw
