"""Retention and minimisation: content sealed at rest under a key apart from the database,
purged after [retention] content_days, metadata after metadata_days, each purge audited.

Real gateway (tests/loop_fixtures.py): real gpg, real sqlite files, real audit chain, a
real delivery worker against aiosmtpd with STARTTLS; the gateway's clock is moved by hand.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail import config, contentbox
from securemail.access import SYSTEM
from securemail.audit import integrity as audit_integrity
from securemail.cli import main as cli_main
from securemail.delivery import outbox
from securemail.errors import NotFoundError
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.home import open_services
from securemail.ops import retention
from securemail.secretbox import SecretBox
from tests.gateway import GP_PASSPHRASE, TEAM, deliver_all, example
from tests.loop_fixtures import Loop

NAME = "Ottoline Vreeswijk-Zandbergen"
INDICATION = "Ulcus cruris links na val in badkamer, dagelijkse wondzorg Vreeswijkprotocol"
ADDRESS = "Zandbergenhof 77"
ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}
SECRETS = (NAME, INDICATION, ADDRESS)


def distinctive() -> dict[str, Any]:
    data = example()
    data["patient"]["name"] = NAME
    data["patient"]["address"] = ADDRESS
    data["procedures"][0]["indication"] = INDICATION
    return data


def files_holding(home: Path, needles: tuple[str, ...]) -> list[str]:
    """Every regular file under home (the database, its -wal and -shm, gnupg/, keys/ ...)
    that contains one of the needles, as UTF-8 bytes."""
    found = []
    for path in sorted(home.rglob("*")):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue  # sockets of the gpg-agent, folders
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path.relative_to(home)}: {n[:12]}" for n in needles if n.encode() in data]
    return found


def db_files(svc: Any) -> list[Path]:
    db = svc.settings.db_path
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def audit_rows(svc: Any, code: str) -> list[dict[str, Any]]:
    return svc.store.read_sync(
        lambda db: list(db["audit_events"].rows_where("event_code = ?", [code], order_by="seq"))
    )


def verify_chain(svc: Any) -> None:
    keys = audit_integrity.trusted_keys(svc.settings.home)
    svc.store.read_sync(lambda db: audit_integrity.verify(db, keys))


def row_of(svc: Any, reference: str) -> dict[str, Any]:
    return svc.store.read_sync(lambda db: exchange.require_row(db, reference))


# -- content sealed at rest -------------------------------------------------------------------
async def test_sent_request_leaves_no_name_or_indication_in_the_database_files(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    # Right after sending: not in the database file, its WAL or its shared memory
    for path in db_files(svc):
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (path.name, secret)
    # ... but the GP, after login, reads it (opened through the one helper, audited)
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["document"]["patient"]["name"] == NAME
    assert not view["purged"]
    # The key sits apart from the database file, readable by its owner only
    key = svc.settings.content_key_path
    assert key == svc.settings.home / "keys" / "content.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() not in svc.settings.db_path.read_bytes()


async def test_tampered_or_moved_sealed_value_raises_a_clear_error(loop: Loop) -> None:
    svc = loop.gw.svc
    first = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    second = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    conn = sqlite3.connect(svc.settings.db_path)
    try:
        stored = conn.execute(
            "SELECT document FROM requests WHERE reference = ?", [second.reference]
        ).fetchone()[0]
        # Moved: the second request's sealed document copied into the first's row
        with conn:
            conn.execute(
                "UPDATE requests SET document = ? WHERE reference = ?", [stored, first.reference]
            )
        with pytest.raises(contentbox.ContentUnreadableError) as info:
            svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, first.reference))
        assert info.value.code == "retention.content_unreadable"
        assert "moved or altered" in info.value.reason
        assert NAME not in info.value.diagnostics()
        # Altered: one byte of the ciphertext flipped
        flipped = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
        with conn:
            conn.execute(
                "UPDATE requests SET document = ? WHERE reference = ?", [flipped, second.reference]
            )
        with pytest.raises(contentbox.ContentUnreadableError):
            svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, second.reference))
        # Plaintext slipped in: refused too, never shown as if it were sealed
        with conn:
            conn.execute(
                "UPDATE requests SET document = ? WHERE reference = ?", ["{}", second.reference]
            )
        with pytest.raises(contentbox.ContentUnreadableError):
            svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, second.reference))
    finally:
        conn.close()


async def test_missing_content_key_refuses_to_open_and_is_never_made_anew(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = loop.gw.svc
    await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    settings = svc.settings
    key = settings.content_key_path
    saved = key.read_bytes()
    key.unlink()
    contentbox.forget(settings)
    try:
        with pytest.raises(contentbox.ContentKeyMissingError) as info:
            open_services(settings)
        assert info.value.code == "retention.content_key_missing"
        assert "restore the key file" in info.value.reason
        assert not key.exists()  # never regenerated over sealed data
        # The server refuses to start, and check says why (one line each, no traceback)
        home = str(settings.home)
        assert cli_main(["serve", "--home", home, "--port", "0"]) == 1
        assert cli_main(["check", "--home", home]) == 1
        err = capsys.readouterr().err
        assert "retention.content_key_missing" in err and "Traceback" not in err
        assert "content key" in err and not key.exists()
        # Another key (say, a fresh install's) is refused as well: it does not open the data
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        with pytest.raises(contentbox.ContentUnreadableError):
            open_services(settings)
    finally:
        key.write_bytes(saved)
        contentbox.forget(settings)
        contentbox.load(settings)


def test_content_key_file_may_live_outside_the_home(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "SECUREMAIL_RETENTION_CONTENT_KEY_FILE": "$CREDENTIALS_DIRECTORY/content.key",
    }
    old = dict(os.environ)
    os.environ.update(env)  # expandvars reads the process environment, as systemd sets it
    try:
        settings = config.load(home, env=env)
        assert settings.content_key_path == creds / "content.key"
        box = contentbox.load(settings)
        assert (creds / "content.key").exists() and not (home / "keys").exists()
        sealed = box.seal("x", context=contentbox.context("asks", "reason", "ASK-1"))
        assert box.open(sealed, context=contentbox.context("asks", "reason", "ASK-1")) == "x"
    finally:
        os.environ.clear()
        os.environ.update(old)
        contentbox.forget(settings)


@given(
    text=st.text(max_size=300),
    key=st.text(min_size=1, max_size=20),
    other=st.text(min_size=1, max_size=20),
)
def test_sealing_round_trips_and_binds_its_place(text: str, key: str, other: str) -> None:
    box = SecretBox(b"k" * 32, error=contentbox.ContentUnreadableError, name="content.key")
    here = contentbox.context("requests", "document", key)
    sealed = box.seal(text, context=here)
    assert SecretBox.is_sealed(sealed)
    assert box.open(sealed, context=here) == text
    if text:
        assert text not in sealed[3:] or len(text) < 4
    elsewhere = [contentbox.context("requests", "answer", key)]
    if other != key:
        elsewhere.append(contentbox.context("requests", "document", other))
    for place in elsewhere:
        with pytest.raises(contentbox.ContentUnreadableError):
            box.open(sealed, context=place)


# -- the purge ----------------------------------------------------------------------------------
async def test_purge_removes_content_after_the_final_outcome_and_keeps_the_rest(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    home = svc.settings.home
    # Given an answered request for a patient with a distinctive name and indication,
    done = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(svc, loop.nurse_a, done.reference, ACCEPT)
    # one that stays open (the team has not answered),
    still_open = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    # and one answered later (final, but younger than content_days)
    loop.clock.advance(days=20)
    young = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(svc, loop.nurse_a, young.reference, ACCEPT)
    before = len(audit_rows(svc, "request.view")) + len(audit_rows(svc, "request.create"))
    # When the clock passes content_days after the first answer and the purge runs
    loop.clock.advance(days=11)
    dry = retention.purge(svc.store, svc.settings, now=svc.now(), dry_run=True)
    assert dry.request_content == 1 and len(audit_rows(svc, "retention.purge")) == 0
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    # Then the first request's content, and its sealed mail, are gone ...
    assert counts.request_content == 1
    assert counts.outbox_content >= 1  # its sealed message (and the older notices)
    assert counts.request_rows == 0 and counts.audit_rows == 0
    row = row_of(svc, done.reference)
    assert row["document"] == b"" and row["answer"] == "" and row["content_purged_at"]
    mime = svc.store.read_sync(lambda db: db.execute(
        "SELECT length(mime) FROM outbox WHERE reference = ? AND kind = 'request'",
        [done.reference]).fetchall())  # fmt: skip
    assert mime == [(0,)]
    # ... from every file under the home: the database, its WAL and shm, gnupg/, keys/
    assert files_holding(home, SECRETS) == []
    assert any(f.startswith("securemail.db") for f in files_holding(home, (done.reference,)))
    wal = Path(f"{svc.settings.db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # truncated: no older page copies
    # ... while the open and the younger request keep theirs
    for ref in (still_open.reference, young.reference):
        view = svc.store.write_sync(lambda db, r=ref: exchange.get_request(db, loop.gw.gp, r))
        assert view["document"]["patient"]["bsn"] == example()["patient"]["bsn"]
    # The purged request's page still shows its metadata, and says the content went
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, done.reference))
    assert view["purged"] and view["document"] is None and view["answer"] is None
    assert (view["state"], view["answer_status"], view["team"].address) == (
        "answered",
        "geaccepteerd",
        TEAM,
    )
    status = svc.store.read_sync(lambda db: exchange.status(db, done.reference))
    assert status["state"] == "answered" and status["answer_status"] == "geaccepteerd"
    assert status["content_purged_at"]
    listed = svc.store.read_sync(lambda db: exchange.list_requests(db, loop.gw.gp))
    assert {r["reference"] for r in listed} >= {done.reference, young.reference}
    # The audit rows keep their patient reference, and the chain still verifies
    creates = [r for r in audit_rows(svc, "request.create") if r["object_id"] == done.reference]
    assert creates and creates[0]["patient_id"] == example()["patient"]["bsn"]
    assert len(audit_rows(svc, "request.view")) + len(audit_rows(svc, "request.create")) > before
    verify_chain(svc)
    # The purge itself is audited, with counts and no patient data
    [purge_row] = audit_rows(svc, "retention.purge")
    assert purge_row["action"] == "D" and purge_row["patient_id"] == ""
    assert "request_content=1" in purge_row["outcome_detail"]
    for secret in (*SECRETS, example()["patient"]["bsn"]):
        assert secret not in json.dumps(purge_row)
    # A second run finds nothing and writes nothing
    again = retention.purge(svc.store, svc.settings, now=svc.now())
    assert again.total == 0
    assert len(audit_rows(svc, "retention.purge")) == 1


async def test_purged_open_request_refuses_answer_and_retry(loop: Loop) -> None:
    svc = loop.gw.svc
    # Given a request whose delivery was stopped (a final outcome: it never reached the team)
    sent = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    svc.store.write_sync(
        lambda db: outbox.stop(db, sent.reference, reason="test", actor=SYSTEM, now=loop.clock.ts())
    )
    assert row_of(svc, sent.reference)["state"] == "open"
    loop.clock.advance(days=31)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.request_content == 1
    # Then answering it refuses with a clear error, not a traceback
    with pytest.raises(contentbox.ContentPurgedError) as info:
        await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    assert info.value.code == "retention.content_purged" and info.value.http_status == 410
    # ... and so does an admin retry of its emptied message
    admin = SYSTEM
    with pytest.raises(contentbox.ContentPurgedError):
        svc.store.write_sync(
            lambda db: outbox.retry(db, sent.reference, admin, now=loop.clock.ts())
        )
    # A changed message's bytes are still refused by the trigger (only emptying is allowed)
    conn = sqlite3.connect(svc.settings.db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError), conn:
            conn.execute("UPDATE outbox SET mime = x'00' WHERE reference = ?", [sent.reference])
    finally:
        conn.close()


async def test_open_request_keeps_its_content_however_old(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    await deliver_all(svc)
    loop.clock.advance(days=400)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.request_content == 0
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["document"]["patient"]["name"] == NAME


async def test_metadata_goes_after_its_own_period_and_the_chain_still_verifies(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    loop.clock.advance(days=31)
    first = retention.purge(svc.store, svc.settings, now=svc.now())
    assert first.request_content == 1 and first.request_rows == 0
    loop.clock.advance(days=svc.settings.retention.metadata_days)
    second = retention.purge(svc.store, svc.settings, now=svc.now())
    assert (second.request_rows, second.hop_rows) == (1, 1)
    assert second.outbox_rows >= 2  # the request's message and the practice's notices
    with pytest.raises(NotFoundError):
        svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    # The audit trail still names the patient for its own period, and verifies
    creates = [r for r in audit_rows(svc, "request.create") if r["object_id"] == sent.reference]
    assert creates[0]["patient_id"] == example()["patient"]["bsn"]
    assert len(audit_rows(svc, "retention.purge")) == 2
    verify_chain(svc)
    # After [audit] retention_years the audit rows go too (audit_retention), verifiably
    loop.clock.advance(days=366 * svc.settings.audit.retention_years)
    third = retention.purge(svc.store, svc.settings, now=svc.now())
    assert third.audit_rows > 0
    assert [r for r in audit_rows(svc, "request.create") if r["object_id"] == sent.reference] == []
    verify_chain(svc)


async def test_purge_cli_prints_counts_only(loop: Loop, capsys: pytest.CaptureFixture[str]) -> None:
    svc = loop.gw.svc
    await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    home = str(svc.settings.home)
    assert cli_main(["purge", "--home", home, "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True and out["total"] == 0 and "request_content" in out
    assert cli_main(["purge", "--home", home]) == 0
    text = capsys.readouterr().out
    assert "nothing is past its retention period" in text
    assert NAME not in text


async def test_asks_are_sealed_and_purged_after_fulfilment(loop: Loop) -> None:
    from securemail.exchange import asks

    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, {
        "team_address": TEAM,
        "practice_code": "01234567", "patient.bsn": example()["patient"]["bsn"],
        "patient.name": NAME, "patient.birth_date": "1941-05-17", "procedure_code": "INJ_SC",
        "reason": INDICATION, "urgency": "regulier",
    })  # fmt: skip
    for path in db_files(svc):
        assert NAME.encode() not in path.read_bytes()
    ask = svc.store.write_sync(lambda db: asks.get_ask(db, loop.gw.gp, made.reference))
    assert (ask["patient_name"], ask["reason"]) == (NAME, INDICATION)
    await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE, ask=made.reference)
    loop.clock.advance(days=31)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.ask_content == 1
    ask = svc.store.write_sync(lambda db: asks.get_ask(db, loop.gw.gp, made.reference))
    assert ask["purged"] and ask["patient_name"] == "" and ask["reason"] == ""
    assert ask["state"] == "fulfilled"


async def test_purged_request_page_says_so_in_dutch_and_keeps_the_metadata(
    loop: Loop, aiohttp_server: Any
) -> None:
    import aiohttp

    from securemail.web import create_app
    from tests.e2e.webflow import csrf_of, login

    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, distinctive(), GP_PASSPHRASE)
    svc.store.write_sync(
        lambda db: outbox.stop(db, sent.reference, reason="test", actor=SYSTEM, now=loop.clock.ts())
    )
    loop.clock.advance(days=31)
    retention.purge(svc.store, svc.settings, now=svc.now())
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    site = str(server.make_url("")).rstrip("/")
    page_url = f"{site}/requests/{sent.reference}"
    jar = aiohttp.CookieJar
    async with (
        aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as gp,
        aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as nurse,
    ):
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(page_url) as r:
            page = await r.text()
        assert r.status == 200
        assert "De inhoud van dit verzoek is verwijderd: 30 dagen na de afronding" in page
        assert sent.reference in page and TEAM in page  # the metadata stays
        assert NAME not in page and INDICATION not in page
        # The nurse gets no answer form, and a posted answer is refused in Dutch
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(page_url) as r:
            page = await r.text()
        assert f'action="/requests/{sent.reference}/answer"' not in page
        data = {**{k: str(v) for k, v in ACCEPT.items()}, "csrf_token": csrf_of(page)}
        async with nurse.post(f"{page_url}/answer", data=data) as r:
            refused = await r.text()
        assert r.status == 410
        assert "bewaartermijn verwijderd" in refused and "Traceback" not in refused
    await server.close()


def test_migration_seals_existing_plaintext_in_one_go(tmp_path: Path) -> None:
    from securemail.exchange import asks
    from securemail.exchange import view as requestview
    from securemail.home import MIGRATIONS
    from securemail.region import directory
    from securemail.store import Store

    document = json.dumps({"patient": {"name": NAME}, "indication": INDICATION}).encode()
    answered = json.dumps({"status": "afgewezen", "reason": f"Geen plek voor {NAME}"})
    # Given a database from before content sealing, with plaintext content in every column
    store = Store(tmp_path / "securemail.db")
    try:

        def before(db: Any) -> None:
            for m in MIGRATIONS:
                m.apply(db, stop_before="0001_content_sealed")
            now = "2026-11-01T10:00:00.000Z"
            practice = directory.add_org(
                db, SYSTEM, code="01234567", kind="practice", name="P", now=now
            )
            directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="N", now=now)
            team = directory.add_team(
                db, SYSTEM, org_code="87654321", name="T", address="t@zorg.example", now=now
            )
            db.execute(
                "INSERT INTO users (username, name, role, org_id, password_hash, created_at) "
                "VALUES ('gp', 'G', 'gp', ?, 'x', ?)",
                [practice.id, now],
            )
            db["requests"].insert({
                "reference": "UVZ-2026-000001", "kind": "nieuw", "urgency": "regulier",
                "practice_org_id": practice.id, "team_id": team.id, "state": "answered",
                "patient_bsn": "999990123", "created_by": 1, "signer_fingerprint": "F" * 40,
                "recipient_fingerprints": "[]", "document": document, "message_id": "<a@b>",
                "answer": answered, "created_at": now, "updated_at": now,
            })  # fmt: skip
            db["request_hops"].insert({
                "reference": "UVZ-2026-000001", "team_id": team.id, "message_id": "<a@b>",
                "sent_at": now, "outcome": "afgewezen", "reason": f"Geen plek voor {NAME}",
            })  # fmt: skip
            db["asks"].insert({
                "reference": "ASK-2026-000001", "created_by": 1, "team_id": team.id,
                "practice_org_id": practice.id, "patient_bsn": "999990123",
                "patient_name": NAME, "patient_birth_date": "1941-05-17",
                "procedure_code": "INJ_SC", "reason": INDICATION, "urgency": "regulier",
                "due_at": now, "created_at": now,
            })  # fmt: skip

        store.write_sync(before)
        assert "securemail.retention:0001_content_sealed" in store.pending_migrations(MIGRATIONS)
        # When the migration runs
        store.migrate(MIGRATIONS)
        # Then no plaintext is left in the database file or its WAL ...
        for path in (tmp_path / "securemail.db", tmp_path / "securemail.db-wal"):
            if path.exists():
                data = path.read_bytes()
                assert NAME.encode() not in data and INDICATION.encode() not in data, path
        # ... and everything reads back as it was, through the one helper
        row = store.read_sync(lambda db: exchange.require_row(db, "UVZ-2026-000001"))
        assert store.read_sync(lambda db: requestview.document_bytes(db, row)) == document
        assert store.read_sync(lambda db: requestview.answer_of(db, row))["reason"].endswith(NAME)
        assert row["answer_status"] == "afgewezen"
        [hop] = store.read_sync(lambda db: requestview.hops(db, "UVZ-2026-000001"))
        assert hop["reason"] == f"Geen plek voor {NAME}"
        ask = store.read_sync(lambda db: asks._opened(db, next(db["asks"].rows_where("id = 1"))))
        assert (ask["patient_name"], ask["reason"]) == (NAME, INDICATION)
    finally:
        store.close()
        contentbox.forget(config.load(tmp_path))


async def test_answered_request_may_still_be_changed_after_its_content_went(loop: Loop) -> None:
    svc = loop.gw.svc
    first = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(svc, loop.nurse_a, first.reference, ACCEPT)
    loop.clock.advance(days=31)
    assert retention.purge(svc.store, svc.settings, now=svc.now()).request_content == 1
    # The supersedes check needs metadata only (practice, patient, team), not the content
    change = example()
    change.update(kind="verlenging", supersedes=first.reference)
    second = await exchange.send(svc, loop.gw.gp, change, GP_PASSPHRASE)
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, second.reference))
    assert [c["reference"] for c in view["chain"]] == [first.reference, second.reference]
    assert row_of(svc, first.reference)["state"] == "superseded"


async def test_attachments_are_sealed_at_rest_and_purged_with_the_request(loop: Loop) -> None:
    from tests.attachment_files import b64, pdf

    svc = loop.gw.svc
    home = svc.settings.home
    # Given an answered request with a letter whose text would identify the patient
    data = distinctive()
    data["attachments"] = [{"filename": "brief.pdf", "data": b64(pdf(NAME))}]
    done = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(svc, loop.nurse_a, done.reference, ACCEPT)
    # Then the gateway keeps it sealed: the letter's text is in no file under the home
    stored = svc.store.read_sync(
        lambda db: db.execute("SELECT name, data FROM request_attachments").fetchall()
    )
    assert [(n, d[:3]) for n, d in stored] == [("bijlage-1.pdf", "v1:")]
    assert files_holding(home, (NAME,)) == []
    # When the purge runs after content_days, the attachment goes with the content
    loop.clock.advance(days=31)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.request_content == 1
    left = svc.store.read_sync(
        lambda db: db.execute("SELECT count(*) FROM request_attachments").fetchone()[0]
    )
    assert left == 0


async def test_a_nurses_reply_is_emptied_then_deleted_with_its_request(loop: Loop) -> None:
    from securemail.inbound import replies
    from tests.e2e.test_replies import mail, nurse_armor

    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await replies.accept(svc, mail(await nurse_armor(loop.gw, "wondzorg gestart"), sent.reference))
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    loop.clock.advance(days=31)
    retention.purge(svc.store, svc.settings, now=svc.now())
    bodies = svc.store.read_sync(lambda db: [r["body"] for r in db["replies"].rows])
    assert bodies == [""]
    loop.clock.advance(days=svc.settings.retention.metadata_days)
    retention.purge(svc.store, svc.settings, now=svc.now())
    assert svc.store.read_sync(lambda db: db["replies"].count) == 0
