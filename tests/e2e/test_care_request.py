"""The care request (aanmelding wijkverpleging) on the one message pipeline: a GP sends it,
the team's gpg opens it (a good signature, the risky lines flagged "niet voorbehouden" with
the GP's instructions), the team accepts with a nurse in charge; reserved and risky
procedures travel as one signed message."""

from __future__ import annotations

import email
import html
import json
import re
from datetime import timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest

from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.form.request import FormInvalidError
from tests.attachment_files import b64, executable, jpeg, pdf, png
from tests.clock import AMS
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, Gateway, deliver_all
from tests.loop_fixtures import TEAM_B, Loop, verify_order

ROOT = Path(__file__).resolve().parents[2]
CARE = json.loads(
    (ROOT / "examples" / "aanmelding_wijkverpleging.json").read_text(encoding="utf-8")
)
PATIENT = [EXAMPLE["patient"]["bsn"].encode(), EXAMPLE["patient"]["name"].encode()]


def care_example(*, reserved: bool) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(CARE))
    if not reserved:  # wound care only: no Wet BIG order, so no period or instructions
        for key in ("procedures", "period", "instructions"):
            data.pop(key)
    return data


def opened(gw: Gateway, raw: bytes) -> tuple[email.message.EmailMessage, dict[str, Any], str]:
    """What the team's mail client shows: the inner message, its JSON and its text."""
    for marker in PATIENT:
        assert marker not in raw, "patient data outside the encryption"
    outer = email.message_from_bytes(raw, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    result = gw.decrypt_as_nurse(raw)
    assert result.returncode == 0, result.stderr.decode()
    # the GP's order is RFC 3156 6.1: one signature, over the whole multipart/signed part
    verified, _ = verify_order(gw.nurse_home, result.stdout)
    assert verified.count("[GNUPG:] GOODSIG") == 1
    inner = email.message_from_bytes(result.stdout, policy=policy.default)
    doc = next(p for p in inner.walk() if p.get_content_type() == "application/json")
    text = next(p for p in inner.walk() if p.get_content_type() == "text/plain")
    content = doc.get_content()
    data = json.loads(content if isinstance(content, str) else content.decode())
    return outer, data, str(text.get_content())


def first_visit(loop: Loop) -> str:
    """The planned start of care the nurse types: tomorrow morning on the gateway's clock."""
    return (loop.clock.now + timedelta(days=1)).astimezone(AMS).strftime("%Y-%m-%dT%H:%M")


def to_team(smtp_server: Any) -> list[bytes]:
    return [r.content for r in smtp_server.handler.snapshot() if TEAM in r.rcpt_tos]


async def test_wound_care_request_arrives_signed_and_team_accepts(
    loop: Loop, smtp_server: Any
) -> None:
    svc = loop.gw.svc
    # Given a GP's care request for wound care (a risky, not reserved procedure)
    sent = await exchange.send(svc, loop.gw.gp, care_example(reserved=False), GP_PASSPHRASE)
    # Then it has the care request's own reference series
    assert sent.reference.startswith("AWV-")
    await deliver_all(svc, clock=loop.clock)  # the relay's 250 at the test's time
    [raw] = to_team(smtp_server)
    outer, data, text = opened(loop.gw, raw)
    # And a neutral outer Subject naming the kind and reference only
    assert outer["Subject"] == f"Aanmelding wijkverpleging {sent.reference}"
    # And the signed JSON carries the care question and the wound care with the GP's
    # instructions, flagged as not reserved
    assert data["form_id"] == "aanmelding_wijkverpleging"
    assert data["reference"] == sent.reference
    assert data["care"]["specialism"] == "wondzorg"
    [line] = data["risky_procedures"]
    assert line["code"] == "WOUND_CARE"
    assert line["reserved"] is False
    assert line["instructions"].startswith("Reinigen met kraanwater")
    assert data["procedures"] is None
    assert "Wondzorg (WOUND_CARE, niet voorbehouden)" in text
    assert "Aanwijzingen van de arts" in text
    # When the team accepts with a nurse in charge
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "geaccepteerd", "nurse_in_charge": "V. Zwaan",
         "nurse_phone": "06 12345678", "care_start": first_visit(loop),
         "performer_level": "verpleegkundige", "competence_confirmed": True},
    )  # fmt: skip
    # Then the GP sees the nurse in charge on the request
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["answer"]["nurse_in_charge"] == "V. Zwaan"
    assert view["state"] == "answered"
    # And the adherence figures count it as a turn the team answered
    from datetime import timedelta

    from securemail.region import adherence

    start, end = svc.now() - timedelta(days=1), svc.now() + timedelta(days=1)
    turns = svc.store.read_sync(lambda db: adherence.load_turns(db, start, end))
    assert [(t.team, t.outcome) for t in turns] == [(TEAM, "geaccepteerd")]


