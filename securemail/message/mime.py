"""PGP/MIME (RFC 3156) with the standard ``email`` package: the inner entity and the outer envelope.

Invariants:
- the inner entity is 7-bit clean and in canonical form (CRLF line ends, text as UTF-8 in
  base64), so the bytes that are signed and encrypted are exactly the bytes a reader
  decrypts and parses; its attachment names are fixed and neutral, never patient data;
- the GP's one signature covers this whole entity (text, HTML, request.json and the GP's
  public key alike): a GP's order is signed as RFC 3156 section 6.1 (``build_signed``: the
  entity and a detached signature in multipart/signed, then encrypted), so the gateway can
  keep the signed entity and re-encrypt it, byte for byte, for a team it is passed on to;
  nested there (``forwarded_order``) under the gateway's own seal, it is never re-signed;
- the outer message carries only From (and Sender when the author is not the gateway), To,
  a neutral Subject, Date, Message-ID, threading (In-Reply-To, References), Reply-To,
  MIME-Version, the caller's extra headers and the two RFC 3156 parts; the only body is
  ciphertext;
- header protection (RFC 9788): with an envelope, the inner entity's root part carries the
  real headers (From, To, the protected Subject, Date, Message-ID, threading, Reply-To) and
  one ``HP-Outer`` line per outer header, with ``hp="cipher"`` on its Content-Type, so they
  are signed and encrypted with the body: a re-sent old ciphertext shows its own Date and
  Message-ID, not the envelope's. Protected values are ASCII and never patient data;
- ``securemail.message.sealcheck`` (the one PGP/MIME checker: seal, outbox, SMTP edge)
  accepts exactly that shape, with a payload that parses as public-key encrypted data.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.policy import SMTP, default
from email.utils import format_datetime

from securemail.errors import InputError
from securemail.message import armor

JSON_NAME = "request.json"
#: Only in requests forwarded from before one signature per message (see openpgp.seal).
JSON_SIGNATURE_NAME = "request.json.asc"
SIGNER_KEY_NAME = "opdrachtgever.asc"
PAYLOAD_NAME = "encrypted.asc"
PREAMBLE = "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"

ADDRESS_RE = re.compile(r"[^@\s<>\"(),;:]+@[A-Za-z0-9.-]+")
_MESSAGE_ID_RE = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_HEADER_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_RESERVED = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "sender",
    "reply-to",
    "return-path",
    "in-reply-to",
    "references",
    "autocrypt",
    "hp-outer",
}


@dataclass(frozen=True, slots=True)
class SealInput:
    """A rendered document to seal: what the nurse reads, and what software reads."""

    reference: str  # UVZ-..., an id, never patient data
    text: str  # text/plain (Dutch)
    html: str  # text/html
    json: bytes  # canonical request.json; signed by the GP with the rest of the inner entity
    signer_public_key: str  # the GP's armored public key, attached as opdrachtgever.asc
    #: (neutral name such as "bijlage-1.pdf", content type, bytes): checked by content
    #: before (securemail.form.attachments); inside the encryption only.
    attachments: tuple[tuple[str, str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    """The headers of a sealed mail. The outer ones must be neutral; ``protected_subject``
    travels only inside the encryption (RFC 9788) and may say SPOED, WIJZIGING, INTREKKING
    and the reference, never patient data."""

    sender: str  # the gateway: envelope MAIL FROM, and Sender when an author is given
    recipient: str
    subject: str  # neutral: "Uitvoeringsverzoek UVZ-2026-000123"
    message_id: str | None = None  # "<id@domain>"; generated from the sender's domain if None
    extra_headers: tuple[tuple[str, str], ...] = ()  # e.g. ("X-Securemail-Reference", ref)
    date: datetime | None = None  # None: now
    #: From: an address on the signer's key (openpgp.seal refuses any other); "" = sender
    author: str = ""
    protected_subject: str = ""  # the real Subject, inside the encryption; "" = subject
    in_reply_to: str = ""  # "<id@domain>" of the message this one replaces (threading)
    reply_to: str = ""  # where replies go: a gateway reply address whose key is published

    def resolved(self) -> Envelope:
        """This envelope with a Message-ID and a Date, generated where absent."""
        message_id = self.message_id or f"<{uuid.uuid4().hex}@{self.sender.rpartition('@')[2]}>"
        return replace(self, message_id=message_id, date=self.date or datetime.now(UTC))

    @property
    def from_address(self) -> str:
        """The From address: the author's when given, else the sender's."""
        return self.author or self.sender


@dataclass(frozen=True, slots=True)
class InnerParts:
    """What parse_inner() found; text and html with "\\n" line ends, armor with "\\n"."""

    text: str
    html: str
    json: bytes
    signer_key: str
    json_signature: bytes = b""  # only in a forwarded request sealed before one signature
    #: a passed-on request: the GP's own multipart/signed order, exactly as signed
    forwarded_order: bytes = b""


def _canonical_text(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode("utf-8")


def _ascii_armor(data: bytes | str, begin: str) -> bytes:
    raw = data.encode("ascii") if isinstance(data, str) else data
    if not raw.isascii() or not raw.lstrip().startswith(begin.encode("ascii")):
        raise ValueError(f"expected ASCII armor starting with {begin}")
    return raw.strip().replace(b"\r\n", b"\n") + b"\n"


def _leaf(
    content_type: str,
    payload: bytes,
    *,
    filename: str | None = None,
    disposition: str = "attachment",
    seven_bit: bool = False,
) -> MIMEPart:
    part = MIMEPart(policy=SMTP)
    part["Content-Type"] = content_type
    if filename:
        part["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    if seven_bit:  # ASCII armor: readable as is; the generator writes CRLF line ends
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(payload.decode("ascii"))
    else:
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(base64.encodebytes(payload).decode("ascii"))
    return part


def _inner_part(headers: tuple[str, ...], body: bytes) -> bytes:
    return "\r\n".join(headers).encode("ascii") + b"\r\n\r\n" + body


def _base64_crlf(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76-character lines


def _multipart(
    subtype: str, parts: list[bytes], *, head: tuple[str, ...] = (), params: str = ""
) -> bytes:
    # The boundary cannot occur in a part: base64 has neither "-" nor "_", and armor lines
    # that start with "--" continue with "---"; still checked, as the email package does.
    while True:
        boundary = f"=_securemail_{secrets.token_hex(16)}"
        delimiter = b"--" + boundary.encode("ascii")
        if not any(delimiter in p for p in parts):
            break
    lines = "".join(f"{line}\r\n" for line in head)
    content_type = f'Content-Type: multipart/{subtype};{params}\r\n boundary="{boundary}"'
    out = [f"{lines}{content_type}\r\n\r\n".encode()]
    for p in parts:
        out += [delimiter, b"\r\n", p, b"\r\n"]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


_ATTACHMENT_NAME = re.compile(r"bijlage-[0-9]{1,2}\.(pdf|jpg|png)")
_ATTACHMENT_TYPES = frozenset({"application/pdf", "image/jpeg", "image/png"})


def _attachment(name: str, kind: str, data: bytes) -> bytes:
    """One attachment part; its name is the gateway's neutral one, never the sender's."""
    if not _ATTACHMENT_NAME.fullmatch(name) or kind not in _ATTACHMENT_TYPES:
        raise ValueError("attachment name or type not one the gateway gives")
    return _inner_part(
        (
            f'Content-Type: {kind}; name="{name}"',
            f'Content-Disposition: attachment; filename="{name}"',
            "Content-Transfer-Encoding: base64",
        ),
        _base64_crlf(data),
    )


def build_inner(
    document: SealInput,
    json_signature: bytes | None = None,
    envelope: Envelope | None = None,
    forwarded_order: bytes | None = None,
) -> bytes:
    """The multipart/mixed entity to sign and encrypt, in canonical CRLF form.

    Its parts: text/plain and text/html (alternatives), request.json, and the GP's public
    key (opdrachtgever.asc). The GP's signature over all of it comes from the combined
    sign+encrypt (RFC 3156 section 6.2), so gpg reports "Good signature" on decryption.
    ``json_signature``: a forwarded request sealed before one signature per message keeps
    the GP's detached signature over request.json (request.json.asc), before the key.
    ``envelope`` (resolved): its headers are protected (RFC 9788, see protected_headers).
    ``forwarded_order``: a passed-on request's GP-signed multipart/signed entity
    (``build_signed``), nested unchanged as the last part so each team verifies the GP.

    Written directly rather than with the email package's generator (ten times slower
    for this fixed shape, on the path of every send); ``parse_inner`` reads it back with
    the email package, and the tests round-trip it.
    """
    key = document.signer_public_key
    if "PRIVATE KEY" in key:  # armor.SECRET_KEY_ARMOR, or any other secret key format
        raise ValueError("refusing to attach secret key material")
    key_armor = _ascii_armor(key, "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    alternative = _multipart(
        "alternative",
        [
            _inner_part(
                ('Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: base64"),
                _base64_crlf(_canonical_text(document.text)),
            ),
            _inner_part(
                ('Content-Type: text/html; charset="utf-8"', "Content-Transfer-Encoding: base64"),
                _base64_crlf(_canonical_text(document.html)),
            ),
        ],
    )
    forwarded = []
    if json_signature:
        forwarded.append(
            _inner_part(
                (
                    f'Content-Type: application/pgp-signature; name="{JSON_SIGNATURE_NAME}"',
                    f'Content-Disposition: attachment; filename="{JSON_SIGNATURE_NAME}"',
                    "Content-Transfer-Encoding: 7bit",
                ),
                _ascii_armor(json_signature, "-----BEGIN PGP SIGNATURE-----").replace(
                    b"\n", b"\r\n"
                ),
            )
        )
    head: tuple[str, ...] = ()
    params = ""
    if envelope is not None:
        head = tuple(f"{name}: {value}" for name, value in protected_headers(envelope))
        params = ' hp="cipher";'
    raw = _multipart(
        "mixed",
        head=head,
        params=params,
        parts=[
            alternative,
            _inner_part(
                (
                    f'Content-Type: application/json; name="{JSON_NAME}"',
                    f'Content-Disposition: attachment; filename="{JSON_NAME}"',
                    "Content-Transfer-Encoding: base64",
                ),
                _base64_crlf(document.json),
            ),
            *(_attachment(name, kind, data) for name, kind, data in document.attachments),
            *forwarded,
            _inner_part(
                (
                    f'Content-Type: application/pgp-keys; name="{SIGNER_KEY_NAME}"',
                    f'Content-Disposition: attachment; filename="{SIGNER_KEY_NAME}"',
                    "Content-Transfer-Encoding: 7bit",
                ),
                key_armor.replace(b"\n", b"\r\n"),
            ),
            *([forwarded_order] if forwarded_order else []),
        ],
    )
    if not raw.isascii():  # pragma: no cover - every part above is base64 or checked ASCII
        raise ValueError("inner entity is not 7-bit clean")
    return raw


#: OpenPGP hash algorithm ids (RFC 4880 9.4) -> RFC 3156 micalg values
MICALG = {2: "pgp-sha1", 8: "pgp-sha256", 9: "pgp-sha384", 10: "pgp-sha512", 11: "pgp-sha224"}
SIGNATURE_NAME = "signature.asc"


def build_signed(content: bytes, signature: bytes, hash_algo: int) -> bytes:
    """RFC 3156 section 6.1: ``content`` (an inner entity, as signed) and the signer's
    detached armored ``signature`` over exactly those bytes, as multipart/signed. The
    result is both what is encrypted for the first team and what a pass-on nests."""
    if hash_algo not in MICALG:
        raise ValueError(f"unsupported hash algorithm {hash_algo}")
    signature_part = _inner_part(
        (
            f'Content-Type: application/pgp-signature; name="{SIGNATURE_NAME}"',
            "Content-Description: OpenPGP digital signature",
            f'Content-Disposition: attachment; filename="{SIGNATURE_NAME}"',
            "Content-Transfer-Encoding: 7bit",
        ),
        _ascii_armor(signature, "-----BEGIN PGP SIGNATURE-----").replace(b"\n", b"\r\n"),
    )
    params = f' protocol="application/pgp-signature"; micalg={MICALG[hash_algo]};'
    return _multipart("signed", [content, signature_part], params=params)


def signed_parts(raw: bytes) -> tuple[bytes, bytes]:
    """The signed content and the armored signature of the first multipart/signed entity in
    ``raw`` (the root, or one nested in it), as a reader verifies them: the content is the
    bytes between the first delimiter line and the CRLF before the next (RFC 3156 5).
    InputError when there is none or it is malformed."""
    msg = BytesParser(policy=default).parsebytes(raw)
    for part in msg.walk():
        if part.get_content_type() != "multipart/signed":
            continue
        boundary = part.get_boundary()
        children = part.get_payload()
        if not boundary or not isinstance(children, list) or len(children) != 2:
            break
        sig_part = children[1]
        if not isinstance(sig_part, Message):
            break
        delimiter = b"--" + boundary.encode("ascii")
        start = raw.find(delimiter + b"\r\n")
        end = raw.find(b"\r\n" + delimiter, start + len(delimiter)) if start >= 0 else -1
        if start < 0 or end < 0:
            break
        signature = sig_part.get_payload(decode=True)
        if sig_part.get_content_type() != "application/pgp-signature":
            break
        if not isinstance(signature, bytes) or not signature:
            break
        return raw[start + len(delimiter) + 2 : end], signature.replace(b"\r\n", b"\n")
    raise InputError("no multipart/signed entity with a signature", field="mime")


def _check_header(field: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise InputError(f"line break in the {field} header", field=field)
    return value


def outer_headers(envelope: Envelope) -> list[tuple[str, str]]:
    """The outer (readable, neutral) headers of a resolved envelope, checked, in order."""
    env = envelope
    addresses = [("sender", env.sender), ("recipient", env.recipient)]
    addresses += [(f, a) for f, a in (("author", env.author), ("reply_to", env.reply_to)) if a]
    for field, address in addresses:
        if not ADDRESS_RE.fullmatch(address):
            raise InputError(f"{field} is not a bare e-mail address", field=field)
    for field, mid in (("message_id", env.message_id or ""), ("in_reply_to", env.in_reply_to)):
        if (mid or field == "message_id") and not _MESSAGE_ID_RE.fullmatch(mid):
            raise InputError(f"{field} is not <id@domain>", field=field)
    if env.date is None:
        raise InputError("the envelope has no date; resolve it first", field="date")
    headers = [("From", env.from_address)]
    if env.author and env.author.lower() != env.sender.lower():
        headers.append(("Sender", env.sender))  # RFC 5322 3.6.2: the gateway transmits
    headers += [
        ("To", env.recipient),
        ("Subject", _check_header("subject", env.subject)),
        ("Date", format_datetime(env.date.astimezone(UTC))),
        ("Message-ID", env.message_id or ""),
    ]
    if env.in_reply_to:
        headers += [("In-Reply-To", env.in_reply_to), ("References", env.in_reply_to)]
    if env.reply_to:
        headers.append(("Reply-To", env.reply_to))
    for name, value in env.extra_headers:
        lowered = name.lower()
        if (
            not _HEADER_NAME_RE.fullmatch(name)
            or lowered in _RESERVED
            or lowered.startswith("content-")
        ):
            raise InputError(f"header {name!r} may not be set as an extra header", field=name)
        headers.append((name, _check_header(name, value)))
    return headers


def protected_headers(envelope: Envelope) -> list[tuple[str, str]]:
    """The headers inside the encryption (RFC 9788 section 2): the real ones, with the
    protected Subject, then one ``HP-Outer`` per outer header so that a reader can tell
    what the envelope showed. ASCII only (the inner entity is 7-bit clean)."""
    outer = outer_headers(envelope)
    subject = _check_header("protected_subject", envelope.protected_subject or envelope.subject)
    inner = [(n, subject if n == "Subject" else v) for n, v in outer if not n.startswith("X-")]
    inner += [("HP-Outer", f"{name}: {value}") for name, value in outer]
    for name, value in inner:
        if not (value.isascii() and value.isprintable()):
            raise InputError(f"protected header {name} is not printable ASCII", field=name)
    return inner


def build_outer(ciphertext_armor: bytes, envelope: Envelope) -> bytes:
    """The RFC 3156 multipart/encrypted message around ``ciphertext_armor``."""
    env = envelope.resolved()
    headers = outer_headers(env)
    body = _ascii_armor(ciphertext_armor, armor.BEGIN_MESSAGE)
    armor.encrypted_to(body)  # ValueError unless public-key encrypted OpenPGP data
    headers.insert(len(headers) - len(env.extra_headers), ("MIME-Version", "1.0"))
    if all(_plain_header(name, value) for name, value in headers):
        return _outer(headers, body)
    return _outer_with_email(headers, body)  # RFC 2047 encoding or folding needed


def _plain_header(name: str, value: str) -> bool:
    """A header the email package would write as is: ASCII, no encoded words, no folding."""
    return (
        value.isascii()
        and value.isprintable()
        and "=?" not in value
        and (len(name) + 2 + len(value) <= 78)
    )


def _outer(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """What _outer_with_email writes for plain headers, without the email package's
    generator (about 4 ms per 40 kB message on every send); the tests compare the two."""
    boundary = f"=_securemail_{secrets.token_hex(16)}"
    delimiter = b"--" + boundary.encode("ascii")
    if delimiter in body:  # pragma: no cover - armor lines never start with "--="
        return _outer_with_email(headers, body)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head += (
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
        f' boundary="{boundary}"\r\n\r\n{PREAMBLE}\r\n'
    )
    return b"".join(
        [
            head.encode("ascii"),
            delimiter,
            b"\r\nContent-Type: application/pgp-encrypted\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\nVersion: 1\r\n\r\n",
            delimiter,
            f'\r\nContent-Type: application/octet-stream; name="{PAYLOAD_NAME}"\r\n'
            f'Content-Disposition: inline; filename="{PAYLOAD_NAME}"\r\n'
            "Content-Transfer-Encoding: 7bit\r\n\r\n".encode("ascii"),
            body.replace(b"\n", b"\r\n"),
            b"\r\n",
            delimiter,
            b"--\r\n",
        ]
    )


def _outer_with_email(headers: list[tuple[str, str]], body: bytes) -> bytes:
    msg = EmailMessage(policy=SMTP)
    for name, value in headers:
        msg[name] = value
    msg["Content-Type"] = 'multipart/encrypted; protocol="application/pgp-encrypted"'
    msg.preamble = PREAMBLE
    control = _leaf("application/pgp-encrypted", b"Version: 1\n", seven_bit=True)
    data = _leaf(
        f'application/octet-stream; name="{PAYLOAD_NAME}"',
        body,
        filename=PAYLOAD_NAME,
        disposition="inline",
        seven_bit=True,
    )
    # typeshed's attach() wants an EmailMessage; a MIMEPart is right for a body part (no
    # MIME-Version header of its own), and the email package takes either.
    msg.attach(control)  # type: ignore[arg-type]
    msg.attach(data)  # type: ignore[arg-type]
    return msg.as_bytes(policy=SMTP)


def _decoded(part: EmailMessage) -> bytes:
    """A leaf part's payload, transfer-decoded (empty when there is none)."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _text(part: EmailMessage) -> str:
    data = _decoded(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise InputError("text part is not valid in its charset", field="mime") from None
    return text.replace("\r\n", "\n")


def parse_inner(raw: bytes) -> InnerParts:
    """The parts of a decrypted inner entity; InputError when one is missing or doubled."""
    msg = BytesParser(policy=default).parsebytes(raw)
    found: dict[str, EmailMessage] = {}
    leaves, nested = _leaves(msg)
    for part in leaves:
        name = part.get_filename()
        kind = part.get_content_type()
        slot = {
            ("text/plain", None): "text",
            ("text/html", None): "html",
            ("application/json", JSON_NAME): "json",
            ("application/pgp-keys", SIGNER_KEY_NAME): "signer_key",
            ("application/pgp-signature", JSON_SIGNATURE_NAME): "json_signature",
        }.get((kind, name))
        if slot is None:
            continue
        if slot in found:
            raise InputError(f"inner entity has more than one {slot} part", field="mime")
        found[slot] = part
    missing = {"text", "html", "json", "signer_key"} - set(found)
    if missing:
        raise InputError(f"inner entity lacks {sorted(missing)}", field="mime")
    try:
        binary = {
            k: _decoded(found[k]) for k in ("json", "signer_key", "json_signature") if k in found
        }
    except binascii.Error:  # pragma: no cover - the email package decodes leniently
        raise InputError("undecodable part", field="mime") from None
    return InnerParts(
        text=_text(found["text"]),
        html=_text(found["html"]),
        json=binary["json"],
        signer_key=binary["signer_key"].replace(b"\r\n", b"\n").decode("ascii", "replace"),
        json_signature=binary.get("json_signature", b"").replace(b"\r\n", b"\n"),
        forwarded_order=signed_parts(raw)[0] if nested else b"",
    )


def _leaves(msg: EmailMessage) -> tuple[list[EmailMessage], bool]:
    """The leaf parts of an inner entity, and whether it nests a forwarded signed order.

    A root multipart/signed (a GP's order, RFC 3156 6.1) is read through its signed part;
    a multipart/signed nested deeper (the GP's order inside a passed-on request) is not
    read as this message's own parts: it is the forwarded order."""
    if msg.get_content_type() == "multipart/signed":
        children = msg.get_payload()
        if isinstance(children, list) and children and isinstance(children[0], EmailMessage):
            msg = children[0]
    leaves: list[EmailMessage] = []
    nested = False
    stack = [msg]
    while stack:
        part = stack.pop(0)
        if not part.is_multipart():
            leaves.append(part)
            continue
        for child in part.iter_parts():
            if child.get_content_type() == "multipart/signed":
                nested = True
                continue
            stack.append(child)  # type: ignore[arg-type]
    return leaves, nested
