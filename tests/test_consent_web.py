"""The consent screens over real HTTP against the real app (TOTP login, CSRF, multipart):
record and see, object and be refused, withdraw with one action and stop a queued request,
bad input written nowhere, the privacy officer's register and FHIR export, and every
refusal (role, organisation, CSRF); the BSN never in a URL or a Location."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from securemail import consent
from securemail.accounts import auth
from securemail.region import directory
from tests.gateway import EXAMPLE
from tests.test_web_security import logged_in
from tests.web_fixtures import Browser, Response, WebApp

BSN = EXAMPLE["patient"]["bsn"]  # gp_a: consent for Centrum and Oost; gp_b: for Centrum
NEW_BSN = "111222333"  # no record yet
CENTRUM, OOST = "centrum@zorg.example", "oost@zorg.example"


def ids(webapp: WebApp) -> dict[str, int]:
    def read(db: Any) -> dict[str, int]:
        return {
            "centrum": directory.team_by_address(db, CENTRUM).id,
            "oost": directory.team_by_address(db, OOST).id,
            "zorg": directory.org_by_code(db, "87000001").id,
        }

    return webapp.svc.store.read_sync(read)


def rows(webapp: WebApp, bsn: str) -> list[consent.ConsentRecord]:
    org = webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, "gp_a").org_id)
    return webapp.svc.store.read_sync(
        lambda db: consent.list_records(
            db, source_org_id=org, patient_bsn=bsn, now=webapp.clock.now, history=True
        )
    )


def counts(webapp: WebApp) -> tuple[int, int]:
    return webapp.svc.store.read_sync(
        lambda db: (
            db.execute("SELECT count(*) FROM consents").fetchone()[0],
            db.execute(
                "SELECT count(*) FROM audit_events WHERE event_code IN "
                "('consent.record', 'consent.withdraw')"
            ).fetchone()[0],
        )
    )


async def multipart(
    b: Browser,
    path: str,
    fields: dict[str, str],
    file: tuple[str, bytes] | None = None,
    *,
    csrf: bool = True,
) -> Response:
    form = aiohttp.FormData()
    if csrf:
        form.add_field("csrf_token", b.csrf)
    for k, v in fields.items():
        form.add_field(k, v)
    if file is not None:
        form.add_field("evidence", file[1], filename=file[0], content_type="application/pdf")
    return await b.request("POST", path, data=form)


def field_errors(r: Response) -> dict[str, str]:
    return dict(re.findall(r'class="field-error" data-field="([^"]+)"[^>]*>([^<]+)<', r.text))


async def followed(b: Browser, r: Response) -> Response:
    """Post/Redirect/Get: a successful record or withdraw answers 303 to its outcome page."""
    assert r.status == 303 and r.location.startswith("/consents/done/"), (r.status, r.text[:800])
    return await b.get(r.location)


def no_bsn_in_urls(r: Response, *bsns: str) -> None:
    for bsn in bsns:
        assert bsn not in r.url and bsn not in r.location
        assert not re.search(rf'(href|action)="[^"]*{bsn}', r.text)


async def test_gp_records_a_consent_with_evidence_and_sees_it(webapp):
    b = await logged_in(webapp, "gp_a")
    assert "BSN van de cliënt" in (await b.get("/consents")).text
    page = await b.post("/consents/patient", {"bsn": NEW_BSN})
    assert page.status == 200, page.text[:500]
    assert "Er is niets vastgelegd voor deze cliënt" in page.text
    proof = b"%PDF-1.4 signed consent form"
    r = await multipart(
        b,
        "/consents/record",
        {
            "bsn": NEW_BSN,
            "recipient": f"org:{ids(webapp)['zorg']}",
            "decision": "permit",
            "valid_until": (webapp.clock.now + timedelta(days=400)).date().isoformat(),
            "channel": "paper",
            "performer": "representative",
            "performer_name": "M. de Vries",
        },
        ("toestemming.pdf", proof),
    )
    posted = r
    r = await followed(b, r)
    assert r.status == 200, r.text[:800]
    assert "Vastgelegd: toestemming voor Zorg" in r.text
    assert "ja: toestemming.pdf" in r.text and "M. de Vries" in r.text
    assert "op papier" in r.text and "Gp A" in r.text  # channel, who recorded
    [rec] = rows(webapp, NEW_BSN)
    assert (rec.status, rec.decision, rec.basis, rec.recipient.org_id) == (
        "active",
        "permit",
        "explicit",
        ids(webapp)["zorg"],
    )
    assert rec.evidence_ref == "toestemming.pdf"
    assert rec.evidence_sha256 == hashlib.sha256(proof).hexdigest()
    views = webapp.audit("consent.view")
    assert views[-1]["patient_id"] == NEW_BSN and views[-1]["user_name"] == "gp_a"
    for resp in (page, posted, r):
        no_bsn_in_urls(resp, NEW_BSN)
    # A refresh of the outcome page shows it again and records nothing twice
    again = await b.get(posted.location)
    assert again.status == 200 and "Vastgelegd: toestemming voor Zorg" in again.text
    assert len(rows(webapp, NEW_BSN)) == 1
    # Someone else cannot open this person's outcome page: back to the search, no patient
    other = await logged_in(webapp, "gp_a2")
    theirs = await other.get(posted.location)
    assert theirs.status == 303 and theirs.location == "/consents"


async def test_an_objection_refuses_a_send_naming_the_objection(webapp):
    b = await logged_in(webapp, "gp_a")
    r = await b.post(
        "/consents/record",
        {
            "bsn": BSN,
            "recipient": f"team:{ids(webapp)['oost']}",
            "decision": "deny",
            "channel": "phone",
            "performer": "patient",
        },
    )
    r = await followed(b, r)
    assert r.status == 200, r.text[:800]
    assert "Vastgelegd: bezwaar voor Oost" in r.text and "(versie 2)" in r.text
    assert "Eerdere versies" in r.text  # the permit it replaced
    current = [x for x in rows(webapp, BSN) if x.recipient.team_id == ids(webapp)["oost"]]
    assert [(x.version, x.decision) for x in current] == [(2, "deny"), (1, "permit")]
    with pytest.raises(consent.ConsentDeniedError) as refused:
        await webapp.send("gp_a", OOST)  # the real send path: consent is checked first
    assert refused.value.message_nl() == (
        "De cliënt heeft bezwaar gemaakt tegen het delen met oost@zorg.example."
    )
    assert refused.value.context["consent_id"] == current[0].consent_id
    assert current[0].ref in refused.value.reason
    check = webapp.audit("consent.check")[-1]
    assert check["outcome"] == "refused"
    assert check["check_consent"] == f"deny:{current[0].ref}"


async def test_withdraw_is_one_action_and_stops_the_queued_request(webapp):
    # A region with explicit consent: withdrawing the permit leaves no basis (under direct
    # care the presumed consent would remain, and only an objection stops the send).
    svc = webapp.svc
    svc.settings = svc.settings.replace(consent={"policy": "explicit"})
    ref = await webapp.send("gp_a", CENTRUM)  # the worker does not run: it stays queued
    b = await logged_in(webapp, "gp_a")
    page = await b.post("/consents/patient", {"bsn": BSN})
    forms = re.findall(r'<form method="post" action="/consents/withdraw"', page.text)
    assert len(forms) == 2  # one per active record: Centrum and Oost
    r = await b.post(
        "/consents/withdraw",
        {
            "bsn": BSN,
            "recipient": f"team:{ids(webapp)['centrum']}",
            "channel": "phone",
            "reason": "wil het zelf regelen",
        },
    )
    r = await followed(b, r)
    assert r.status == 200, r.text[:800]
    assert "Ingetrokken met ingang van nu: toestemming voor Centrum" in r.text
    assert f'<a href="/requests/{ref}">{ref}</a>: gestopt: toestemming ingetrokken' in r.text
    centrum = [x for x in rows(webapp, BSN) if x.recipient.team_id == ids(webapp)["centrum"]]
    assert (centrum[0].status, centrum[0].withdrawal_channel, centrum[0].reason) == (
        "withdrawn",
        "phone",
        "wil het zelf regelen",
    )
    detail = await b.get(f"/requests/{ref}")
    assert "gestopt: toestemming ingetrokken" in detail.text
    status = webapp.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT status, stop_reason FROM outbox WHERE reference = ?", [ref]
        ).fetchone()
    )
    assert tuple(status) == ("stopped", consent.STOP_REASON)
    assert ref in webapp.audit("consent.withdraw")[-1]["outcome_detail"]
    no_bsn_in_urls(r, BSN)
    # Withdrawing again: nothing to withdraw, said next to the withdraw forms, nothing written.
    before = counts(webapp)
    again = await b.post(
        "/consents/withdraw",
        {"bsn": BSN, "recipient": f"team:{ids(webapp)['centrum']}", "channel": "phone"},
    )
    assert again.status == 422
    assert (
        "geen geldige toestemming of bezwaar voor deze ontvanger" in field_errors(again)["withdraw"]
    )
    assert counts(webapp) == before


async def test_bad_input_shows_the_dutch_error_next_to_the_field_and_writes_nothing(webapp):
    b = await logged_in(webapp, "gp_a")
    before = counts(webapp)
    views = len(webapp.audit("consent.view"))
    r = await b.post("/consents/patient", {"bsn": "123456789"})
    assert r.status == 422
    assert "geen geldig BSN" in field_errors(r)["bsn"]
    base = {
        "bsn": NEW_BSN,
        "recipient": "category:wijkverpleging",
        "decision": "permit",
        "channel": "in_person",
        "performer": "patient",
    }
    cases = {
        "valid_until": {"valid_from": "2030-05-10", "valid_until": "2030-05-01"},
        "valid_from": {"valid_from": "10-05-2030"},
        "performer_name": {"performer": "representative"},
        "recipient": {"recipient": "team:999999"},
        "basis": {"decision": "deny", "basis": "explicit"},
        "evidence_ref": {"basis": "implied_referral", "recipient": f"team:{ids(webapp)['oost']}"},
    }
    for name, change in cases.items():
        r = await b.post("/consents/record", {**base, **change})
        assert r.status == 422, (name, r.text[:500])
        assert name in field_errors(r), (name, field_errors(r))
        assert "Er is niets vastgelegd" in r.text
    assert (
        "De einddatum ligt vóór de begindatum."
        in (await b.post("/consents/record", {**base, **cases["valid_until"]})).text
    )
    r = await b.post("/consents/record", {**base, "bsn": "12345"})
    assert r.status == 422 and "bsn" in field_errors(r)
    assert counts(webapp) == before
    # Only the successful page loads of the error pages were viewed; no record, no withdrawal.
    assert len(webapp.audit("consent.view")) == views + len(cases) + 1


async def test_privacy_officer_sees_counts_per_category_and_exports_fhir(webapp):
    svc = webapp.svc
    now = webapp.clock.now
    gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_a"))
    team = ids(webapp)

    def add(db: Any, bsn: str, recipient: consent.Recipient, **kw: Any) -> None:
        consent.record(
            db,
            gp,
            patient_bsn=bsn,
            source_org_id=gp.org_id,
            recipient=recipient,
            decision="permit",
            basis="explicit",
            given_at=now - timedelta(days=900),
            channel="in_person",
            performer="patient",
            now=now,
            **{"valid_from": now, **kw},
        )

    def fill(db: Any) -> None:
        add(
            db,
            NEW_BSN,
            consent.Recipient(org_id=team["zorg"]),
            valid_until=now + timedelta(days=10),
            evidence=b"form",
        )  # expiring, with evidence
        add(
            db,
            NEW_BSN,
            consent.Recipient(category="wijkverpleging"),
            valid_from=now - timedelta(days=800),
            valid_until=now - timedelta(days=400),
        )
        consent.withdraw(
            db,
            gp,
            patient_bsn=BSN,
            source_org_id=gp.org_id,
            recipient=consent.Recipient(team_id=team["oost"]),
            channel="portal",
            now=now,
            stop_pending=lambda *a, **k: [],
        )

    svc.store.write_sync(fill)
    po = await logged_in(webapp, "privacy_a")
    r = await po.get("/privacy/consents")
    assert r.status == 200, r.text[:500]
    shown = dict(re.findall(r'data-count="(\w+)">(\d+)<', r.text))
    # active: Centrum (template) + Zorg; no evidence: Centrum; withdrawn: Oost; expired: 1
    assert shown == {
        "active": "2",
        "expiring": "1",
        "without_evidence": "1",
        "withdrawn": "1",
        "expired": "1",
        "entered_in_error": "0",
    }
    for name in ("active", "expiring", "without_evidence", "withdrawn", "expired"):
        assert f'data-list="{name}"' in r.text
    assert BSN in r.text and NEW_BSN in r.text and "Oost (oost@zorg.example)" in r.text
    assert webapp.audit("consent.view")[-1]["user_name"] == "privacy_a"
    one = await po.get("/privacy/consents?list=withdrawn&page=1")
    assert 'data-list="withdrawn"' in one.text and 'data-list="active"' not in one.text
    export = await po.post("/privacy/consents/export")
    assert export.status == 200
    assert export.headers["Content-Type"].startswith("application/fhir+json")
    assert "attachment" in export.headers["Content-Disposition"]
    bundle = json.loads(export.text)
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 4
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Consent"}
    assert webapp.audit("consent.export")[-1]["user_name"] == "privacy_a"
    # Another organisation's officer sees only that practice's one record (gp_b: Centrum).
    other = await logged_in(webapp, "privacy_b")
    page = await other.get("/privacy/consents")
    assert dict(re.findall(r'data-count="(\w+)">(\d+)<', page.text))["active"] == "1"
    assert NEW_BSN not in page.text and "Oost" not in page.text
    assert len(json.loads((await other.post("/privacy/consents/export")).text)["entry"]) == 1


async def test_refusals_by_role_organisation_and_csrf(webapp):
    gp_b = await logged_in(webapp, "gp_b")
    for user in ("nurse_c", "admin"):
        b = await logged_in(webapp, user)
        assert (await b.get("/consents")).status == 403
        for path in ("/consents/patient", "/consents/record", "/consents/withdraw"):
            r = await b.post(
                path, {"bsn": BSN, "recipient": "category:wijkverpleging", "channel": "phone"}
            )
            assert r.status == 403, (user, path)
            assert BSN not in r.text
        assert (await b.get("/privacy/consents")).status == 403
        assert (await b.post("/privacy/consents/export")).status == 403
    assert (await gp_b.get("/privacy/consents")).status == 403  # the officer's page
    po = await logged_in(webapp, "privacy_a")
    r = await po.post("/consents/record", {"bsn": BSN, "recipient": "category:wijkverpleging"})
    assert r.status == 403
    page = await po.post("/consents/patient", {"bsn": BSN})  # may view, not change
    assert page.status == 200 and "Oost" in page.text and "/consents/withdraw" not in page.text
    # The other practice sees only its own record and cannot withdraw ours.
    page = await gp_b.post("/consents/patient", {"bsn": BSN})
    assert "Centrum" in page.text and "Oost (oost@" not in page.text
    before = counts(webapp)
    r = await gp_b.post(
        "/consents/withdraw",
        {"bsn": BSN, "recipient": f"team:{ids(webapp)['oost']}", "channel": "phone"},
    )
    assert r.status == 422 and "withdraw" in field_errors(r)
    # Missing or wrong CSRF: refused, nothing written.
    gp_a = await logged_in(webapp, "gp_a")
    for token in (None, "wrong"):
        data = {"bsn": BSN, "recipient": f"team:{ids(webapp)['oost']}", "channel": "phone"}
        if token is not None:
            data["csrf_token"] = token
        r = await gp_a.post("/consents/withdraw", data, csrf=False)
        assert r.status == 403 and "Dit formulier is verlopen" in r.text
        r = await multipart(
            gp_a,
            "/consents/record",
            {
                "bsn": NEW_BSN,
                "recipient": "category:wijkverpleging",
                "decision": "permit",
                "channel": "phone",
                "performer": "patient",
            },
            csrf=False,
        )
        assert r.status == 403
    assert counts(webapp) == before
    assert all(x.status == "active" for x in rows(webapp, BSN))


async def test_one_handler_per_consent_route(webapp):
    """/privacy/consents* is served by securemail.web.consent_register; another module that
    registers the same path (the audit console) would be silently shadowed."""
    seen: dict[tuple[str, str], list[str]] = {}
    for route in webapp.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith(("/consents", "/privacy/consents")) and route.method != "HEAD":
            seen.setdefault((route.method, path), []).append(route.handler.__module__)
    assert seen == {
        ("GET", "/consents"): ["securemail.web.consents"],
        ("POST", "/consents/patient"): ["securemail.web.consents"],
        ("GET", "/consents/done/{token}"): ["securemail.web.consents"],
        ("POST", "/consents/record"): ["securemail.web.consents"],
        ("POST", "/consents/withdraw"): ["securemail.web.consents"],
        ("POST", "/consents/withdraw-narrower"): ["securemail.web.consents"],
        ("GET", "/privacy/consents"): ["securemail.web.consent_register"],
        ("POST", "/privacy/consents/export"): ["securemail.web.consent_register"],
    }


def _object_to_all(webapp: WebApp) -> str:
    """gp_a's objection for all district nursing (category), straight in the register."""
    gp = webapp.svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_a"))
    rec = webapp.svc.store.write_sync(
        lambda db: consent.record(
            db,
            gp,
            patient_bsn=BSN,
            source_org_id=gp.org_id or 0,
            recipient=consent.Recipient(category="wijkverpleging"),
            decision="deny",
            basis="objection",
            valid_from=webapp.clock.now,
            given_at=webapp.clock.now,
            channel="in_person",
            performer="patient",
            now=webapp.clock.now,
        )
    )
    return rec.consent_id


