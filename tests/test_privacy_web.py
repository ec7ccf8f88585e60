"""The privacy officer's console over real HTTP: scope, audited reads, refusals, downloads.

A real app on 127.0.0.1 with a migrated home in tmp_path; sessions are opened the way
the login does (session.create) so these tests do not depend on the login form.
"""

from __future__ import annotations

import re

import pytest

from securemail import config, consent
from securemail.access import SYSTEM
from securemail.accounts import auth, session
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.home import open_services
from securemail.openpgp.keyring import Keyring
from securemail.region import directory
from securemail.store import Store
from securemail.web import create_app
from tests.test_audit import NOW, PRACTICE_A, PRACTICE_C, TEAM_B, add_orgs

BSN = "111222333"


def _send(db, gp, when, team=TEAM_B, outcome="success", detail=""):
    common = dict(
        patient_id=BSN,
        object_type="request",
        object_id="UVZ-2024-000001",
        data_categories="execution_request",
        sender_org=gp.org_code,
        recipient_org=team,
        occurred_at=when,
    )
    audit.record(db, AuditEvent.of(gp, "request.create", **common))
    audit.record(
        db, AuditEvent.of(gp, "request.send", outcome=outcome, outcome_detail=detail, **common)
    )


@pytest.fixture
async def console(tmp_path, aiohttp_client, monkeypatch):
    monkeypatch.setattr(auth, "SCRYPT_N", 2**4)
    Keyring.create(tmp_path / "gnupg")  # no key needed: the console never seals
    settings = config.load(tmp_path, env={})
    Store(settings.db_path).close()
    svc = open_services(settings)
    now = svc.now_iso()

    def setup(db):
        add_orgs(db)
        for username, role, org, extra in (
            ("po_a", "privacy_officer", PRACTICE_A, {}),
            ("po_c", "privacy_officer", PRACTICE_C, {}),
            ("gp_a", "gp", PRACTICE_A, {"profile": {"big": "12345678901"}}),
            ("gp_c", "gp", PRACTICE_C, {"profile": {"big": "12345678902"}}),
        ):
            auth.add_user(
                db,
                SYSTEM,
                username=username,
                name=username.upper(),
                role=role,
                org_code=org,
                password="correct horse battery",
                now=NOW,
                **extra,
            )
        auth.add_user(
            db,
            SYSTEM,
            username="admin",
            name="Beheer",
            role="admin",
            org_code=None,
            password="correct horse battery",
            now=NOW,
        )
        actors = {u: auth.actor_for_cli(db, u) for u in ("po_a", "po_c", "gp_a", "gp_c", "admin")}
        _send(db, actors["gp_a"], now)
        _send(
            db,
            actors["gp_c"],
            now,
            team="elders@elders.example",
            outcome="refused",
            detail="consent.missing",
        )
        return actors

    actors = svc.store.write_sync(setup)
    client = await aiohttp_client(create_app(settings, services=svc, run_worker=False))

    def login(username):
        sid, sess = svc.store.write_sync(
            lambda db: session.create(
                db, actors[username].user_id, now=svc.now(), access_point="127.0.0.1"
            )
        )
        return {"Cookie": f"{session.COOKIE}={sid}"}, sess.csrf_token

    return client, svc, actors, login


def last_rows(svc, n=20):
    return svc.store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, user_name, outcome, object_id, patient_id, outcome_detail "
            "FROM audit_events ORDER BY seq DESC LIMIT ?",
            [n],
        ).fetchall()
    )


def assert_csp_clean(html):
    assert "<script" not in html and " style=" not in html and "<style" not in html


