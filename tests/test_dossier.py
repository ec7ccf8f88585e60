"""Issue 21, "voor het dossier": the practice downloads an answered request as PDF and as JSON
with the GP's detached signature, for its own record (HIS); nobody else can, every download
is audited, and neither the URL nor the file name says anything about the patient.

Real gateway (tests/loop_fixtures.py), real gpg, the real aiohttp app over HTTP.
"""

from __future__ import annotations

import base64
import email
import io
import json
import subprocess
import tempfile
from email import policy
from pathlib import Path
from typing import Any

import aiohttp
import pypdf
import pytest

from securemail.access import SYSTEM
from securemail.accounts import apitoken, auth
from securemail.exchange import answer, record
from securemail.exchange import send as exchange
from securemail.web import create_app
from tests.e2e.webflow import login
from tests.fhir_r4 import assert_valid, problems
from tests.gateway import GP_PASSPHRASE, example
from tests.loop_fixtures import Loop, audit_codes

ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 87654321",
    "nurse_reachability": "Ma-vr 8-17 uur",
    "nurse_big": "39012345601",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}

PATIENT = example()["patient"]


async def _answered(loop: Loop) -> str:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    return sent.reference


def _pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(body)).pages)


def _gpg_verify(home: Path, signed_order: dict[str, str]) -> str:
    """What the practice's HIS does with the JSON: its own gpg checks the GP's signature."""
    content = base64.b64decode(signed_order["signed_content_base64"])
    with tempfile.NamedTemporaryFile(dir=home, suffix=".asc") as sig:
        sig.write(signed_order["signature"].encode("ascii"))
        sig.flush()
        out = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", "--verify",
             sig.name, "-"],
            input=content, capture_output=True, check=False, timeout=60,
        )  # fmt: skip
    return out.stderr.decode()


def _assert_patient_free(value: str) -> None:
    for secret in (PATIENT["bsn"], PATIENT["name"], "Vries", PATIENT["birth_date"]):
        assert secret not in value


async def _server(loop: Loop, aiohttp_server: Any) -> tuple[Any, str]:
    svc = loop.gw.svc
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    return server, str(server.make_url("")).rstrip("/")


async def test_the_gp_downloads_the_dossier_as_pdf_and_signed_json(
    loop: Loop, aiohttp_server: Any
) -> None:
    reference = await _answered(loop)
    server, site = await _server(loop, aiohttp_server)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, site, loop.credentials("huisarts"))
        async with http.get(f"{site}/requests/{reference}") as r:
            page = await r.text()
        assert f'href="/requests/{reference}/dossier.pdf"' in page
        assert f'href="/requests/{reference}/dossier.json"' in page
        downloads = {}
        for fmt in ("pdf", "json"):
            url = f"{site}/requests/{reference}/dossier.{fmt}"
            async with http.get(url) as r:
                assert r.status == 200, await r.text()
                disposition = r.headers["Content-Disposition"]
                assert disposition == f'attachment; filename="dossier-{reference}.{fmt}"'
                assert r.headers["Cache-Control"] == "no-store"
                _assert_patient_free(url + disposition)
                downloads[fmt] = await r.read()
    # The PDF: the signed request and the team's answer, readable
    assert downloads["pdf"].startswith(b"%PDF-")
    text = _pdf_text(downloads["pdf"])
    for expected in (reference, PATIENT["name"], "Verpleegkundige Zwaan", "06 87654321",
                     "2030-01-02T09:00", "Ondertekend door de gateway namens"):  # fmt: skip
        assert expected in text, expected
    # The JSON: the request as signed, the answer, and the GP's signature the HIS can check
    doc = json.loads(downloads["json"])
    assert doc["document"] == record.DOCUMENT and doc["reference"] == reference
    assert doc["request"]["patient"]["bsn"] == PATIENT["bsn"]
    assert doc["answer"]["nurse_phone"] == "06 87654321"
    assert doc["answer"]["care_start"].startswith("2030-01-02T09:00")
    assert doc["signed_order"]["kind"] == "rfc3156_multipart_signed"
    status = _gpg_verify(loop.gw.nurse_home, doc["signed_order"])
    assert "[GNUPG:] GOODSIG" in status and f"VALIDSIG {doc['signer_fingerprint']}" in status
    # The signed bytes hold the request's JSON exactly as exported
    signed = email.message_from_bytes(
        base64.b64decode(doc["signed_order"]["signed_content_base64"]), policy=policy.default
    )
    [part] = [p for p in signed.walk() if p.get_content_type() == "application/json"]
    assert json.loads(part.get_payload(decode=True)) == doc["request"]
    # Each download is one audit row naming its format
    assert audit_codes(loop.gw.svc, reference).count("request.record_export") == 2
    await server.close()


