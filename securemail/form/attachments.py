"""Attachments of a request (a specialist's letter, a medication overview, a wound photo):
checked by their content, never by their name.

Owns what a submission may attach: PDF, JPEG and PNG only, each recognised by its magic
bytes *and* a real parse of its structure (PNG: signature, an IHDR chunk with a good CRC
and sane dimensions, chunks that fit, IEND last; JPEG: SOI, segments that fit up to a
start-of-frame with dimensions, EOI; PDF: the header, ``startxref`` with an offset inside
the file, ``%%EOF``), a count limit and a size limit per message. A claimed name or type
that disagrees with the content is refused too. What travels gets a neutral inner name
(``bijlage-1.pdf``); the sender's file name is read only to compare its extension and is
never stored, sent or logged.

Invariant: ``check_attachments`` refuses before it decodes anything larger than the
limit, looks at no more entries than the count limit, and walks a file's structure in
time linear in its (bounded) size; every refusal is a FieldError under
``attachments.N`` with a Dutch and an English text naming no entered value.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from securemail.form.fields import FieldError
from securemail.form.request import FormInvalidError

#: content type -> the extension of the neutral inner name
TYPES = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
LABELS = {
    "application/pdf": "PDF-document",
    "image/jpeg": "JPEG-foto",
    "image/png": "PNG-afbeelding",
}
_EXTENSIONS = {
    "pdf": "application/pdf",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
}
_MAX_SIDE = 65535  # pixels; larger is not a wound photo but a decompression bomb
_PDF_TAIL = 1024  # startxref and %%EOF must be this close to the end
#: A real PNG has a few chunks (encoders write 8-64 kB IDAT chunks); more is a crafted file
#: that would make the walk slow (12 s for 800,000 empty chunks in 10 MB), so it is refused.
_PNG_MAX_CHUNKS = 10_000

MESSAGES = {
    "attachment.too_many": (
        "Hoogstens {max_count} bijlagen per verzoek.",
        "At most {max_count} attachments per request.",
    ),
    "attachment.too_big": (
        "De bijlagen zijn samen te groot: hoogstens {max_mb} MB per verzoek.",
        "The attachments are too big together: at most {max_mb} MB per request.",
    ),
    "attachment.invalid": (
        "Deze bijlage is niet goed meegestuurd (verwacht: de inhoud in base64).",
        "This attachment is malformed (expected an object with base64 data).",
    ),
    "attachment.type": (
        "Alleen PDF, JPEG en PNG zijn toegestaan; dit bestand is geen van drieën.",
        "Only PDF, JPEG and PNG are allowed; this file is none of them.",
    ),
    "attachment.mismatch": (
        "De bestandsnaam past niet bij de inhoud van het bestand.",
        "The file name's extension does not match the file's content.",
    ),
    "attachment.unreadable": (
        "Dit bestand is beschadigd of onvolledig en kan niet worden gelezen.",
        "The file is damaged or incomplete and cannot be read.",
    ),
}


@dataclass(frozen=True, slots=True)
class Attachment:
    """A checked attachment: its neutral inner name, its type from its content, its bytes."""

    name: str
    content_type: str
    data: bytes

    @property
    def label(self) -> str:
        """How the renderings list it: "bijlage-1.pdf (PDF-document, 120 kB)"."""
        return f"{self.name} ({LABELS[self.content_type]}, {max(1, len(self.data) // 1024)} kB)"


def _error(path: str, code: str, **params: object) -> FieldError:
    nl, en = MESSAGES[code]
    return FieldError(path, code, nl.format(**params), en.format(**params))


def check_attachments(raw: Any, *, max_bytes: int, max_count: int) -> tuple[Attachment, ...]:
    """The checked attachments of a submission's ``attachments`` list (absent: none).
    Raises FormInvalidError listing every problem; nothing is kept of a refused list."""
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list):
        raise FormInvalidError([_error("attachments", "attachment.invalid")])
    if len(raw) > max_count:
        raise FormInvalidError([_error("attachments", "attachment.too_many", max_count=max_count)])
    too_big = _error("attachments", "attachment.too_big", max_mb=round(max_bytes / 1_000_000, 1))
    # base64 is 4 characters per 3 bytes: refuse by the encoded length, before decoding
    encoded = sum(
        len(a.get("data", ""))
        for a in raw
        if isinstance(a, dict) and isinstance(a.get("data"), str)
    )
    if encoded > (max_bytes + 2) // 3 * 4 + 4 * len(raw):
        raise FormInvalidError([too_big])
    errors: list[FieldError] = []
    out: list[Attachment] = []
    for i, item in enumerate(raw):
        path = f"attachments.{i}"
        data = _decode(item)
        if data is None:
            errors.append(_error(path, "attachment.invalid"))
            continue
        kind = sniff(data)
        if kind is None:
            errors.append(_error(path, "attachment.type"))
            continue
        if not PARSERS[kind](data):
            errors.append(_error(path, "attachment.unreadable"))
            continue
        claimed = _claimed_type(item)
        if claimed is not None and claimed != kind:
            errors.append(_error(path, "attachment.mismatch"))
            continue
        out.append(Attachment(f"bijlage-{i + 1}.{TYPES[kind]}", kind, data))
    if not errors and sum(len(a.data) for a in out) > max_bytes:
        errors.append(too_big)
    if errors:
        raise FormInvalidError(errors)
    return tuple(out)


def _decode(item: Any) -> bytes | None:
    if not isinstance(item, dict) or set(item) - {"data", "filename", "content_type"}:
        return None
    data = item.get("data")
    if not isinstance(data, str) or not data:
        return None
    try:
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _claimed_type(item: dict[str, Any]) -> str | None:
    """What the sender says it is (extension of ``filename``, or ``content_type``); None if
    nothing is claimed. Only compared, never kept."""
    declared = item.get("content_type")
    if isinstance(declared, str) and declared:
        return declared.strip().lower() if declared.strip().lower() in TYPES else "?"
    name = item.get("filename")
    if isinstance(name, str) and "." in name:
        return _EXTENSIONS.get(name.rsplit(".", 1)[1].strip().lower()[:8], "?")
    return None


def sniff(data: bytes) -> str | None:
    """The type the magic bytes say, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def parse_png(data: bytes) -> bool:
    """Signature, IHDR first (13 bytes, CRC good, sane size and depth), every chunk fits
    with a good CRC, IEND last."""
    pos, first, end, count = 8, True, False, 0
    while pos + 12 <= len(data) and count < _PNG_MAX_CHUNKS:
        count += 1
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body_end = pos + 8 + length
        if body_end + 4 > len(data) or not kind.isalpha():
            return False
        (crc,) = struct.unpack(">I", data[body_end : body_end + 4])
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            return False
        if first and (kind != b"IHDR" or length != 13 or not _good_ihdr(data[pos + 8 : body_end])):
            return False
        first, pos = False, body_end + 4
        if kind == b"IEND":
            end = True
            break
    return end and not first and pos == len(data)


