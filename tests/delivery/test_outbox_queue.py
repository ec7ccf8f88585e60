"""The outbox: what it accepts (sealed PGP/MIME or a notice, with its audit row, in one
transaction), what it refuses, its admin actions and the notices it carries. Real sqlite
files and real gpg output; see tests/delivery/test_worker.py for the worker."""

from __future__ import annotations

import sqlite3
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from securemail.config import Settings
from securemail.delivery import outbox
from securemail.delivery.outbox import NotSealedError
from securemail.delivery.worker import Worker
from securemail.errors import (
    AccessDeniedError,
    ConflictError,
    InputError,
    NotFoundError,
    SecuremailError,
)
from securemail.message.notify import Notice, make_notice, notice_delivered, notice_failed
from securemail.store import Store
from tests.delivery.helpers import (
    ADMIN,
    GP,
    all_rows,
    audit_rows,
    codes,
    enqueue_with_audit,
    settings_for,
)
from tests.smtp_fixtures import (
    GATEWAY_ADDRESS,
    MARKER,
    PgpForTests,
    Relay,
    make_sealed_for_tests,
    pgp_mime,
)


# -- schema and enqueue -----------------------------------------------------------------------
def test_migration_creates_outbox_with_claim_indexes(store: Store) -> None:
    def schema(db: Any) -> tuple[set[str], set[str]]:
        cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)").fetchall()}
        idx = {r[1] for r in db.execute("PRAGMA index_list(outbox)").fetchall()}
        return cols, idx

    cols, idx = store.read_sync(schema)
    assert {
        "reference",
        "kind",
        "message_id",
        "mime",
        "status",
        "attempts",
        "next_attempt_at",
        "lease_owner",
        "lease_until",
        "last_error",
        "relay_reply",
        "final_at",
        "stop_reason",
    } <= cols
    assert {"outbox_due", "outbox_lease", "outbox_reference"} <= idx


@pytest.mark.parametrize("thing", [b"raw bytes", "text", {"mime": b""}, EmailMessage()])
def test_enqueue_refuses_anything_not_sealed(store: Store, thing: Any) -> None:
    with pytest.raises(TypeError):
        store.write_sync(lambda db: outbox.enqueue(db, thing, actor=GP, now=time.time()))
    assert all_rows(store) == []


def _armor_of(text: str, header: str = "") -> str:
    import base64

    body = base64.b64encode(text.encode()).decode()
    return f"-----BEGIN PGP MESSAGE-----\n{header}\n{body}\n-----END PGP MESSAGE-----\n"


def _variants(pgp: PgpForTests, mid: str) -> dict[str, bytes]:
    good = pgp_mime(pgp.armor, message_id=mid, sender=GATEWAY_ADDRESS, recipient="t@zorg.test")
    plain = EmailMessage()
    plain["Message-ID"] = mid
    plain.set_content(MARKER)
    return {
        "text/plain": plain.as_bytes(),
        "base64 plaintext dressed as armor": pgp_mime(
            _armor_of(MARKER), message_id=mid, sender=GATEWAY_ADDRESS, recipient="t@zorg.test"
        ),
        "armor Comment header": pgp_mime(
            pgp.armor.replace("\n\n", f"\nComment: {MARKER}\n\n", 1),
            message_id=mid,
            sender=GATEWAY_ADDRESS,
            recipient="t@zorg.test",
        ),
        "preamble text": good.replace(b"\n\n--=", f"\n\n{MARKER}\n--=".encode(), 1),
        "wrong protocol": good.replace(b'application/pgp-encrypted"', b'application/x"', 1),
        "multipart/mixed": good.replace(b"multipart/encrypted", b"multipart/mixed", 1),
        "truncated ciphertext": pgp_mime(
            "\n".join(pgp.armor.splitlines()[:2] + pgp.armor.splitlines()[-1:]) + "\n",
            message_id=mid,
            sender=GATEWAY_ADDRESS,
            recipient="t@zorg.test",
        ),
    }


