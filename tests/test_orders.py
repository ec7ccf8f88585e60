"""Issue 21: orders that can be trusted and stay valid: the request's date is the moment of
signing, the principal's enrolled function is what is signed, the team's answer goes back to
the practice sealed to its key, and end and evaluation dates outlive the content.

Real gateway (tests/loop_fixtures.py): real gpg seals, real sqlite, a controllable clock.
"""

from __future__ import annotations

import email
import json
import subprocess
from datetime import datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from securemail.access import SYSTEM, Actor
from securemail.accounts import apitoken, auth
from securemail.cli.directory import enrol_gp_key
from securemail.errors import InputError
from securemail.exchange import answer, escalation, orders
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.form import request as forms
from securemail.home import gateway_fingerprint
from securemail.keys import practice as practicekeys
from securemail.web import create_app
from tests.e2e.webflow import login
from tests.gateway import GP_PASSPHRASE, TEAM, example, gpg_cli, make_member_key
from tests.loop_fixtures import Loop, audit_codes, notices


def _signed_document(loop: Loop, reference: str) -> dict[str, Any]:
    svc = loop.gw.svc
    row = svc.store.read_sync(lambda db: exchange.require_row(db, reference))
    return svc.store.read_sync(lambda db: requestview.document(db, row))


async def test_signed_request_is_dated_at_the_moment_of_signing(loop: Loop) -> None:
    # Given a request typed an hour before it is signed (same day)
    svc = loop.gw.svc
    data = example()
    data["issued_at"] = (loop.clock.now - timedelta(hours=1)).isoformat()
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    # Then what is signed and stored carries the gateway's moment of signing
    issued = datetime.fromisoformat(_signed_document(loop, sent.reference)["issued_at"])
    assert issued == loop.clock.now


async def test_backdated_request_or_start_before_signing_is_a_field_error(loop: Loop) -> None:
    svc = loop.gw.svc
    backdated = example()
    backdated["issued_at"] = (loop.clock.now - timedelta(days=3)).isoformat()
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, backdated, GP_PASSPHRASE)
    assert ("issued_at", "datetime.backdated") in {(e.field, e.code) for e in info.value.errors}
    early = example()
    early["period"]["start_date"] = "today-1d"
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, early, GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("period.start_date", "period.start_before_issue")
    ]
    # Nothing was stored
    rows = svc.store.read_sync(lambda db: db.execute("SELECT COUNT(*) FROM requests").fetchone())
    assert rows[0] == 0


# -- the principal's function ------------------------------------------------------------------


def test_principal_functions_are_the_forms_options(loop: Loop) -> None:
    spec = loop.gw.svc.definition.spec("principal.role")
    assert spec is not None
    assert tuple(o.value for o in spec.options) == auth.PRINCIPAL_FUNCTIONS


def _add_locum(loop: Loop, function: str = "waarnemend_huisarts") -> Actor:
    svc = loop.gw.svc
    svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="waarnemer", name="B. Waarnemer", role="gp",
            org_code="01234567", password="locum password 12345",
            profile={"big": "29012345601", "function": function, "phone": "020-1234567",
                     "out_of_hours_phone": "088-0030600"},
            now=svc.now_iso(),
        )
    )  # fmt: skip
    return svc.store.read_sync(lambda db: auth.actor_for_cli(db, "waarnemer"))


async def test_a_locums_request_is_signed_as_waarnemend_huisarts(loop: Loop) -> None:
    svc = loop.gw.svc
    locum = _add_locum(loop)
    user = svc.store.read_sync(lambda db: auth.user_by_name(db, "waarnemer"))
    await enrol_gp_key(svc, user, GP_PASSPHRASE)
    data = example()
    del data["principal"]["role"]  # filled in from the enrolment
    sent = await exchange.send(svc, locum, data, GP_PASSPHRASE)
    assert _signed_document(loop, sent.reference)["principal"]["role"] == "waarnemend_huisarts"
    # The example's "huisarts" is not what the locum is enrolled as: a field error
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, locum, example(), GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("principal.role", "principal.role_mismatch")
    ]