def _good_ihdr(body: bytes) -> bool:
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    allowed = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
    return 0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE and depth in allowed.get(colour, ())


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def parse_jpeg(data: bytes) -> bool:
    """SOI, marker segments that fit up to the scan, a start-of-frame with dimensions
    before it, and EOI at the end."""
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return False
    pos, frame = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            return False
        if marker in _SOF:
            if length < 8:
                return False
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            frame = 0 < height <= _MAX_SIDE and 0 < width <= _MAX_SIDE
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            return frame
        pos += 2 + length
    return False


_STARTXREF = re.compile(rb"startxref\s+([0-9]{1,10})\s+%%EOF\s*$")


def parse_pdf(data: bytes) -> bool:
    """A ``%PDF-1.x``/``%PDF-2.0`` header, and a trailer: ``startxref`` with an offset
    inside the file pointing at ``xref`` or an object, then ``%%EOF``."""
    if not re.match(rb"%PDF-(1\.[0-7]|2\.0)[\r\n]", data[:10]):
        return False
    found = _STARTXREF.search(data[-_PDF_TAIL:])
    if found is None:
        return False
    offset = int(found.group(1))
    if not 8 < offset < len(data):
        return False
    at = data[offset : offset + 32]
    return at.startswith(b"xref") or re.match(rb"[0-9]+\s+[0-9]+\s+obj", at) is not None


PARSERS = {"image/png": parse_png, "image/jpeg": parse_jpeg, "application/pdf": parse_pdf}


def labels(attachments: Sequence[Attachment]) -> tuple[str, ...]:
    return tuple(a.label for a in attachments)
