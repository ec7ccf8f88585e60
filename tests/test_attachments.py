"""Attachments are checked by content: PDF, JPEG and PNG that really parse, within the count
and size limits; anything else is a field error naming the attachment, never its name."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from securemail.form.attachments import check_attachments, parse_jpeg, parse_pdf, parse_png
from securemail.form.request import FormInvalidError
from tests.attachment_files import b64, executable, jpeg, pdf, png

LIMITS = {"max_bytes": 100_000, "max_count": 3}


def refused(raw: Any, **limits: int) -> list[tuple[str, str]]:
    with pytest.raises(FormInvalidError) as caught:
        check_attachments(raw, **{**LIMITS, **limits})
    return [(e.field, e.code) for e in caught.value.errors]


def test_pdf_jpeg_and_png_pass_with_neutral_names() -> None:
    raw = [
        {"filename": "Brief dr. Jansen over mw. De Vries.pdf", "data": b64(pdf())},
        {"data": b64(jpeg()), "content_type": "image/jpeg"},
        {"filename": "wond.PNG", "data": b64(png())},
    ]
    got = check_attachments(raw, **LIMITS)
    assert [(a.name, a.content_type) for a in got] == [
        ("bijlage-1.pdf", "application/pdf"),
        ("bijlage-2.jpg", "image/jpeg"),
        ("bijlage-3.png", "image/png"),
    ]
    assert got[0].data == pdf()
    assert "Jansen" not in repr(got)  # the sender's file name is not kept


def test_none_and_empty_mean_no_attachments() -> None:
    assert check_attachments(None, **LIMITS) == ()
    assert check_attachments([], **LIMITS) == ()


def test_executable_renamed_pdf_is_refused() -> None:
    assert refused([{"filename": "brief.pdf", "data": b64(executable())}]) == [
        ("attachments.0", "attachment.type")
    ]


def test_png_that_does_not_parse_is_refused() -> None:
    broken = bytearray(png())
    broken[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    assert refused([{"filename": "wond.png", "data": b64(bytes(broken))}]) == [
        ("attachments.0", "attachment.unreadable")
    ]
    truncated = png()[:-12]  # no IEND
    assert refused([{"data": b64(truncated)}]) == [("attachments.0", "attachment.unreadable")]


def test_magic_bytes_alone_do_not_make_a_file() -> None:
    assert not parse_png(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert not parse_jpeg(b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9")
    assert not parse_pdf(b"%PDF-1.4\n" + b"x" * 100)
    assert not parse_pdf(pdf().replace(b"startxref\n", b"startxref\n9"))  # offset past the end


def test_too_big_is_refused_before_decoding() -> None:
    big = png(200, 200)  # uncompressed rows would be 120 kB; compressed it is small
    ok = check_attachments([{"data": b64(big)}], **LIMITS)
    assert ok
    huge = b64(b"\x89PNG\r\n\x1a\n" + zlib.compress(b"x") * 1 + b"\x00" * 200_000)
    assert refused([{"data": huge}]) == [("attachments", "attachment.too_big")]
    # together too big, each fine
    each = b64(pdf("x" * 40_000))
    assert refused([{"data": each}, {"data": each}, {"data": each}]) == [
        ("attachments", "attachment.too_big")
    ]


def test_too_many_is_refused_without_looking_at_them() -> None:
    assert refused([{"data": "not even base64"}] * 4) == [("attachments", "attachment.too_many")]


def test_name_that_disagrees_with_the_content_is_refused() -> None:
    assert refused([{"filename": "foto.jpg", "data": b64(png())}]) == [
        ("attachments.0", "attachment.mismatch")
    ]
    assert refused([{"data": b64(pdf()), "content_type": "image/png"}]) == [
        ("attachments.0", "attachment.mismatch")
    ]


def test_malformed_entries_are_field_errors() -> None:
    assert refused("a string") == [("attachments", "attachment.invalid")]
    assert refused([{"data": "***"}, {"path": "/etc/passwd"}, 7]) == [
        ("attachments.0", "attachment.invalid"),
        ("attachments.1", "attachment.invalid"),
        ("attachments.2", "attachment.invalid"),
    ]


def test_every_problem_is_listed_at_once() -> None:
    raw = [{"data": b64(executable())}, {"data": b64(png())}, {"data": b64(png()[:30])}]
    assert refused(raw) == [
        ("attachments.0", "attachment.type"),
        ("attachments.2", "attachment.unreadable"),
    ]


def test_png_of_countless_tiny_chunks_is_refused() -> None:
    # A crafted file: 20,000 empty chunks make a slow walk, and no real PNG looks like it.
    import struct

    def chunk(kind: bytes) -> bytes:
        return struct.pack(">I", 0) + kind + struct.pack(">I", zlib.crc32(kind))

    real = png()
    crafted = real[:33] + chunk(b"tEXt") * 20_000 + real[33:]
    assert not parse_png(crafted)
    assert parse_png(real[:33] + chunk(b"tEXt") * 100 + real[33:])