def test_enrolment_refuses_an_unknown_function_and_a_malformed_big(loop: Loop) -> None:
    with pytest.raises(InputError, match="function"):
        _add_locum(loop, function="tandarts")
    svc = loop.gw.svc
    with pytest.raises(InputError, match="BIG"):
        svc.store.write_sync(
            lambda db: auth.add_user(
                db, SYSTEM, username="nurse_c", name="Nurse C", role="nurse",
                org_code="87654321", password="nurse c password 123", teams=[TEAM],
                profile={"big": "1234"}, now=svc.now_iso(),
            )
        )  # fmt: skip


async def test_an_account_without_function_cannot_sign(loop: Loop) -> None:
    svc = loop.gw.svc
    svc.store.write_sync(
        lambda db: db.execute("UPDATE users SET function = '' WHERE username = 'huisarts'")
    )
    data = example()
    data["principal"]["role"] = "huisarts"  # what the form says is not enough
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    assert [e.code for e in info.value.errors] == ["principal.function_missing"]


# -- the team's answer carries the nurse's contact details and the start of care -------------

ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    "nurse_reachability": "Ma-vr 8-17 uur; daarna het teamnummer 020 555 0000",
    "nurse_big": "39012345601",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}


async def test_acceptance_needs_the_nurses_phone_and_the_start_of_care(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    bare = {k: v for k, v in ACCEPT.items() if k not in ("nurse_phone", "care_start")}
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(svc, loop.nurse_a, sent.reference, bare)
    assert {(e.field, e.code) for e in info.value.errors} == {
        ("nurse_phone", "answer.phone_required"),
        ("care_start", "answer.care_start_required"),
    }
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference, {**ACCEPT, "nurse_big": "1234"}
        )
    assert [(e.field, e.code) for e in info.value.errors] == [("nurse_big", "big.format")]
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["answer"]["nurse_phone"] == "06 12345678"
    assert view["answer"]["care_start"].startswith("2030-01-02T09:00")


# -- the signed answer goes back to the practice -------------------------------------------------

PRACTICE_MAILBOX = "praktijk@praktijk.example"  # Praktijk Test's notice address


async def _pin_practice_key(loop: Loop) -> Path:
    """The practice's own key pair in its 'mail client'; the public half pinned at the gateway."""
    home = loop.gw.home / "practice-gnupg"
    home.mkdir(mode=0o700)
    make_member_key(home, PRACTICE_MAILBOX, usage="sign", expire=None)
    armor = gpg_cli(home, "--armor", "--export").decode()
    await practicekeys.pin(loop.gw.svc, SYSTEM, "01234567", armor)
    # ... and the practice's client knows the gateway's key (from the regional directory)
    svc = loop.gw.svc
    gw_public = await svc.keyring.export_public(gateway_fingerprint(svc.store))
    gpg_cli(home, "--import", stdin=gw_public.encode())
    return home


def _answer_copies(loop: Loop) -> list[bytes]:
    return loop.gw.svc.store.read_sync(
        lambda db: [
            bytes(r[0])
            for r in db.execute(
                "SELECT o.mime FROM outbox o JOIN answer_copies c ON c.message_id = o.message_id"
            )
        ]
    )


def _read_sealed(home: Path, raw: bytes) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", "--decrypt"],
        input=raw,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "[GNUPG:] DECRYPTION_OKAY" in result.stderr.decode()
    inner = email.message_from_bytes(result.stdout, policy=policy.default)
    [part] = [p for p in inner.walk() if p.get_content_type() == "application/json"]
    return json.loads(part.get_payload(decode=True)), result.stderr.decode()


