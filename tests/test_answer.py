"""The team's answer: validation against the request, scoping, one answer only, the practice's
notice (reference only), and changes/withdrawals that supersede a request.

Real gateway (tests/loop_fixtures.py): real gpg seals, real sqlite, real audit chain.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import aiohttp
import pytest

from securemail.errors import NotFoundError
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.form import request as forms
from securemail.home import gateway_fingerprint
from securemail.message import notify
from securemail.openpgp.keyring import Envelope, SealInput, VerificationError
from securemail.web import create_app
from tests.e2e.webflow import csrf_of, login
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    TEAM,
    example,
)
from tests.loop_fixtures import Loop, audit_codes, notices

ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}


async def test_accepted_answer_without_nurse_in_charge_is_refused(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    data = {k: v for k, v in ACCEPT.items() if k != "nurse_in_charge"}
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(svc, loop.nurse_a, sent.reference, data)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("nurse_in_charge", "answer.nurse_required")
    ]
    assert info.value.errors[0].message_nl  # a Dutch text next to the field
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert status["state"] == "open"
    assert "request.answer" not in audit_codes(svc, sent.reference)


async def test_accepted_answer_is_stored_once_and_practice_told_without_names(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    result = await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    assert result.status == "geaccepteerd"
    # The GP's page shows the nurse in charge (after login, audited view)
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["state"] == "answered"
    assert view["answer"]["nurse_in_charge"] == "Verpleegkundige Zwaan"
    assert view["answer"]["answered_by"] == "Nurse One"
    assert view["hops"][0]["outcome"] == "geaccepteerd"
    assert "request.answer" in audit_codes(svc, sent.reference)
    # One notice to the practice: the reference, no nurse's name, no patient data
    [raw] = notices(svc, "answered")
    notify.require_notice_mime(raw, svc.settings)
    assert sent.reference.encode() in raw
    for secret in ("Zwaan", "Nurse One", EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"]):
        assert secret.encode() not in raw
    # A second answer is refused: the request is no longer open
    with pytest.raises(answer.AnswerClosedError):
        await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)


async def test_answer_by_nurse_of_another_team_looks_like_not_found(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    with pytest.raises(NotFoundError):
        await answer.record_answer(svc, loop.nurse_b, sent.reference, ACCEPT)
    assert "access.denied" in audit_codes(svc, sent.reference)
    # and a GP cannot answer at all
    with pytest.raises(NotFoundError):
        await answer.record_answer(svc, loop.gw.gp, sent.reference, ACCEPT)


async def test_declined_needs_a_reason_and_vig_needs_supervision(loop: Loop) -> None:
    svc = loop.gw.svc
    data = example()
    data["procedures"][0]["code"] = "CATH_SUPRAPUBIC"  # no functional independence
    data["procedures"][0].pop("medication")
    data["procedures"][0]["supervision_arranged"] = True
    data["procedures"][1]["supervision_arranged"] = False
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference, {**ACCEPT, "performer_level": "vig"}
        )
    assert [e.code for e in info.value.errors] == ["answer.vig_requires_supervision"]
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(svc, loop.nurse_a, sent.reference, {"status": "afgewezen"})
    assert [e.field for e in info.value.errors] == ["reason"]
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "Geen capaciteit"}
    )
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert (status["state"], status["answer_status"]) == ("answered", "afgewezen")


async def test_withdrawal_supersedes_the_earlier_request_and_tells_the_team_to_stop(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    first = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    # A change for another patient is refused with a field error on supersedes
    other = example()
    other.update(kind="wijziging", supersedes=first.reference)
    other["patient"]["bsn"] = "999990160"
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, other, GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("supersedes", "supersedes.other_patient")
    ]
    # A withdrawal of the first request
    withdrawal = example()
    withdrawal.update(kind="intrekking", supersedes=first.reference)
    second = await exchange.send(svc, loop.gw.gp, withdrawal, GP_PASSPHRASE)
    before = svc.store.read_sync(lambda db: exchange.status(db, first.reference))
    assert (before["state"], before["superseded_by"]) == ("withdrawn", second.reference)
    assert "request.withdraw" in audit_codes(svc, first.reference)
    # The team sees the chain and the instruction to stop, on the withdrawal's page
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.nurse_a, second.reference))
    assert [c["reference"] for c in view["chain"]] == [first.reference, second.reference]
    text = exchange.render_text(svc, view)
    assert f"INTREKKING: stop met de uitvoering van verzoek {first.reference}" in text
    assert f"Reageren: https://gateway.example/requests/{second.reference}" in text
    # Nothing can supersede the withdrawn request again, and the withdrawal takes no answer
    again = example()
    again.update(kind="wijziging", supersedes=first.reference)
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, again, GP_PASSPHRASE)
    assert info.value.errors[0].code == "supersedes.closed"
    with pytest.raises(answer.AnswerClosedError):
        await answer.record_answer(svc, loop.nurse_a, second.reference, ACCEPT)
    # Nor can it be withdrawn from another practice's point of view: unknown reference
    assert json.loads(json.dumps(view["chain"]))  # plain data, no patient fields
    assert all(set(c) <= {"reference", "kind", "state", "supersedes", "superseded_by",
                          "created_at"} for c in view["chain"])  # fmt: skip


async def test_answer_form_on_the_request_page_errors_in_dutch_then_gp_sees_the_nurse(
    loop: Loop, aiohttp_server: Any
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    site = str(server.make_url("")).rstrip("/")
    page_url = f"{site}/requests/{sent.reference}"
    jar = aiohttp.CookieJar
    async with (
        aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as nurse,
        aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as gp,
    ):
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(page_url) as r:
            page = await r.text()
        assert f'action="/requests/{sent.reference}/answer"' in page
        # Accepting without the nurse in charge: the error sits next to that field
        bad = {"status": "geaccepteerd", "performer_level": "verpleegkundige",
               "nurse_phone": "06 12345678", "care_start": "2030-01-02T09:00",
               "competence_confirmed": "true", "csrf_token": csrf_of(page)}  # fmt: skip
        async with nurse.post(f"{page_url}/answer", data=bad) as r:
            page = await r.text()
        assert r.status == 422
        assert re.search(r'data-field="nurse_in_charge"[^>]*>Vul de naam', page)
        assert '<option value="verpleegkundige" selected>' in page  # values kept
        good = {**bad, "nurse_in_charge": "Verpleegkundige Zwaan", "csrf_token": csrf_of(page)}
        async with nurse.post(f"{page_url}/answer", data=good) as r:
            assert r.status == 200 and str(r.url) == page_url
        # The GP's page shows the answer with the nurse's name
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(page_url) as r:
            page = await r.text()
        assert 'class="nurse-in-charge">Verpleegkundige Zwaan<' in page
        assert "answer" not in str(r.url) and "Zwaan" not in str(r.url)
        async with gp.get(f"{site}/requests") as r:
            assert "geaccepteerd" in await r.text()
    await server.close()


def legacy_json_signature(svc: Any, gp_fpr: str, data: bytes) -> bytes:
    """The GP's detached signature over request.json, as requests sealed before one
    signature per message kept it (made here with the gpg command line)."""
    out = subprocess.run(
        ["gpg", "--homedir", str(svc.keyring.homedir), "--batch", "--pinentry-mode",
         "loopback", "--passphrase-fd", "0", "--local-user", gp_fpr, "--armor",
         "--detach-sign"],
        input=GP_PASSPHRASE.encode() + b"\n" + data, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout


async def test_forwarding_refuses_a_signature_that_is_not_the_gps(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    row = svc.store.read_sync(lambda db: exchange.require_row(db, sent.reference))
    # Since one signature per message a new request keeps no detached signature ...
    assert bytes(row["json_signature"]) == b""
    # ... but one sealed before keeps the GP's: given such a signature over the JSON,
    signed = svc.store.read_sync(lambda db: requestview.document_bytes(db, row))
    signature = legacy_json_signature(svc, row["signer_fingerprint"], signed)
    fpr = gateway_fingerprint(svc.store)
    document = SealInput(
        reference=sent.reference,
        text="x",
        html="<p>x</p>",
        json=signed + b" ",  # not what the GP signed
        signer_public_key=await svc.keyring.export_public(row["signer_fingerprint"]),
    )
    envelope = Envelope(sender="gateway@gateway.example", recipient=TEAM, subject="x")
    with pytest.raises(VerificationError):
        await svc.keyring.seal(
            document, signer=fpr, passphrase=None, recipients=loop.gw.member_fingerprints,
            envelope=envelope, json_signature=signature, json_signer=row["signer_fingerprint"],
        )  # fmt: skip
    # and over the JSON it signed, it travels, verified, as request.json.asc
    forwarded = await svc.keyring.seal(
        SealInput(sent.reference, "x", "<p>x</p>", signed,
                  document.signer_public_key),
        signer=fpr, passphrase=None, recipients=loop.gw.member_fingerprints, envelope=envelope,
        json_signature=signature, json_signer=row["signer_fingerprint"],
    )  # fmt: skip
    assert forwarded.json_signature == signature
