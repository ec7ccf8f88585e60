"""The loop end to end, with a controllable clock: deadlines from the relay's 250 in the Dutch
working calendar, overdue escalated once, and a passed-on request that reaches the second team
encrypted for its key only, still carrying the GP's own signature."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta

from securemail.audit import export as audit_export
from securemail.audit import report as audit_report
from securemail.errors import NotFoundError
from securemail.exchange import answer, asks, escalation
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.home import gateway_fingerprint
from securemail.message import mime
from tests.clock import AMS, next_date, next_good_friday
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, deliver_all, env_for_cli, example
from tests.loop_fixtures import TEAM_B, Loop, audit_codes, notices

PATIENT = [EXAMPLE["patient"]["bsn"].encode(), EXAMPLE["patient"]["name"].encode()]
ASK_DATA = {
    "team_address": TEAM,
    "practice_code": "01234567",
    "patient.bsn": EXAMPLE["patient"]["bsn"],
    "patient.name": EXAMPLE["patient"]["name"],
    "patient.birth_date": EXAMPLE["patient"]["birth_date"],
    "procedure_code": "INJ_SC",
    "reason": "Insuline",
    "urgency": "regulier",
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securemail", *args],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=120,
        check=False,
    )


async def test_urgent_request_unanswered_after_two_hours_is_overdue_and_escalated_once(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    # Given an urgent request, sent and taken by the relay on a Wednesday at 10:00
    wednesday = loop.clock.now
    data = example()
    data["urgency"] = "spoed"
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    await deliver_all(svc)
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert status["answer_due"] == (wednesday + timedelta(hours=2)).astimezone(AMS).isoformat()
    # When 1 h 59 min pass, nothing is late
    loop.clock.advance(hours=1, minutes=59)
    assert (await escalation.check(svc)).requests == ()
    # When 2 h 1 min have passed, it is overdue and escalated, once, however often we look
    loop.clock.advance(minutes=2)
    assert (await escalation.check(svc)).requests == (sent.reference,)
    assert (await escalation.check(svc)).requests == ()
    assert audit_codes(svc, sent.reference).count("request.overdue") == 1
    [raw] = notices(svc, "overdue")
    assert sent.reference.encode() in raw
    assert b"praktijk@praktijk.example" in raw  # to the practice
    assert not any(marker in raw for marker in PATIENT)
    # Both work lists mark it
    for actor in (loop.gw.gp, loop.nurse_a):
        rows = svc.store.read_sync(lambda db, a=actor: exchange.list_requests(db, a))
        assert [(r["reference"], r["overdue"]) for r in rows] == [(sent.reference, True)]
    # An answer clears it from the overdue list (answered is not overdue)
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "geaccepteerd", "nurse_in_charge": "V. Zwaan",
         "nurse_phone": "06 12345678", "care_start": "2030-01-02T09:00",
         "performer_level": "verpleegkundige", "competence_confirmed": True},
    )  # fmt: skip
    assert svc.store.read_sync(lambda db: exchange.status(db, sent.reference))["overdue"] is False
    # The cron command finds nothing more to do
    svc.close()
    out = cli("deadlines", "check", "--home", str(loop.gw.home), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"requests": [], "asks": [], "orders": []}


async def test_regular_request_sent_on_friday_before_easter_is_due_tuesday_after(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    # Given the next Good Friday, 10:00 in Amsterdam; Easter Monday is a holiday too
    good_friday = next_good_friday(loop.clock.now)
    loop.clock.now = good_friday
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    svc.close()
    # Then the status shows the deadline on Tuesday, ISO 8601 with the summer-time offset
    out = cli("request", "status", "--home", str(loop.gw.home), sent.reference, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    # (Easter Monday falls in summer time every year, hence +02:00)
    tuesday = (good_friday + timedelta(days=4)).date()
    assert info["answer_due"] == f"{tuesday.isoformat()}T16:00:00+02:00"
    assert datetime.fromisoformat(info["answer_due"]).utcoffset() is not None
    assert EXAMPLE["patient"]["bsn"] not in out.stdout


def _gpg(home: object, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", *args],
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )


async def test_passed_on_request_arrives_at_second_team_encrypted_for_its_keys_only(
    loop: Loop, smtp_server: object, tmp_path: object
) -> None:
    svc = loop.gw.svc
    # Given a request delivered to team A
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    # When a nurse of team A passes it on to team B
    result = await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "doorbemiddeld", "passed_to": TEAM_B,
         "reason": "Geen capaciteit in de wijk\n\n== AANVULLING VAN DE OPDRACHTGEVER ==\n"
                   "Dosis verdubbelen."},
    )  # fmt: skip
    assert result.team_address == TEAM_B
    await deliver_all(svc)
    to_b = [r.content for r in smtp_server.handler.snapshot() if TEAM_B in r.rcpt_tos]
    assert len(to_b) == 1
    raw = to_b[0]
    assert not any(marker in raw for marker in PATIENT)
    # Then team B opens it: a good signature (the gateway's seal) and the GP's request inside
    opened = _gpg(loop.team_b_home, "--decrypt", data=raw)
    assert opened.returncode == 0, opened.stderr.decode()
    assert b"[GNUPG:] DECRYPTION_OKAY" in opened.stderr
    sealer = gateway_fingerprint(svc.store)
    assert f"[GNUPG:] VALIDSIG {sealer}".encode() in opened.stderr
    parts = mime.parse_inner(opened.stdout)
    stored = svc.store.read_sync(
        lambda db: requestview.document_bytes(db, exchange.require_row(db, sent.reference))
    )
    assert parts.json == stored
    assert "doorbemiddeld" in parts.text and "> Geen capaciteit in de wijk" in parts.text
    # The nurse's reason reaches team B as her quotation, never as a section of the order
    assert "geschreven door" in parts.text and "niet door de huisarts" in parts.text
    for line in parts.text.splitlines():
        if "AANVULLING" in line or "verdubbelen" in line:
            assert line.startswith("> "), line
    # and it carries no second, detachable signature: the GP's one signature covered
    # team A's message (docs/performance.md, "Passing on"); team B's is the gateway's seal
    assert parts.json_signature == b""
    assert opened.stderr.count(b"[GNUPG:] VALIDSIG ") == 1
    # and team A's key cannot open it
    refused = _gpg(loop.gw.nurse_home, "--decrypt", data=raw)
    assert refused.returncode != 0
    assert b"DECRYPTION_OKAY" not in refused.stderr
    # The request kept its reference and history; the GP sees where it is
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert status["team_address"] == TEAM_B
    assert [h["team_address"] for h in status["hops"]] == [TEAM, TEAM_B]
    assert status["hops"][0]["outcome"] == "doorbemiddeld"
    assert status["answer_due"] is not None  # team B's own clock, from its relay's 250
    assert "request.pass_on" in audit_codes(svc, sent.reference)
    assert len(notices(svc, "passed_on")) == 1
    # The practice's disclosure report (AVG art. 15) shows the hop: "verzoek doorgezet"
    officer = dataclasses.replace(loop.gw.gp, role="privacy_officer")
    bsn = svc.store.read_sync(lambda db: exchange.require_row(db, sent.reference))["patient_bsn"]
    report = svc.store.write_sync(
        lambda db: audit_report.disclosure_report(
            db, officer, bsn, "2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z"
        )
    )
    assert "request.pass_on" in [r["event_code"] for r in report.rows]
    assert "verzoek doorgezet" in {row[1] for row in audit_export.disclosure_table(report)}
    # Team A can no longer answer (nor see) it; team B can
    try:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "x"}
        )
    except NotFoundError:
        pass
    else:  # pragma: no cover
        raise AssertionError("team A answered a request that is with team B")
    await answer.record_answer(
        svc, loop.nurse_b, sent.reference,
        {"status": "geaccepteerd", "nurse_in_charge": "W. West",
         "nurse_phone": "06 12345678", "care_start": "2030-01-02T09:00",
         "performer_level": "verpleegkundige", "competence_confirmed": True},
    )  # fmt: skip
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["answer"]["team_address"] == TEAM_B
    assert view["answer"]["nurse_in_charge"] == "W. West"


async def test_reference_year_is_the_dutch_year_across_new_years_eve(loop: Loop) -> None:
    svc = loop.gw.svc
    new_year = next_date(loop.clock.now, 1, 1)
    # Given 31 December 23:59 in Amsterdam, on a UTC clock as in production
    loop.clock.now = datetime.combine(
        new_year - timedelta(days=1), time(23, 59), tzinfo=AMS
    ).astimezone(UTC)
    last = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    ask_last = await asks.create(svc, loop.nurse_a, ASK_DATA)
    # When two minutes later it is 1 January in Amsterdam (still 31 December in UTC)
    loop.clock.advance(minutes=2)
    assert loop.clock.now.astimezone(UTC).year == new_year.year - 1
    first = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    ask_first = await asks.create(svc, loop.nurse_a, ASK_DATA)
    # Then the old year's numbering ends and the new year's starts at 1, for both kinds
    assert last.reference.startswith(f"UVZ-{new_year.year - 1}-")
    assert first.reference == f"UVZ-{new_year.year}-000001"
    assert ask_last.reference.startswith(f"ASK-{new_year.year - 1}-")
    assert ask_first.reference == f"ASK-{new_year.year}-000001"
    # and the signed request is dated on the Dutch calendar: 1 January, not 31 December
    doc = svc.store.read_sync(
        lambda db: requestview.document(db, requestview.require_row(db, first.reference))
    )
    assert doc["issued_at"].startswith(f"{new_year.isoformat()}T00:01")


async def test_the_background_worker_delivers_on_the_gateways_clock(loop: Loop) -> None:
    """home.run_background's worker claims and stamps on the services' clock: the loop's
    clock is days ahead of the real one, so a worker on time.time would find the request
    (queued at the gateway's now) not yet due and never send it."""
    import asyncio

    from securemail import home

    assert loop.clock.ts() > datetime.now(UTC).timestamp() + 3600
    svc = loop.gw.svc
    stop = asyncio.Event()
    background = home.run_background(svc, stop, owner_id="test-background")
    try:
        sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
        for _ in range(600):
            row = svc.store.read_sync(
                lambda db: db.execute(
                    "SELECT status, final_at FROM outbox WHERE reference = ? AND kind = 'request'",
                    [sent.reference],
                ).fetchone()
            )
            if row[0] == "sent":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*background.tasks, return_exceptions=True)
    assert row[0] == "sent"
    assert row[1] == loop.clock.ts()  # stamped by the gateway's clock, not the real one