async def test_the_practice_decrypts_the_answer_and_reads_nurse_phone_and_start(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    practice_home = await _pin_practice_key(loop)
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    [raw] = _answer_copies(loop)
    # Outside the encryption: nothing about the patient or the nurse
    for secret in ("Zwaan", "06 12345678", example()["patient"]["bsn"]):
        assert secret.encode() not in raw
    doc, status = _read_sealed(practice_home, raw)
    assert doc["reference"] == sent.reference
    assert doc["status"] == "geaccepteerd"
    assert doc["nurse_in_charge"] == "Verpleegkundige Zwaan"
    assert doc["nurse_phone"] == "06 12345678"
    assert doc["care_start"].startswith("2030-01-02T09:00")
    assert doc["competence_confirmed"] is True
    assert doc["performer_level"] == "verpleegkundige"
    assert doc["signed_by"]["kind"] == "gateway_on_behalf_of_team"
    # signed by the gateway's key (the practice knows it from the regional directory)
    gw_fpr = str(gateway_fingerprint(svc.store))
    assert "[GNUPG:] GOODSIG" in status and f"VALIDSIG {gw_fpr}" in status
    assert "request.answer_copy" in audit_codes(svc, sent.reference)


async def test_without_a_practice_key_the_answer_is_recorded_and_no_copy_sealed(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    assert _answer_copies(loop) == []
    assert svc.store.read_sync(lambda db: exchange.status(db, sent.reference))["state"] == (
        "answered"
    )


async def test_api_gives_the_answer_to_its_practice_and_404_to_another(
    loop: Loop, aiohttp_server: Any
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="anders", name="C. Anders", role="gp", org_code="11223344",
            password="other gp password 123",
            profile={"big": "49012345601", "phone": "020-1234567",
                     "out_of_hours_phone": "088-0030600"},
            now=svc.now_iso(),
        )
    )  # fmt: skip
    other = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "anders"))
    tokens = {
        who: svc.store.write_sync(
            lambda db, a=actor: apitoken.create(
                db, a, name="HIS", scopes=["request:read"], now=svc.now()
            )[0]
        )
        for who, actor in (("own", loop.gw.gp), ("other", other))
    }
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    url = str(server.make_url(f"/api/requests/{sent.reference}"))
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {tokens['own']}"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["answer"]["nurse_in_charge"] == "Verpleegkundige Zwaan"
        assert body["answer"]["nurse_phone"] == "06 12345678"
        assert body["answer"]["care_start"].startswith("2030-01-02T09:00")
        async with http.get(url, headers={"Authorization": f"Bearer {tokens['other']}"}) as r:
            assert r.status == 404
            assert "Zwaan" not in await r.text()
    codes = audit_codes(svc, sent.reference)
    assert "request.view" in codes and "access.denied" in codes


# -- orders that stay valid --------------------------------------------------------------------


def _signals(loop: Loop, kind: str) -> int:
    return len(notices(loop.gw.svc, kind))


async def _order(
    loop: Loop, end: str = "today+20d", answer_with: dict[str, Any] | None = ACCEPT
) -> exchange.SendResult:
    """A request from today to ``end``, answered by team A's nurse with ``answer_with``
    (None: no answer yet)."""
    data = example()
    data["period"] = {"start_date": "today", "end_date": end}
    sent = await exchange.send(loop.gw.svc, loop.gw.gp, data, GP_PASSPHRASE)
    if answer_with is not None:
        await answer.record_answer(loop.gw.svc, loop.nurse_a, sent.reference, answer_with)
    return sent


async def _pages(loop: Loop, aiohttp_server: Any, paths: dict[str, str]) -> dict[str, str]:
    """``paths`` ({name: path}) as the GP (huisarts) and the nurse (nurse1) see them over
    HTTP: {"who-name": page text, "who-name-status": HTTP status}."""
    svc = loop.gw.svc
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    site = str(server.make_url("")).rstrip("/")
    pages = {}
    for who in ("huisarts", "nurse1"):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await login(http, site, loop.credentials(who))
            for name, path in paths.items():
                async with http.get(f"{site}{path}") as r:
                    pages[f"{who}-{name}"] = await r.text()
                    pages[f"{who}-{name}-status"] = str(r.status)
    return pages  # the server (and the services it closes) stays up until the test ends