async def test_a_tampered_signature_does_not_verify(loop: Loop) -> None:
    reference = await _answered(loop)
    svc = loop.gw.svc
    out = svc.store.write_sync(lambda db: record.export(db, svc, loop.gw.gp, reference, "json"))
    signed_order = json.loads(out.body)["signed_order"]
    content = base64.b64decode(signed_order["signed_content_base64"])
    forged = content.replace(b"huisarts@", b"huisartz@", 1)
    assert forged != content
    signed_order["signed_content_base64"] = base64.b64encode(forged).decode()
    assert "[GNUPG:] BADSIG" in _gpg_verify(loop.gw.nurse_home, signed_order)


async def test_a_nurse_may_not_download_the_practices_dossier(
    loop: Loop, aiohttp_server: Any
) -> None:
    # The team's nurse sees the request, but the dossier export is the practice's
    reference = await _answered(loop)
    server, site = await _server(loop, aiohttp_server)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, site, loop.credentials("nurse1"))
        async with http.get(f"{site}/requests/{reference}") as r:
            assert "dossier.pdf" not in await r.text()
        async with http.get(f"{site}/requests/{reference}/dossier.json") as r:
            assert r.status == 403  # the role gate: the export is the practice's
            body = await r.text()
    assert "Zwaan" not in body and PATIENT["bsn"] not in body
    assert "request.record_export" not in audit_codes(loop.gw.svc, reference)
    await server.close()


def _token(loop: Loop, actor: Any) -> str:
    svc = loop.gw.svc
    return svc.store.write_sync(
        lambda db: apitoken.create(db, actor, name="HIS", scopes=["request:read"], now=svc.now())[0]
    )


async def test_the_practices_his_token_gets_the_dossier_and_another_practice_404(
    loop: Loop, aiohttp_server: Any
) -> None:
    svc = loop.gw.svc
    reference = await _answered(loop)
    svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="anders", name="C. Anders", role="gp", org_code="11223344",
            password="other gp password 123",
            profile={"big": "49012345601", "phone": "020-1234567",
                     "out_of_hours_phone": "088-0030600", "function": "huisarts"},
            now=svc.now_iso(),
        )
    )  # fmt: skip
    other = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "anders"))
    own_token, other_token = _token(loop, loop.gw.gp), _token(loop, other)
    server, site = await _server(loop, aiohttp_server)
    url = f"{site}/api/requests/{reference}/dossier.json"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {own_token}"}) as r:
            assert r.status == 200
            assert (await r.json())["answer"]["nurse_in_charge"] == "Verpleegkundige Zwaan"
        async with http.get(url, headers={"Authorization": f"Bearer {other_token}"}) as r:
            assert r.status == 404
            body = await r.text()
        missing = f"{site}/api/requests/UVZ-2099-999999/dossier.json"
        async with http.get(missing, headers={"Authorization": f"Bearer {other_token}"}) as r:
            assert r.status == 404
            assert await r.text() == body  # refused looks exactly like missing
    assert "Zwaan" not in body and PATIENT["bsn"] not in body
    codes = audit_codes(svc, reference)
    assert codes.count("request.record_export") == 1 and "access.denied" in codes
    await server.close()


async def test_after_the_content_purge_there_is_no_dossier(loop: Loop) -> None:
    from securemail.contentbox import ContentPurgedError

    svc = loop.gw.svc
    reference = await _answered(loop)
    svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE requests SET content_purged_at = ? WHERE reference = ?",
            [svc.now_iso(), reference],
        )
    )
    with pytest.raises(ContentPurgedError):
        svc.store.write_sync(lambda db: record.export(db, svc, loop.gw.gp, reference, "pdf"))
    assert "request.record_export" not in audit_codes(svc, reference)


# -- the FHIR R4 form of the same record ------------------------------------------------------


def _fhir(loop: Loop, reference: str) -> dict[str, Any]:
    svc = loop.gw.svc
    out = svc.store.write_sync(lambda db: record.export(db, svc, loop.gw.gp, reference, "fhir"))
    assert out.content_type == "application/fhir+json"
    assert out.file_name == f"dossier-{reference}.fhir.json"
    return json.loads(out.body)


def _entries(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["resource"]["resourceType"]: e for e in bundle["entry"]}