async def test_insulin_and_wound_care_arrive_as_one_signed_message(
    loop: Loop, smtp_server: Any
) -> None:
    svc = loop.gw.svc
    # Given a care request with an insulin injection (reserved) and wound care (risky)
    sent = await exchange.send(svc, loop.gw.gp, care_example(reserved=True), GP_PASSPHRASE)
    await deliver_all(svc)
    # Then exactly one message reaches the team, under one signature
    [raw] = to_team(smtp_server)
    _outer, data, text = opened(loop.gw, raw)
    [reserved] = data["procedures"]
    [risky] = data["risky_procedures"]
    assert (reserved["code"], reserved["reserved"]) == ("INJ_SC", True)
    assert reserved["medication"]["dose_unit"] == "IE"
    assert (risky["code"], risky["reserved"]) == ("WOUND_CARE", False)
    assert data["period"]["until_further_notice"] is True
    assert "Subcutane injectie (INJ_SC)" in text
    # And one request row and one outbox message for it
    rows = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT count(*) FROM outbox WHERE reference = ? AND kind = 'request'",
            [sent.reference],
        ).fetchone()[0]
    )
    assert rows == 1


async def test_unknown_form_is_a_field_error_and_nothing_is_queued(gw: Gateway) -> None:
    data = care_example(reserved=False)
    data["form_id"] = "onbekend_formulier"
    with pytest.raises(FormInvalidError) as caught:
        await exchange.send(gw.svc, gw.gp, data, GP_PASSPHRASE)
    assert [(e.field, e.code) for e in caught.value.errors] == [("form_id", "form.unknown")]
    queued = gw.svc.store.read_sync(lambda db: db.execute("SELECT count(*) FROM outbox").fetchone())
    assert queued[0] == 0


def attachment_parts(inner: email.message.EmailMessage) -> list[tuple[str, str | None, bytes]]:
    return [
        (p.get_content_type(), p.get_filename(), p.get_payload(decode=True))
        for p in inner.walk()
        if p.get_filename() and p.get_filename().startswith("bijlage-")
    ]


async def test_wound_photo_and_letter_arrive_inside_the_encryption_and_travel_on(
    loop: Loop, smtp_server: Any
) -> None:
    svc = loop.gw.svc
    # Given a wound-care request with a photo and the specialist's letter
    data = care_example(reserved=False)
    data["attachments"] = [
        {"filename": "wond De Vries 2026-11-30.png", "data": b64(png())},
        {"filename": "brief-chirurg-J-de-Vries.pdf", "data": b64(pdf())},
    ]
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    await deliver_all(svc)
    [raw] = to_team(smtp_server)
    # Then nothing of the files' names is outside (nor inside) the encryption
    assert b"wond De Vries" not in raw and b"brief-chirurg" not in raw
    _outer, _data, text = opened(loop.gw, raw)
    inner = email.message_from_bytes(loop.gw.decrypt_as_nurse(raw).stdout, policy=policy.default)
    # And the team finds both, with their types, under neutral names
    assert attachment_parts(inner) == [
        ("image/png", "bijlage-1.png", png()),
        ("application/pdf", "bijlage-2.pdf", pdf()),
    ]
    assert "bijlage-1.png (PNG-afbeelding" in text
    # When team A passes it on, team B gets the same files
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "doorbemiddeld", "reason": "Geen wondverpleegkundige vrij", "passed_to": TEAM_B},
    )  # fmt: skip
    await deliver_all(svc)
    [to_b] = [r.content for r in smtp_server.handler.snapshot() if TEAM_B in r.rcpt_tos]
    from tests.e2e.test_loop import _gpg

    opened_b = _gpg(loop.team_b_home, "--decrypt", data=to_b)
    assert opened_b.returncode == 0, opened_b.stderr.decode()
    inner_b = email.message_from_bytes(opened_b.stdout, policy=policy.default)
    assert [(t, n) for t, n, _ in attachment_parts(inner_b)] == [
        ("image/png", "bijlage-1.png"),
        ("application/pdf", "bijlage-2.pdf"),
    ]