async def test_past_the_evaluation_date_the_gp_is_reminded_once(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)  # evaluation +6m
    await escalation.check(svc)
    assert _signals(loop, "order_evaluation") == 0
    loop.clock.advance(days=190)
    first = await escalation.check(svc)
    again = await escalation.check(svc)
    assert first.orders == ((sent.reference, orders.EVALUATION_REMINDER),)
    assert again.orders == ()
    assert _signals(loop, "order_evaluation") == 1
    assert audit_codes(svc, sent.reference).count("request.remind") == 1
    # Listed under the GP's work, and no "verlopen": an order until further notice runs on
    work = svc.store.read_sync(lambda db: orders.practice_work(db, loop.gw.gp.org_id or 0))
    assert [(w["reference"], w["signal"]) for w in work] == [
        (sent.reference, orders.EVALUATION_REMINDER)
    ]
    state = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))["order"]
    assert state["expired"] is False


async def test_past_the_end_date_one_verlopen_and_one_stop_notice(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await _order(loop)
    loop.clock.advance(days=10)  # within order_reminder_days of the end: a reminder first
    assert (await escalation.check(svc)).orders == ((sent.reference, orders.END_REMINDER),)
    loop.clock.advance(days=11)  # the day after the end date
    await escalation.check(svc)
    await escalation.check(svc)
    assert _signals(loop, "order_expired") == 1
    [stop] = notices(svc, "order_stop")
    assert TEAM.encode() in stop and sent.reference.encode() in stop
    assert example()["patient"]["bsn"].encode() not in stop
    codes = audit_codes(svc, sent.reference)
    assert codes.count("request.expire") == 1
    # "verlopen" on both sides: the GP's and the nurse's view of the request
    for actor in (loop.gw.gp, loop.nurse_a):
        view = svc.store.write_sync(lambda db, a=actor: exchange.get_request(db, a, sent.reference))
        assert view["order"]["expired"] is True


async def test_order_dates_survive_the_content_purge(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE requests SET document = x'', answer = '' WHERE reference = ?",
            [sent.reference],
        )
    )
    state = svc.store.read_sync(lambda db: orders.order_state(db, sent.reference))
    assert state is not None and state["evaluation_date"]


async def test_verlopen_shows_on_both_sides_and_in_the_gps_work(
    loop: Loop, aiohttp_server: Any
) -> None:
    svc = loop.gw.svc
    sent = await _order(loop, "today+3d")
    loop.clock.advance(days=4)
    await escalation.check(svc)
    pages = await _pages(
        loop, aiohttp_server, {"request": f"/requests/{sent.reference}", "work": "/requests"}
    )
    for who in ("huisarts", "nurse1"):
        assert 'class="error verlopen"' in pages[f"{who}-request"]
    assert f"{sent.reference}</a>: <strong>verlopen</strong>" in pages["huisarts-work"]


async def test_the_team_that_accepted_is_reminded_of_the_end_once(loop: Loop) -> None:
    svc = loop.gw.svc
    accepted = await _order(loop)
    waiting = await _order(loop, answer_with=None)  # no answer yet
    loop.clock.advance(days=10)  # within order_reminder_days of the end
    await escalation.check(svc)
    await escalation.check(svc)
    [team_notice] = notices(svc, "order_end_team")
    assert f"To: {TEAM}".encode() in team_notice
    assert accepted.reference.encode() in team_notice
    assert waiting.reference.encode() not in team_notice
    assert example()["patient"]["bsn"].encode() not in team_notice
    # the practice is reminded of both orders
    assert _signals(loop, "order_end") == 2