async def test_the_fhir_export_of_an_accepted_request_validates_as_r4(loop: Loop) -> None:
    reference = await _answered(loop)
    bundle = _fhir(loop, reference)
    assert_valid(bundle)
    entries = _entries(bundle)
    task = entries["Task"]["resource"]
    assert task["status"] == "accepted" and task["intent"] == "order"
    assert task["focus"]["reference"] == entries["ServiceRequest"]["fullUrl"]
    assert task["owner"]["reference"] == entries["PractitionerRole"]["fullUrl"]
    assert task["executionPeriod"]["start"] == "2030-01-02T09:00:00+01:00"
    role = entries["PractitionerRole"]["resource"]
    assert role["practitioner"]["display"] == "Verpleegkundige Zwaan"
    assert role["telecom"] == [{"system": "phone", "value": "06 87654321", "use": "work"}]
    service = entries["ServiceRequest"]["resource"]
    assert service["status"] == "active" and service["intent"] == "order"
    assert service["subject"]["identifier"]["value"] == PATIENT["bsn"]
    assert "request.record_export" in audit_codes(loop.gw.svc, reference)
    # the medication as a MedicationRequest based on the order; the GP's signature as
    # Provenance carrying the same detached signature the JSON export holds
    [medication] = [e["resource"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "MedicationRequest"]  # fmt: skip
    expected = example()["procedures"][0]["medication"]
    assert medication["medicationCodeableConcept"]["text"] == expected["name"]
    assert medication["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": expected["dose_value"],
        "unit": expected["dose_unit"],
    }
    assert medication["basedOn"][0]["reference"] == entries["ServiceRequest"]["fullUrl"]
    provenance = entries["Provenance"]["resource"]
    assert provenance["target"][0]["reference"] == entries["ServiceRequest"]["fullUrl"]
    svc = loop.gw.svc
    plain = svc.store.write_sync(lambda db: record.export(db, svc, loop.gw.gp, reference, "json"))
    signature = json.loads(plain.body)["signed_order"]["signature"]
    assert base64.b64decode(provenance["signature"][0]["data"]).decode() == signature


async def test_a_declined_request_is_a_rejected_task_with_the_teams_reason(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    declined = {"status": "afgewezen", "reason": "Geen bekwame verpleegkundige beschikbaar"}
    await answer.record_answer(svc, loop.nurse_a, sent.reference, declined)
    bundle = _fhir(loop, sent.reference)
    assert_valid(bundle)
    entries = _entries(bundle)
    assert "PractitionerRole" not in entries
    task = entries["Task"]["resource"]
    assert task["status"] == "rejected"
    assert task["statusReason"]["text"] == declined["reason"]


async def test_the_validator_refuses_our_bundle_with_a_dutch_status(loop: Loop) -> None:
    # The check would catch a mapping slip: the team's Dutch word is not an R4 task status
    reference = await _answered(loop)
    bundle = _fhir(loop, reference)
    _entries(bundle)["Task"]["resource"]["status"] = "geaccepteerd"
    assert any("Task.status" in p for p in problems(bundle))


async def test_the_fhir_export_uses_the_dutch_identifier_systems_and_claims_no_profile(
    loop: Loop,
) -> None:
    """nl-core (zib 2020) slices identifiers on these systems; we use them where our base R4
    resources carry the value, and claim no nl-core profile we cannot validate against."""
    reference = await _answered(loop)
    bundle = _fhir(loop, reference)
    assert_valid(bundle)
    entries = _entries(bundle)
    svc = loop.gw.svc
    plain = svc.store.write_sync(lambda db: record.export(db, svc, loop.gw.gp, reference, "json"))
    principal = json.loads(plain.body)["request"]["principal"]  # as signed
    assert principal["agb"] and principal["practice_agb"]
    gp = entries["Practitioner"]["resource"]
    assert {(i["system"], i["value"]) for i in gp["identifier"]} == {
        ("http://fhir.nl/fhir/NamingSystem/big", principal["big"]),
        ("http://fhir.nl/fhir/NamingSystem/agb-z", principal["agb"]),
    }
    practice = entries["Organization"]["resource"]
    assert practice["identifier"] == [
        {"system": "http://fhir.nl/fhir/NamingSystem/agb-z", "value": principal["practice_agb"]}
    ]
    service = entries["ServiceRequest"]["resource"]
    assert service["subject"]["identifier"]["system"] == "http://fhir.nl/fhir/NamingSystem/bsn"
    assert service["requester"]["reference"] == entries["Practitioner"]["fullUrl"]
    nurse = entries["PractitionerRole"]["resource"]["practitioner"]["identifier"]
    assert nurse["system"] == "http://fhir.nl/fhir/NamingSystem/big"
    assert not [e for e in bundle["entry"] if "meta" in e["resource"]]