def test_enqueue_refuses_sealed_message_that_is_not_pgp_mime(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    mid = "<fixed@securemail.test>"
    for name, mime in _variants(outbox_pgp, mid).items():
        sealed = make_sealed_for_tests(outbox_pgp, mime=mime, message_id=mid)
        with pytest.raises(NotSealedError) as err:
            store.write_sync(lambda db, s=sealed: enqueue_with_audit(db, s, None))
        assert MARKER not in str(err.value), name
    assert all_rows(store) == []
    assert audit_rows(store) == []  # the caller's audit row rolled back with it


def test_sealcheck_accepts_real_gpg_output(outbox_pgp: PgpForTests) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)
    outbox._require_pgp_mime(sealed.mime)


def test_sealcheck_remembers_passed_bytes_but_refuses_one_changed_byte(
    outbox_pgp: PgpForTests,
) -> None:
    # Given bytes that passed (and are now remembered by their digest)
    sealed = make_sealed_for_tests(outbox_pgp)
    outbox._require_pgp_mime(sealed.mime)
    outbox._require_pgp_mime(sealed.mime)
    # When the same message claims another type, it is checked in full, and refused
    tampered = sealed.mime.replace(
        b"Content-Type: multipart/encrypted", b"Content-Type: text/plain", 1
    )
    assert tampered != sealed.mime
    with pytest.raises(NotSealedError):
        outbox._require_pgp_mime(tampered)


@hsettings(deadline=None)  # parsing speed is not the point; no flakes on a busy machine
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1))
def test_sealcheck_refuses_any_ascii_text_as_armor(text: str) -> None:
    mime = pgp_mime(
        _armor_of(text), message_id="<x@y.test>", sender=GATEWAY_ADDRESS, recipient="t@zorg.test"
    )
    with pytest.raises(NotSealedError):
        outbox._require_pgp_mime(mime)


def test_enqueue_refuses_message_id_differing_from_header(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    mime = make_sealed_for_tests(outbox_pgp, message_id="<a@securemail.test>").mime
    sealed = make_sealed_for_tests(outbox_pgp, mime=mime, message_id="<b@securemail.test>")
    with pytest.raises(NotSealedError):
        store.write_sync(lambda db: outbox.enqueue(db, sealed, actor=GP, now=time.time()))


def test_enqueue_same_message_twice_is_a_conflict(store: Store, outbox_pgp: PgpForTests) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)
    store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    with pytest.raises(ConflictError):
        store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    assert len(all_rows(store)) == 1
    assert codes(store) == ["request.send"]


def test_enqueue_commits_with_callers_audit_row_or_not_at_all(
    store: Store, outbox_pgp: PgpForTests
) -> None:
    sealed = make_sealed_for_tests(outbox_pgp)

    def failing(db: Any) -> None:
        enqueue_with_audit(db, sealed, None)
        raise SecuremailError("the caller failed after enqueue")

    with pytest.raises(SecuremailError):
        store.write_sync(failing)
    assert all_rows(store) == [] and audit_rows(store) == []
    store.write_sync(lambda db: enqueue_with_audit(db, sealed, None))
    assert [r["status"] for r in all_rows(store)] == ["queued"]
    assert codes(store) == ["request.send"]


def test_outbox_bytes_cannot_change_once_queued(store: Store, outbox_pgp: PgpForTests) -> None:
    store.write_sync(lambda db: enqueue_with_audit(db, make_sealed_for_tests(outbox_pgp), None))
    with pytest.raises(sqlite3.IntegrityError, match="never changes"):
        store.write_sync(lambda db: db.execute("UPDATE outbox SET mime = ?", [MARKER.encode()]))