async def test_a_declined_order_gives_the_team_no_end_reminder(loop: Loop) -> None:
    svc = loop.gw.svc
    await _order(loop, answer_with={"status": "afgewezen", "reason": "Geen capaciteit"})
    loop.clock.advance(days=10)
    await escalation.check(svc)
    assert notices(svc, "order_end_team") == []


async def test_the_verlenging_starts_prefilled_from_the_reminder(
    loop: Loop, aiohttp_server: Any
) -> None:
    svc = loop.gw.svc
    sent = await _order(loop)
    loop.clock.advance(days=10)
    await escalation.check(svc)
    end = _signed_document(loop, sent.reference)["period"]["end_date"]
    day_after = (datetime.fromisoformat(end) + timedelta(days=1)).date().isoformat()
    page = f"/requests/{sent.reference}"
    pages = await _pages(loop, aiohttp_server, {"request": page, "extend": f"{page}/verlengen"})
    # The GP's reminder leads to the form, filled from the signed order
    assert f'href="/requests/{sent.reference}/verlengen"' in pages["huisarts-request"]
    form = pages["huisarts-extend"]
    assert pages["huisarts-extend-status"] == "200"
    assert f'value="{sent.reference}"' in form
    assert 'value="verlenging" selected' in form or 'value="verlenging" checked' in form
    assert example()["patient"]["name"] in form
    assert f'value="{day_after}"' in form
    # The team's nurse has no verlenging to write (wrong role)
    assert "/verlengen" not in pages["nurse1-request"]
    assert pages["nurse1-extend-status"] == "403"
    assert "request.view" in audit_codes(svc, sent.reference)


async def test_a_prefilled_verlenging_signs_and_ends_the_earlier_orders_signals(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    sent = await _order(loop)
    loop.clock.advance(days=10)
    await escalation.check(svc)
    earlier = _signed_document(loop, sent.reference)
    extension = orders.extension_of(earlier, loop.clock.now.date())
    extension["period"] |= {"end_date": "today+60d", "evaluation_date": "today+30d"}
    extension["issued_at"] = loop.clock.now.isoformat()
    longer = await exchange.send(svc, loop.gw.gp, extension, GP_PASSPHRASE)
    assert svc.store.read_sync(lambda db: exchange.status(db, sent.reference))["state"] == (
        "superseded"
    )
    loop.clock.advance(days=11)  # past the earlier end date: no verlopen, no stop
    await escalation.check(svc)
    assert notices(svc, "order_stop") == []
    doc = _signed_document(loop, longer.reference)
    assert doc["kind"] == "verlenging" and doc["supersedes"] == sent.reference


async def test_a_passed_on_answer_reaches_the_practice_too(loop: Loop) -> None:
    from tests.loop_fixtures import TEAM_B

    svc = loop.gw.svc
    practice_home = await _pin_practice_key(loop)
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    reason = "Buiten ons werkgebied"
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "doorbemiddeld", "reason": reason, "passed_to": TEAM_B},
    )  # fmt: skip
    await answer.record_answer(svc, loop.nurse_b, sent.reference, ACCEPT)
    copies = _answer_copies(loop)
    assert len(copies) == 2
    for raw in copies:  # outside the encryption: nothing about the patient or the reason
        assert example()["patient"]["bsn"].encode() not in raw and reason.encode() not in raw
    passed, accepted = (_read_sealed(practice_home, raw)[0] for raw in copies)
    assert (passed["status"], passed["reason"], passed["passed_to"]) == (
        "doorbemiddeld",
        reason,
        TEAM_B,
    )
    assert passed["team_address"] == TEAM
    assert (accepted["status"], accepted["team_address"]) == ("geaccepteerd", TEAM_B)
    assert accepted["nurse_phone"] == "06 12345678"
    assert audit_codes(svc, sent.reference).count("request.answer_copy") == 2