def _withdraw_counts(webapp: WebApp) -> int:
    return len(webapp.audit("consent.withdraw"))


async def test_an_objection_shows_the_narrower_consents_it_leaves_and_withdraws_them_at_once(
    webapp,
):
    b = await logged_in(webapp, "gp_a")
    r = await b.post(
        "/consents/record",
        {
            "bsn": BSN,
            "recipient": "category:wijkverpleging",
            "decision": "deny",
            "channel": "phone",
            "performer": "patient",
        },
    )
    page = await followed(b, r)
    assert page.status == 200, page.text[:800]
    # the objection leaves the team permits for Centrum and Oost standing: said, with one form
    [section] = re.findall(r'<section class="notice standing".*?</section>', page.text, re.S)
    assert "Bezwaar laat toestemmingen staan" in section
    assert "Centrum (centrum@zorg.example)" in section and "Oost (oost@zorg.example)" in section
    assert section.count('action="/consents/withdraw-narrower"') == 1
    assert "Trek deze 2 toestemmingen in" in section
    [objection] = re.findall(r'name="objection" value="([^"]+)"', section)
    # ... and indeed a request to Centrum still goes (the team's permit is more specific)
    ref = await webapp.send("gp_a", CENTRUM)
    before = _withdraw_counts(webapp)
    r = await b.post(
        "/consents/withdraw-narrower",
        {"bsn": BSN, "objection": objection, "channel": "phone", "reason": "bezwaar geldt"},
    )
    done = await followed(b, r)
    assert done.status == 200, done.text[:800]
    [said] = re.findall(r"Ingetrokken met ingang van nu: ([^<]*)", done.text)
    assert "toestemming voor Centrum" in said and "toestemming voor Oost" in said
    assert f'<a href="/requests/{ref}">{ref}</a>' in done.text  # the queued send stopped
    assert "Bezwaar laat toestemmingen staan" not in done.text
    no_bsn_in_urls(done, BSN)
    teams = {ids(webapp)["centrum"], ids(webapp)["oost"]}
    now_rows = [x for x in rows(webapp, BSN) if x.recipient.team_id in teams]
    current = {x.recipient.team_id: x for x in now_rows if x.status == "withdrawn"}
    assert set(current) == teams
    assert all(x.reason == "bezwaar geldt" for x in current.values())
    # one consent.withdraw audit row per record withdrawn
    withdrawals = webapp.audit("consent.withdraw")[before:]
    assert len(withdrawals) == 2
    assert {w["object_id"] for w in withdrawals} == {x.consent_id for x in current.values()}
    with pytest.raises(consent.ConsentDeniedError):
        await webapp.send("gp_a", CENTRUM)  # now the objection decides
    # nothing is left to withdraw: said, nothing written
    again = await b.post(
        "/consents/withdraw-narrower", {"bsn": BSN, "objection": objection, "channel": "phone"}
    )
    assert again.status == 422 and "withdraw" in field_errors(again)
    assert _withdraw_counts(webapp) == before + 2