async def test_overview_shows_own_rows_and_is_audited(console):
    client, svc, _, login = console
    headers, _ = login("po_a")
    r = await client.get("/privacy", headers=headers)
    html = await r.text()
    assert r.status == 200, html
    assert "Audit en privacy" in html and "Praktijk Akker" in html
    assert "consent.missing" not in html  # practice C's refusal is not A's business
    assert_csp_clean(html)
    seen = {(code, what) for code, _, _, what, _, _ in last_rows(svc, 4)}
    assert seen == {
        ("audit.view", "integrity"),
        ("audit.view", "exceptions"),
        ("audit.view", "delivery_failures"),
        ("audit.view", "volume"),
    }
    headers_c, _ = login("po_c")
    html_c = await (await client.get("/privacy", headers=headers_c)).text()
    assert "consent.missing" in html_c  # C sees its own refused send, with its reason


async def test_gp_is_refused_with_403_and_an_access_denied_row(console):
    client, svc, _, login = console
    headers, _ = login("gp_a")
    for path in ("/privacy", "/privacy/patient", "/privacy/reviews", "/privacy/users"):
        r = await client.get(path, headers=headers)
        assert r.status == 403, path
        assert last_rows(svc, 1)[0][:3] == ("access.denied", "gp_a", "refused")


async def test_patient_report_is_posted_scoped_and_audited(console):
    client, svc, _, login = console
    headers, csrf = login("po_a")
    form = {
        "csrf_token": csrf,
        "bsn": BSN,
        "from": "2000-01-01",
        "to": "2099-12-31",
        "format": "page",
    }
    r = await client.post("/privacy/patient", data=form, headers=headers)
    html = await r.text()
    assert r.status == 200 and BSN not in str(r.url)
    assert "2 auditregels" in html and "verstuurd naar" in html
    assert_csp_clean(html)
    assert last_rows(svc, 1)[0][:5] == ("audit.view", "po_a", "success", "disclosure", BSN)
    headers_c, csrf_c = login("po_c")
    html_c = await (
        await client.post(
            "/privacy/patient", headers=headers_c, data={**form, "csrf_token": csrf_c}
        )
    ).text()
    assert "2 auditregels" in html_c and "Thuiszorg" not in html_c
    assert "consent.missing" in html_c


async def test_patient_report_downloads_csv_and_pdf(console):
    client, svc, _, login = console
    headers, csrf = login("po_a")
    form = {"csrf_token": csrf, "bsn": BSN, "from": "2000-01-01", "to": "2099-12-31"}
    r = await client.post("/privacy/patient", data={**form, "format": "csv"}, headers=headers)
    body = await r.text()
    assert r.headers["Content-Type"].startswith("text/csv")
    assert BSN not in r.headers["Content-Disposition"]
    assert body.startswith("Datum en tijd,Handeling") and len(body.splitlines()) == 3
    assert last_rows(svc, 1)[0][:4] == ("audit.export", "po_a", "success", "disclosure")
    r = await client.post("/privacy/patient", data={**form, "format": "pdf"}, headers=headers)
    assert r.headers["Content-Type"] == "application/pdf"
    assert (await r.read()).startswith(b"%PDF")


async def test_bad_bsn_is_refused_without_echoing_it(console):
    client, _, _, login = console
    headers, csrf = login("po_a")
    r = await client.post(
        "/privacy/patient",
        headers=headers,
        data={"csrf_token": csrf, "bsn": "123456789", "format": "page"},
    )
    assert r.status == 422
    assert "123456789" not in await r.text()


async def test_post_without_csrf_token_is_refused(console):
    client, _, _, login = console
    headers, _ = login("po_a")
    r = await client.post("/privacy/patient", data={"bsn": BSN}, headers=headers)
    assert r.status == 403


async def test_review_sign_off_is_recorded(console):
    client, svc, _, login = console
    headers, csrf = login("po_a")
    r = await client.post(
        "/privacy/reviews",
        headers=headers,
        allow_redirects=False,
        data={
            "csrf_token": csrf,
            "kind": "exceptions",
            "from": "2024-05-01",
            "to": "2024-05-31",
            "outcome": "findings",
            "findings": "Twee mislukte inlogpogingen; gebruiker gebeld.",
        },
    )
    assert r.status == 303
    assert last_rows(svc, 1)[0][0] == "audit.review"
    html = await (await client.get("/privacy/reviews", headers=headers)).text()
    assert "gebruiker gebeld" in html and "Uitzonderingen" in html
    headers_c, _ = login("po_c")
    assert (
        "gebruiker gebeld"
        not in await (await client.get("/privacy/reviews", headers=headers_c)).text()
    )