@pytest.mark.parametrize(
    ("attachments", "expected"),
    [
        ([{"filename": "brief.pdf", "data": b64(executable())}], "attachments.0 attachment.type"),
        (
            [{"filename": "wond.png", "data": b64(png()[:-12])}],
            "attachments.0 attachment.unreadable",
        ),
        ([{"data": b64(jpeg())}] * 6, "attachments attachment.too_many"),
        ([{"data": b64(pdf("x" * 3_000))}] * 2, "attachments attachment.too_big"),
    ],
    ids=["executable-renamed-pdf", "png-that-does-not-parse", "too-many", "too-big"],
)
async def test_bad_attachment_is_a_field_error_and_nothing_is_queued(
    gw: Gateway, attachments: list[dict[str, str]], expected: str
) -> None:
    gw.svc.settings = gw.svc.settings.replace(attachments={"max_bytes_per_message": 5_000})
    data = care_example(reserved=False)
    data["attachments"] = attachments
    with pytest.raises(FormInvalidError) as caught:
        await exchange.send(gw.svc, gw.gp, data, GP_PASSPHRASE)
    assert [f"{e.field} {e.code}" for e in caught.value.errors] == [expected]
    assert all(e.message_nl for e in caught.value.errors)
    counts = gw.svc.store.read_sync(
        lambda db: [
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
            for t in ("outbox", "requests", "request_attachments")
        ]
    )
    assert counts == [0, 0, 0]


async def test_care_request_page_over_http_shows_it_and_takes_the_answer(
    loop: Loop, aiohttp_server: Any
) -> None:
    import aiohttp

    from securemail.web import create_app
    from tests.e2e.webflow import csrf_of, login

    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, care_example(reserved=False), GP_PASSPHRASE)
    await deliver_all(svc)
    app = create_app(svc.settings, services=svc, run_worker=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    site = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as nurse:
            await login(nurse, site, loop.credentials("nurse1"))
            # The team's page of the AWV- request shows the care request, risky line flagged
            async with nurse.get(f"{site}/requests/{sent.reference}") as r:
                assert r.status == 200
                page = await r.text()
            # the request as a document (the HTML layout of the mail), risky lines flagged
            assert "niet voorbehouden" in page and "Aanmelding wijkverpleging" in page
            form = {
                "status": "geaccepteerd", "nurse_in_charge": "V. Zwaan",
                "nurse_phone": "06 12345678", "care_start": first_visit(loop),
                "performer_level": "verpleegkundige", "competence_confirmed": "on",
                "csrf_token": csrf_of(page),
            }  # fmt: skip
            async with nurse.post(f"{site}/requests/{sent.reference}/answer", data=form) as r:
                assert r.status == 200, await r.text()
        view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
        assert view["answer"]["nurse_in_charge"] == "V. Zwaan"
    finally:
        await server.close()


async def test_gp_fills_the_care_request_on_the_web_form_and_sends_it(
    loop: Loop, aiohttp_server: Any
) -> None:
    import aiohttp

    from securemail.form.request import flatten
    from securemail.web import create_app
    from tests.e2e.webflow import csrf_of, login

    svc = loop.gw.svc
    app = create_app(svc.settings, services=svc, run_worker=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    site = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as gp:
            await login(gp, site, loop.credentials("huisarts"))
            # The care request's form: its own sections, and it says which form it is
            async with gp.get(f"{site}/requests/new?form=aanmelding_wijkverpleging") as r:
                assert r.status == 200
                page = await r.text()
            assert 'name="form_id" value="aanmelding_wijkverpleging"' in page
            assert 'name="care.specialism"' in page and 'name="risky_procedures.0.code"' in page
            async with gp.get(f"{site}/requests/new?form=bestaat_niet") as r:
                assert r.status == 404
            # Controleren: the preview shows the wound care as not reserved
            values = flatten({**care_example(reserved=False), "issued_at": ""})
            values.pop("form_version", None)
            values["issued_at"] = loop.clock.now.astimezone(AMS).strftime("%Y-%m-%dT%H:%M")
            values["csrf_token"] = csrf_of(page)
            async with gp.post(f"{site}/requests/preview", data=values) as r:
                assert r.status == 200, await r.text()
                preview = await r.text()
            assert "Wondzorg (niet voorbehouden)" in preview
            # Versturen: an AWV- request
            form = {
                "payload": re.search(r'name="payload" value="([^"]*)"', preview).group(1),
                "send_token": re.search(r'name="send_token" value="([^"]*)"', preview).group(1),
                "passphrase": GP_PASSPHRASE,
                "csrf_token": csrf_of(preview),
            }
            form["payload"] = html.unescape(form["payload"])
            async with gp.post(f"{site}/requests/send", data=form) as r:
                assert r.status == 200, await r.text()
                assert "/requests/AWV-" in str(r.url)
    finally:
        await server.close()


def _audit_categories(svc: Any, reference: str, code: str) -> list[str]:
    return svc.store.read_sync(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT data_categories FROM audit_events WHERE object_id = ? AND event_code = ? "
                "ORDER BY seq",
                [reference, code],
            )
        ]
    )


