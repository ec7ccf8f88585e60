"""The reply listener's answers over a real SMTP session (STARTTLS, aiosmtpd on 127.0.0.1):

- a reply over ``[inbound] max_bytes`` gets 552 and leaves nothing behind;
- when the gateway cannot store now (the disk is full), the sender gets 451 (try again), not
  a 5xx that drops the reply, nothing is half-stored, and the same reply sent again once
  there is room is taken;
- nothing about the patient (BSN, name, the reply's words) is in any SMTP reply text or any
  log line (DEBUG included, aiosmtpd's own), whatever the listener answered;
- gpg failing on the gateway's side while decrypting (gpg crashes, its agent cannot start)
  is 451 with nothing stored, an English log line and a failed gpg health row, and the same
  reply is taken once gpg works again; a reply encrypted to another key stays 550.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from securemail.ops import health
from tests.conftest import kill_gpg_agent
from tests.e2e.test_replies import (
    REPLY_TO,
    TEXT,
    counts,
    deliver,
    files,
    listening,
    mail,
    nurse_armor,
    sent_request,
)
from tests.gateway import (
    EXAMPLE,
    Gateway,
    build_gateway,
    close_gateway,
    gpg_cli,
    relay_settings,
)

BSN, NAME = EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"]
SMALL = 16_384  # [inbound] max_bytes for these tests


@pytest.fixture
async def small_inbound(gw: Gateway, tls_ca: trustme.CA, tmp_path: Path) -> AsyncIterator[int]:
    async with listening(gw, tls_ca, tmp_path, max_bytes=SMALL) as port:
        yield port


def disk_full(gw: Gateway, full: bool) -> None:
    """The database cannot grow by a page (SQLITE_FULL, as on a full filesystem); see
    tests/test_disk_full.py."""
    store = gw.svc.store
    with store._lock:
        conn = store._writer_conn
        if not full:
            conn.execute("PRAGMA max_page_count = 1073741824")
            conn.execute("DROP TABLE IF EXISTS test_filler")
            return
        # the free pages a delete left are taken first, so that the next page is a new one
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("CREATE TABLE test_filler (b BLOB)")
        conn.execute("INSERT INTO test_filler VALUES (zeroblob(?))", [(free + 1) * size])
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")


def answer_text(result: object) -> str:
    if isinstance(result, aiosmtplib.SMTPResponseException):
        return f"{result.code} {result.message}"
    assert isinstance(result, aiosmtplib.SMTPResponse)
    return f"{result.code} {result.message}"


def code(result: aiosmtplib.SMTPResponse | Exception) -> int:
    assert isinstance(result, aiosmtplib.SMTPResponse | aiosmtplib.SMTPResponseException), result
    return result.code


def assert_patient_free(*texts: str) -> None:
    for text in texts:
        for marker in (BSN, NAME, "wondzorg", "Mevrouw is vandaag gezien"):
            assert marker not in text, f"{marker!r} in {text!r}"


async def test_a_reply_over_max_bytes_gets_552_and_nothing_is_kept(
    gw: Gateway, small_inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    big = await nurse_armor(gw, TEXT + "\n" + os.urandom(SMALL).hex())  # incompressible
    raw = mail(big, reference, mid)
    assert len(raw) > SMALL
    before, before_files = counts(gw), files(gw.home)
    result = await deliver(small_inbound, relay_cafile, raw)
    assert isinstance(result, aiosmtplib.SMTPResponseException), result
    assert result.code == 552
    assert counts(gw) == before
    assert files(gw.home) == before_files
    # the limit is the listener's only: the same reply under it is taken
    small = await deliver(
        small_inbound, relay_cafile, mail(await nurse_armor(gw, TEXT), reference, mid)
    )
    assert code(small) == 250, small


async def test_a_full_disk_gets_451_nothing_half_stored_and_the_retry_is_taken(
    gw: Gateway, small_inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    # a reply of some pages (its sealed text needs new pages, which a full disk has not)
    raw = mail(await nurse_armor(gw, TEXT + "\n" + os.urandom(2500).hex()), reference, mid)
    assert len(raw) < SMALL
    before = counts(gw)
    disk_full(gw, True)
    try:
        result = await deliver(small_inbound, relay_cafile, raw)
    finally:
        disk_full(gw, False)
    assert isinstance(result, aiosmtplib.SMTPResponseException), result
    assert result.code == 451  # transient: the sender's server keeps it and tries again
    assert "probeer het later opnieuw" in result.message and "try again later" in result.message
    assert counts(gw) == before  # no reply row, no audit row, no notice: one write or none
    again = await deliver(small_inbound, relay_cafile, raw)
    assert code(again) == 250, again
    assert counts(gw)[:2] == (before[0] + 1, before[1] + 1)


async def test_no_smtp_answer_and_no_log_line_names_the_patient(
    gw: Gateway, small_inbound: int, relay_cafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    reference, mid = await sent_request(gw)
    caplog.set_level(logging.DEBUG)
    clear = f"Patient {NAME}, BSN {BSN}: {TEXT}"
    answers = [
        # plaintext (the patient in the clear, refused 550)
        await deliver(small_inbound, relay_cafile, mail(clear, reference, mid)),
        # unsigned (550)
        await deliver(
            small_inbound,
            relay_cafile,
            mail(await nurse_armor(gw, clear, sign_as=None), reference, mid),
        ),
        # too big, in the clear (552)
        await deliver(
            small_inbound,
            relay_cafile,
            mail(clear + "\n" + os.urandom(SMALL).hex(), reference, mid),
        ),
    ]
    disk_full(gw, True)
    try:  # 451 (a reply of some pages: the full disk has none for it)
        big = await nurse_armor(gw, clear + "\n" + os.urandom(2500).hex())
        answers.append(await deliver(small_inbound, relay_cafile, mail(big, reference, mid)))
    finally:
        disk_full(gw, False)
    # taken (250)
    answers.append(
        await deliver(
            small_inbound, relay_cafile, mail(await nurse_armor(gw, clear), reference, mid)
        )
    )
    codes = [code(a) for a in answers]
    assert codes == [550, 550, 552, 451, 250]
    assert_patient_free(*(answer_text(a) for a in answers))
    assert_patient_free(caplog.text, *(r.getMessage() for r in caplog.records))
    assert reference in caplog.text  # the log says which request, by reference only


async def test_the_directory_publishes_the_gateways_key_and_a_reply_made_with_it_is_taken(
    gw: Gateway, small_inbound: int, relay_cafile: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    """The key a nurse's client needs for a reply, from the directory page she can open."""
    from securemail.web import create_app
    from tests.e2e.test_web_flow import gp_login
    from tests.e2e.webflow import login

    reference, mid = await sent_request(gw)
    client = await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))
    await login(client, "", gp_login(gw))
    async with client.get("/directory/gp-keys") as r:
        page = await r.text()
    assert r.status == 200
    assert gw.svc.settings.gateway.reply_to() in page and "/directory/gateway.asc" in page
    async with client.get("/directory/gateway.asc") as r:
        key = await r.read()
    assert r.status == 200 and key.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    fresh = tmp_path / "fresh-gnupg"  # a client that knows the gateway only from this file
    fresh.mkdir(mode=0o700)
    gpg_cli(fresh, "--import", stdin=key)
    assert REPLY_TO in gpg_cli(fresh, "--with-colons", "--list-keys").decode()
    kill_gpg_agent(fresh)
    gpg_cli(gw.nurse_home, "--import", stdin=key)
    armored = gpg_cli(
        gw.nurse_home, "--trust-model", "always", "--armor", "--sign", "-u",
        "nurse1@zorg-noord.example", "--encrypt", "-r", REPLY_TO, stdin=TEXT.encode(),
    ).decode()  # fmt: skip
    result = await deliver(small_inbound, relay_cafile, mail(armored, reference, mid))
    assert code(result) == 250, result