# -- admin ------------------------------------------------------------------------------------
async def test_admin_cancel_retry_and_status(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, outbox_pgp: PgpForTests, store: Store
) -> None:
    a, b = (make_sealed_for_tests(outbox_pgp, reference=f"UVZ-2026-00000{i}") for i in (1, 2))
    store.write_sync(lambda db: [enqueue_with_audit(db, s, None) for s in (a, b)])
    worker = Worker(settings_for(tmp_path, smtp_server, relay_cafile), store)

    # cancel: a queued request never leaves
    assert store.write_sync(lambda db: outbox.cancel(db, a.reference, ADMIN, now=time.time())) == [
        1
    ]
    with pytest.raises(ConflictError):
        store.write_sync(lambda db: outbox.cancel(db, a.reference, ADMIN, now=time.time()))
    # retry: a failed request goes again, same bytes and Message-ID
    smtp_server.handler.replies.append("554 5.6.0 Message refused")
    assert await worker.run_once() == 1
    assert [r["status"] for r in all_rows(store)] == ["cancelled", "failed"]
    with pytest.raises(AccessDeniedError):
        store.write_sync(lambda db: outbox.retry(db, b.reference, GP, now=time.time()))
    assert store.write_sync(lambda db: outbox.retry(db, b.reference, ADMIN, now=time.time())) == [2]
    assert await worker.run_once() == 1

    assert [r["status"] for r in all_rows(store)] == ["cancelled", "sent"]
    sent = smtp_server.handler.snapshot()
    assert [r.message_id for r in sent] == [b.message_id] * 2 and sent[0].content == sent[1].content
    (st_b,) = store.read_sync(lambda db: outbox.status(db, b.reference))
    assert st_b["status"] == "sent" and st_b["attempts"] == 2
    assert st_b["relay_reply"].startswith("250") and st_b["last_error"] == ""
    assert st_b["queued_at"].endswith("Z") and st_b["final_at"] and st_b["next_attempt_at"] is None
    assert "mime" not in st_b
    assert [r["reference"] for r in store.read_sync(lambda db: outbox.list_rows(db, "sent"))] == [
        b.reference
    ]
    with pytest.raises(NotFoundError):
        store.read_sync(lambda db: outbox.status(db, "UVZ-2026-999999"))
    assert [c for c in codes(store) if c.startswith("outbox.")] == ["outbox.cancel", "outbox.retry"]


# -- notices ----------------------------------------------------------------------------------
def test_notice_carries_reference_and_link_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path).replace(gateway={"base_url": "https://gateway.test/"})
    n = notice_failed("UVZ-2026-000123", "praktijk@huisarts.test", "smtp.rejected", settings)
    msg = message_from_bytes(n.mime, policy=policy.default)
    assert msg["Subject"] == "securemail: UVZ-2026-000123 niet afgeleverd"
    assert msg.get_content_type() == "text/plain" and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "https://gateway.test/requests/UVZ-2026-000123" in body
    assert "weigerde" in body and "(smtp.rejected)" in body
    assert n.message_id == msg["Message-ID"] and n.recipient == "praktijk@huisarts.test"


@pytest.mark.parametrize(
    ("reference", "to", "why"),
    [
        ("Jansen", "p@huisarts.test", "smtp.rejected"),
        ("123456782", "p@huisarts.test", "smtp.rejected"),
        ("UVZ-2026-000123 Jansen", "p@huisarts.test", "smtp.rejected"),
        ("UVZ-2026-000123", "Jansen <p@huisarts.test>", "smtp.rejected"),
        ("UVZ-2026-000123", "p@huisarts.test", "Jansen weigerde"),
    ],
)
def test_notice_refuses_anything_but_reference_address_and_code(
    tmp_path: Path, reference: str, to: str, why: str
) -> None:
    with pytest.raises(InputError):
        notice_failed(reference, to, why, Settings(home=tmp_path))


def test_notice_cannot_be_built_outside_notify(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Notice("delivered", "UVZ-2026-000123", "a@b.test", "c@d.test", "<x@y>", b"")
    with pytest.raises(InputError):
        make_notice("anything", "UVZ-2026-000123", "a@b.test", Settings(home=tmp_path))


async def test_notice_is_queued_and_delivered_like_a_request(
    tmp_path: Path, smtp_server: Relay, relay_cafile: str, store: Store
) -> None:
    settings = settings_for(tmp_path, smtp_server, relay_cafile)
    n = notice_delivered("UVZ-2026-000123", "praktijk@huisarts.test", settings)
    await store.write(lambda db: enqueue_with_audit(db, n, None))
    assert await Worker(settings, store).run_once() == 1
    (got,) = smtp_server.handler.snapshot()
    assert got.message_id == n.message_id and b"UVZ-2026-000123" in got.content
    assert codes(store) == ["notice.send", "notice.deliver"]