def _care_objection(loop: Loop) -> None:
    """The patient objects to care requests (only) going to the team."""
    from securemail import consent
    from securemail.region import directory

    svc, gp = loop.gw.svc, loop.gw.gp

    def write(db: Any) -> None:
        consent.record(
            db, gp, patient_bsn=EXAMPLE["patient"]["bsn"], source_org_id=gp.org_id or 0,
            recipient=consent.Recipient(team_id=directory.team_by_address(db, TEAM).id),
            decision="deny", basis="objection", data_categories=("care_request",),
            valid_from=svc.now(), given_at=svc.now(), channel="in_person",
            performer="patient", now=svc.now(),
        )  # fmt: skip

    svc.store.write_sync(write)


async def test_a_care_request_is_audited_and_consent_checked_as_what_it_carries(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    # A wound-care request carries care_request; with insulin also execution_request
    wound = await exchange.send(svc, loop.gw.gp, care_example(reserved=False), GP_PASSPHRASE)
    both = await exchange.send(svc, loop.gw.gp, care_example(reserved=True), GP_PASSPHRASE)
    assert _audit_categories(svc, wound.reference, "request.send") == ["care_request"]
    assert _audit_categories(svc, both.reference, "request.send") == [
        "care_request,execution_request"
    ]
    # Each category the send carries was checked against the register (audited)
    assert set(_audit_categories(svc, both.reference, "consent.check")) >= {
        "care_request", "execution_request",
    }  # fmt: skip
    # The team's view of it is audited with its categories too
    svc.store.write_sync(lambda db: exchange.get_request(db, loop.nurse_a, wound.reference))
    assert _audit_categories(svc, wound.reference, "request.view") == ["care_request"]
    # An execution request is still an execution request
    uvz = await exchange.send(svc, loop.gw.gp, EXAMPLE, GP_PASSPHRASE)
    assert _audit_categories(svc, uvz.reference, "request.send") == ["execution_request"]


async def test_an_objection_to_care_requests_stops_them_and_not_execution_requests(
    loop: Loop,
) -> None:
    from securemail.consent import ConsentRefusedError

    svc = loop.gw.svc
    _care_objection(loop)
    queued = svc.store.read_sync(lambda db: db.execute("SELECT count(*) FROM outbox").fetchone())
    # A care request to the team is refused (with or without reserved lines), nothing queued
    for reserved in (False, True):
        with pytest.raises(ConsentRefusedError):
            await exchange.send(svc, loop.gw.gp, care_example(reserved=reserved), GP_PASSPHRASE)
    after = svc.store.read_sync(lambda db: db.execute("SELECT count(*) FROM outbox").fetchone())
    assert after == queued
    # The execution request the patient did not object to still goes
    sent = await exchange.send(svc, loop.gw.gp, EXAMPLE, GP_PASSPHRASE)
    assert sent.reference.startswith("UVZ-")


async def test_an_objection_recorded_without_categories_stops_care_requests_too(
    loop: Loop,
) -> None:
    # The GP's screen records an objection without naming categories: it covers everything
    # sent, so a care request never goes past it (before: execution requests only).
    from securemail import consent
    from securemail.consent import ConsentRefusedError
    from securemail.region import directory

    svc, gp = loop.gw.svc, loop.gw.gp

    def object_(db: Any) -> None:
        consent.record(
            db, gp, patient_bsn=EXAMPLE["patient"]["bsn"], source_org_id=gp.org_id or 0,
            recipient=consent.Recipient(team_id=directory.team_by_address(db, TEAM).id),
            decision="deny", basis="objection", valid_from=svc.now(), given_at=svc.now(),
            channel="in_person", performer="patient", now=svc.now(),
        )  # fmt: skip

    svc.store.write_sync(object_)
    for data in (care_example(reserved=False), care_example(reserved=True), EXAMPLE):
        with pytest.raises(ConsentRefusedError):
            await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)