# -- gpg failing on our side is temporary; "not for our key" is not ----------------------------


def crash_on_decrypt(bindir: Path, broken: Path) -> str:
    """A gpg that, while ``broken`` exists, dies of SIGSEGV on every --decrypt (real gpg
    otherwise): a crashing gpg, no status, no exit code."""
    bindir.mkdir()
    script = bindir / "gpg"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--decrypt*) if [ -e {broken} ]; then kill -SEGV $$; fi;; esac\n'
        'exec gpg "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


@pytest.fixture
async def crashing_gw(
    team_member_keys: dict[str, str], smtp_server: Any, relay_cafile: str, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, Path]]:
    """The ``gw`` gateway, on a gpg that crashes decrypting while the returned file exists."""
    broken = tmp_path / "gpg-broken"
    g = await build_gateway(
        team_keys=team_member_keys,
        smtp=relay_settings(smtp_server, relay_cafile),
        replace={"gpg": {"binary": crash_on_decrypt(tmp_path / "bin", broken)}},
    )
    yield g, broken
    close_gateway(g)


def no_agent(gw: Gateway, broken: bool) -> None:
    """gpg cannot start its agent in the gateway's home (it then says NO_SECKEY for the
    gateway's own key, as for a stranger's): the running agent is stopped as well."""
    conf = gw.svc.keyring.homedir / "gpg.conf"
    lines = [x for x in conf.read_text().splitlines(keepends=True) if "agent-program" not in x]
    conf.write_text("".join(lines) + ("agent-program /bin/false\n" if broken else ""))
    kill_gpg_agent(gw.svc.keyring.homedir)