async def test_verify_now_records_the_outcome(console):
    client, svc, _, login = console
    headers, csrf = login("po_a")
    r = await client.post(
        "/privacy/verify", headers=headers, allow_redirects=False, data={"csrf_token": csrf}
    )
    assert r.status == 303
    code, _, outcome, _, _, detail = last_rows(svc, 1)[0]
    assert (code, outcome) == ("audit.verify", "success")
    assert re.match(r"verified \d+ rows", detail)
    html = await (await client.get("/privacy", headers=headers)).text()
    assert "in orde" in html and "door po_a" in html
    # Another organisation's officer sees that a check ran, not who ran it
    other, _ = login("po_c")
    html = await (await client.get("/privacy", headers=other)).text()
    assert "in orde" in html and "po_a" not in html and "andere organisatie" in html


async def test_user_activity_shows_only_the_officers_scope(console):
    client, _, actors, login = console
    headers, _ = login("po_a")
    own = await (
        await client.get(
            f"/privacy/user/{actors['gp_a'].user_id}?from=2000-01-01&to=2099-12-31", headers=headers
        )
    ).text()
    assert "2 auditregels" in own and BSN in own
    other = await (
        await client.get(
            f"/privacy/user/{actors['gp_c'].user_id}?from=2000-01-01&to=2099-12-31", headers=headers
        )
    ).text()
    assert "0 auditregels" in other and BSN not in other
    users = await (await client.get("/privacy/users", headers=headers)).text()
    assert "gp_a" in users and "gp_c" not in users


async def test_breach_scope_page(console):
    client, _, _, login = console
    headers, _ = login("po_a")
    html = await (
        await client.get("/privacy/breach?from=2000-01-01&to=2099-12-31", headers=headers)
    ).text()
    assert "Melden uiterlijk" in html and BSN in html and "execution_request" in html


async def test_consent_register_page_is_scoped_and_audited(console):
    client, svc, actors, login = console
    gp = actors["gp_a"]

    def grant(db):
        team = directory.team_by_address(db, TEAM_B)
        consent.record(
            db,
            gp,
            patient_bsn=BSN,
            source_org_id=gp.org_id,
            recipient=consent.Recipient(team_id=team.id),
            decision="permit",
            basis="explicit",
            valid_from=svc.now(),
            valid_until=None,
            given_at=svc.now(),
            channel="in_person",
            performer="patient",
            now=svc.now(),
        )

    svc.store.write_sync(grant)
    headers, _ = login("po_a")
    r = await client.get("/privacy/consents", headers=headers)
    html = await r.text()
    assert r.status == 200, html
    assert BSN in html and "Wijkteam Noord" in html and "geen" in html  # no evidence
    assert last_rows(svc, 1)[0][:3] == ("consent.view", "po_a", "success")
    headers_c, _ = login("po_c")
    assert BSN not in await (await client.get("/privacy/consents", headers=headers_c)).text()
    headers_gp, _ = login("gp_a")
    assert (await client.get("/privacy/consents", headers=headers_gp)).status == 403


async def test_admin_may_verify_the_chain_but_not_read_reports(console):
    client, svc, _, login = console
    headers, csrf = login("admin")
    r = await client.post(
        "/privacy/verify", headers=headers, allow_redirects=False, data={"csrf_token": csrf}
    )
    assert (r.status, r.headers["Location"]) == (303, "/")
    assert last_rows(svc, 1)[0][:3] == ("audit.verify", "admin", "success")
    assert (await client.get("/privacy", headers=headers)).status == 403
    assert last_rows(svc, 1)[0][:3] == ("access.denied", "admin", "refused")
