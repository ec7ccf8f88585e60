"""Small real files for attachment tests, built here (no binary fixtures in the repo):
a PNG that any decoder opens, a baseline JPEG's marker structure, a one-page PDF with a
correct cross-reference table, and the things they are not (an executable, a broken PNG)."""

from __future__ import annotations

import base64
import struct
import zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int = 4, height: int = 3) -> bytes:
    """An RGB PNG: a reddish rectangle (a 'wound photo')."""
    rows = b"".join(b"\x00" + b"\xc0\x30\x30" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    """SOI, APP0 JFIF, DQT, SOF0 (8x8, one component), DHT, SOS, scan data, EOI."""

    def seg(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\x00" + bytes([1] * 64)
    sof0 = b"\x08" + struct.pack(">HH", 8, 8) + b"\x01" + b"\x01\x11\x00"
    dht = b"\x00" + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + seg(0xE0, app0) + seg(0xDB, dqt) + seg(0xC0, sof0) + seg(0xC4, dht) + seg(0xDA, sos)
        + b"\x00\x3f\x00"  # entropy-coded data
        + b"\xff\xd9"
    )  # fmt: skip


def pdf(text: str = "Brief van de specialist") -> bytes:
    """A one-page PDF whose startxref points at its xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def executable() -> bytes:
    """The start of a Windows executable (MZ header, PE signature), as a 'letter.pdf'."""
    return b"MZ\x90\x00" + b"\x00" * 56 + struct.pack("<I", 64) + b"PE\x00\x00" + b"\x00" * 200


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