async def assert_451_until_mended(
    gw: Gateway,
    port: int,
    cafile: str,
    caplog: pytest.LogCaptureFixture,
    fault: tuple[Callable[[], object], Callable[[], object]],
    health_says: str,
) -> None:
    """A request sent, a reply to it made; then ``fault`` (break, mend) around its delivery:
    451 and nothing stored while broken, the same reply taken once mended."""
    breaks, mend = fault
    reference, mid = await sent_request(gw)
    raw = mail(await nurse_armor(gw, TEXT), reference, mid)
    before, before_files = counts(gw), files(gw.home)
    breaks()
    caplog.set_level(logging.INFO)
    result = await deliver(port, cafile, raw)
    assert isinstance(result, aiosmtplib.SMTPResponseException), result
    assert result.code == 451, result  # ours to fix: the sender's server keeps it, tries again
    assert "try again later" in result.message
    assert counts(gw) == before and files(gw.home) == before_files  # nothing stored
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("gpg failed (ours, temporary)" in e for e in errors), errors
    assert_patient_free(caplog.text)
    gpg_row = await health.check_gpg(gw.svc)
    assert not gpg_row.ok and health_says in gpg_row.reason  # the operator sees it
    mend()
    again = await deliver(port, cafile, raw)
    assert code(again) == 250, again
    assert counts(gw)[:2] == (before[0] + 1, before[1] + 1)
    assert (await health.check_gpg(gw.svc)).ok


async def test_a_gpg_that_crashes_decrypting_gets_451_and_the_same_reply_is_taken_after(
    crashing_gw: tuple[Gateway, Path],
    tls_ca: trustme.CA,
    relay_cafile: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, broken = crashing_gw
    async with listening(gw, tls_ca, tmp_path) as port:
        await assert_451_until_mended(
            gw, port, relay_cafile, caplog, (broken.touch, broken.unlink), "decrypting"
        )


async def test_a_gpg_agent_that_cannot_start_gets_451_not_550_and_the_reply_is_taken_after(
    gw: Gateway, small_inbound: int, relay_cafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    """gpg says NO_SECKEY for the gateway's own key when it has no agent: still not "not for
    our key" (550, the reply dropped), but a gateway fault (451)."""
    try:
        await assert_451_until_mended(
            gw,
            small_inbound,
            relay_cafile,
            caplog,
            (lambda: no_agent(gw, True), lambda: no_agent(gw, False)),
            "secret key missing",  # its own listing fails too, without an agent
        )
    finally:
        no_agent(gw, False)


async def test_a_reply_encrypted_to_another_key_is_still_550_and_the_health_row_stays_ok(
    gw: Gateway, small_inbound: int, relay_cafile: str
) -> None:
    reference, mid = await sent_request(gw)
    # encrypted to a key the gateway holds the public half of only (the nurse's own)
    armored = await nurse_armor(gw, TEXT, to="nurse1@zorg-noord.example")
    before, before_files = counts(gw), files(gw.home)
    result = await deliver(small_inbound, relay_cafile, mail(armored, reference, mid))
    assert isinstance(result, aiosmtplib.SMTPResponseException), result
    assert result.code == 550
    assert "Not encrypted to the gateway's key" in result.message
    assert counts(gw) == before and files(gw.home) == before_files
    assert (await health.check_gpg(gw.svc)).ok