async def test_withdrawing_narrower_consents_is_refused_without_csrf_role_or_organisation(
    webapp,
):
    objection = _object_to_all(webapp)
    data = {"bsn": BSN, "objection": objection, "channel": "phone"}
    before = (counts(webapp), _withdraw_counts(webapp))
    # missing and wrong CSRF token
    gp_a = await logged_in(webapp, "gp_a")
    for token in (None, "wrong"):
        form = dict(data) if token is None else {**data, "csrf_token": token}
        r = await gp_a.post("/consents/withdraw-narrower", form, csrf=False)
        assert r.status == 403 and "Dit formulier is verlopen" in r.text
    # wrong role: a nurse, the operator, the privacy officer (who may only view)
    for user in ("nurse_c", "admin", "privacy_a"):
        b = await logged_in(webapp, user)
        r = await b.post("/consents/withdraw-narrower", data)
        assert r.status == 403, user
        assert BSN not in r.text
    po_page = await (await logged_in(webapp, "privacy_a")).post("/consents/patient", {"bsn": BSN})
    assert "Bezwaar laat toestemmingen staan" in po_page.text
    assert "/consents/withdraw-narrower" not in po_page.text
    # another practice's GP: our objection and permits are not hers to see or withdraw
    gp_b = await logged_in(webapp, "gp_b")
    assert "Bezwaar laat" not in (await gp_b.post("/consents/patient", {"bsn": BSN})).text
    r = await gp_b.post("/consents/withdraw-narrower", data)
    assert r.status == 422 and "withdraw" in field_errors(r)
    assert (counts(webapp), _withdraw_counts(webapp)) == before
    assert all(x.status == "active" for x in rows(webapp, BSN))