async def test_under_explicit_policy_a_permit_for_execution_requests_is_not_one_for_care(
    loop: Loop,
) -> None:
    from securemail import consent
    from securemail.consent import ConsentRefusedError
    from securemail.region import directory

    svc, gp = loop.gw.svc, loop.gw.gp
    svc.settings = svc.settings.replace(consent={"policy": "explicit"})

    def narrow(db: Any) -> None:
        # The fixture's permit covers every category (the default); it is replaced by one
        # naming execution requests only
        team = consent.Recipient(team_id=directory.team_by_address(db, TEAM).id)
        common = {"patient_bsn": EXAMPLE["patient"]["bsn"], "source_org_id": gp.org_id or 0}
        consent.withdraw(
            db, gp, **common, recipient=team, channel="in_person", reason="narrower",
            now=svc.now(), stop_pending=exchange.stop_for_consent, policy="explicit",
        )  # fmt: skip
        consent.record(
            db, gp, **common, recipient=team, decision="permit", basis="explicit",
            data_categories=("execution_request",), valid_from=svc.now(), given_at=svc.now(),
            channel="in_person", performer="patient", now=svc.now(),
        )  # fmt: skip

    svc.store.write_sync(narrow)
    # A permit for execution requests only: the care request needs its own
    with pytest.raises(ConsentRefusedError) as caught:
        await exchange.send(svc, loop.gw.gp, care_example(reserved=False), GP_PASSPHRASE)
    assert "care_request" in str(caught.value.context) + caught.value.message_nl() + str(
        caught.value
    )
    sent = await exchange.send(svc, loop.gw.gp, EXAMPLE, GP_PASSPHRASE)
    assert sent.reference.startswith("UVZ-")


async def test_the_answer_copy_names_the_care_requests_own_data_categories(loop: Loop) -> None:
    """Issue 22 leftover: the sealed answer going home carries what the request carries
    (care_request, plus execution_request for reserved lines), not a fixed one."""
    from tests.test_orders import _pin_practice_key

    svc = loop.gw.svc
    await _pin_practice_key(loop)
    accept = {"status": "geaccepteerd", "nurse_in_charge": "V. Zwaan",
              "nurse_phone": "06 12345678", "care_start": first_visit(loop),
              "performer_level": "verpleegkundige", "competence_confirmed": True}  # fmt: skip
    expected = {}
    for reserved, categories in ((True, "care_request,execution_request"), (False, "care_request")):
        sent = await exchange.send(svc, loop.gw.gp, care_example(reserved=reserved), GP_PASSPHRASE)
        await answer.record_answer(svc, loop.nurse_a, sent.reference, accept)
        expected[sent.reference] = categories
    for reference, categories in expected.items():
        assert _audit_categories(svc, reference, "request.answer_copy") == [categories]
        contexts = svc.store.read_sync(
            lambda db, ref=reference: [
                json.loads(r[0])["data_categories"]
                for r in db.execute(
                    "SELECT o.audit_context FROM outbox o JOIN answer_copies c "
                    "ON c.message_id = o.message_id WHERE c.reference = ?",
                    [ref],
                )
            ]
        )
        assert contexts == [categories]