def test_an_organisation_objection_leaves_its_teams_permits_unless_they_are_denied(webapp):
    """consent.left_standing with directory.covers: an objection to the organisation leaves
    its teams' permits standing; a team with its own objection is not standing; a permit
    outside the organisation is not listed."""
    svc, now = webapp.svc, webapp.clock.now
    gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_a"))
    team = ids(webapp)

    def deny(recipient: consent.Recipient) -> consent.ConsentRecord:
        return svc.store.write_sync(
            lambda db: consent.record(
                db, gp, patient_bsn=BSN, source_org_id=gp.org_id or 0, recipient=recipient,
                decision="deny", basis="objection", valid_from=now, given_at=now,
                channel="in_person", performer="patient", now=now,
            )
        )  # fmt: skip

    def standing(objection: consent.ConsentRecord) -> set[int | None]:
        def read(db: Any) -> set[int | None]:
            current = consent.list_records(
                db, source_org_id=gp.org_id or 0, patient_bsn=BSN, now=now
            )
            left = consent.left_standing(
                current, objection, now, lambda b, n: directory.covers(db, b, n)
            )
            return {r.recipient.team_id for r in left}

        return svc.store.read_sync(read)

    objection = deny(consent.Recipient(org_id=team["zorg"]))
    assert standing(objection) == {team["centrum"], team["oost"]}
    deny(consent.Recipient(team_id=team["oost"]))  # Oost: its own objection decides
    assert standing(objection) == {team["centrum"]}
    other_org = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT id FROM organisations WHERE id != ? LIMIT 1", [team["zorg"]]
        ).fetchone()[0]
    )
    assert not svc.store.read_sync(
        lambda db: directory.covers(
            db, consent.Recipient(org_id=other_org), consent.Recipient(team_id=team["centrum"])
        )
    )
