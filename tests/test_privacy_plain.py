"""The privacy console in plain Dutch (issue 20, part 7): a Dutch sentence for every audit
action, the rows of one action as one line (report.group_rows), the officer's patient page
over real HTTP after a real send, and the patient's disclosure PDF (Wabvpz art. 15e) with
its refusals. Real app over HTTP (webapp), real gpg send, real sqlite."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import pypdf

from securemail.accounts import auth
from securemail.audit import plain, report
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from tests.clock import working_wednesday
from tests.gateway import EXAMPLE
from tests.test_docs import DOCS
from tests.web_fixtures import Browser, WebApp

CENTRUM = "centrum@zorg.example"
BSN = EXAMPLE["patient"]["bsn"]
OTHER_BSN = "111222333"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


# -- the Dutch sentences cannot rot ---------------------------------------------------------


def test_every_audit_action_has_a_dutch_sentence() -> None:
    text = (DOCS / "audit-actions.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, re.M))
    missing = (set(audit.EVENT_CODES) | documented) - set(plain.SENTENCES)
    assert documented and not missing, f"give these a Dutch sentence in audit/plain.py: {missing}"


def test_a_sentence_never_falls_back_to_the_code() -> None:
    names = {CENTRUM: "Centrum (Zorg)"}
    for code in audit.EVENT_CODES:
        row = {"event_code": code, "object_id": "UVZ-2026-000123", "outcome": "success"}
        text = plain.sentence({**row, "recipient_org": CENTRUM}, names)
        assert code not in text and "{" not in text, (code, text)
    send = {"event_code": "request.send", "object_id": "UVZ-2026-000123", "outcome": "success"}
    assert (
        plain.sentence({**send, "recipient_org": CENTRUM}, names)
        == "Verzoek UVZ-2026-000123 ondertekend en verstuurd naar Centrum (Zorg)"
    )
    objection = {
        "event_code": "consent.check",
        "outcome": "refused",
        "outcome_detail": "objection 4fbda423-892f-41f9-bd2e-e016f017b926@v1 (team 1) refuses",
    }
    assert plain.sentence(objection, names) == (
        "Toestemmingscontrole: bezwaar patiënt, verzending gestopt"
    )


# -- grouping: a plain function, tested on its own -----------------------------------------

T0 = working_wednesday()


def _row(seq: int, code: str, seconds: float = 0, **kw: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "event_code": code,
        "occurred_at": report.utc_iso(T0 + timedelta(seconds=seconds)),
        "user_id": kw.pop("user_id", 1),
        "user_name": "gp_a",
        "user_role": kw.pop("user_role", "gp"),
        "org_id": "01000001",
        "object_type": "request",
        "object_id": kw.pop("ref", "UVZ-2026-000001"),
        "recipient_org": kw.pop("to", CENTRUM),
        "outcome": kw.pop("outcome", "success"),
        "outcome_detail": kw.pop("detail", ""),
        "nature": kw.pop("nature", "regular"),
        "emergency_reason": kw.pop("reason", ""),
        **kw,
    }


NAMES = {"01000001": "Praktijk A", CENTRUM: "Centrum (Zorg)", "87000001": "Zorg"}
WHO = {1: ("Dr. A. Arts", "gp"), 2: ("B. Verpleeg", "nurse")}


def test_the_consent_checks_and_steps_of_one_send_are_one_line_each() -> None:
    rows = [
        _row(1, "consent.check", to="87000001", detail="permitted by consent x"),
        _row(2, "consent.check", 0.1, to="87000001", detail="permitted by consent x"),
        _row(3, "consent.check", 0.2, to="87000001", detail="permitted by consent x"),
        _row(4, "request.create", 0.5),
        _row(5, "request.sign", 0.5),
        _row(6, "request.send", 0.5),
    ]
    lines = report.group_rows(rows, NAMES, WHO)
    assert [(line.sentence, line.count) for line in lines] == [
        ("Toestemmingscontrole: toestemming aanwezig", 3),
        ("Verzoek UVZ-2026-000001 ondertekend en verstuurd naar Centrum (Zorg)", 3),
    ]
    assert [r["seq"] for line in lines for r in line.rows] == [1, 2, 3, 4, 5, 6]  # none lost
    assert lines[1].who == report.Person("Dr. A. Arts", "Huisarts", "Praktijk A")
    assert lines[1].reference == "UVZ-2026-000001"


def test_reads_group_by_person_request_and_minute() -> None:
    rows = [
        _row(1, "request.view", 0, user_id=2, user_role="nurse"),
        _row(2, "request.view", 30, user_id=2, user_role="nurse"),
        _row(3, "request.view", 80, user_id=2, user_role="nurse"),  # 50 s after the last
        _row(4, "request.view", 81, user_id=1),  # another person
        _row(5, "request.view", 82, user_id=2, user_role="nurse", ref="UVZ-2026-000002"),
        _row(6, "request.view", 200, user_id=2, user_role="nurse"),  # 2 minutes later
    ]
    lines = report.group_rows(rows, NAMES, WHO)
    counts = [(line.reference, line.who.name, line.count) for line in lines]
    assert counts == [
        ("UVZ-2026-000001", "B. Verpleeg", 3),
        ("UVZ-2026-000001", "Dr. A. Arts", 1),
        ("UVZ-2026-000002", "B. Verpleeg", 1),
        ("UVZ-2026-000001", "B. Verpleeg", 1),
    ]


def test_delivery_attempts_hours_apart_are_one_line_and_other_rows_never_merge() -> None:
    rows = [
        _row(1, "request.retry", 0, user_id=None, user_role="", detail="421 try later"),
        _row(2, "request.retry", 3600, user_id=None, user_role="", detail="421 try later"),
        _row(3, "request.deliver", 7200, user_id=None, user_role=""),
        _row(4, "request.answer", 7300, user_id=2, user_role="nurse"),
        _row(5, "request.answer", 7301, user_id=2, user_role="nurse"),
    ]
    lines = report.group_rows(rows, NAMES, WHO)
    assert [(line.sentence, line.count) for line in lines] == [
        ("Verzoek UVZ-2026-000001 afgeleverd bij Centrum (Zorg)", 3),
        ("Verzoek UVZ-2026-000001 beantwoord door het wijkteam", 1),
        ("Verzoek UVZ-2026-000001 beantwoord door het wijkteam", 1),
    ]
    assert lines[0].who.name == plain.SYSTEM_NAME


def test_break_the_glass_says_noodtoegang_with_the_reason_and_no_ids() -> None:
    rows = [
        _row(1, "request.view", nature="emergency", reason="patiënt bewusteloos, huisarts afwezig"),
        _row(2, "consent.check", 1, outcome="refused",
             detail="no consent of patient for team 1 (holder organisation 01000001); "
                    "record the patient's consent, latest 4fbda423-892f-41f9-bd2e-e016f017b926@v1"),
    ]  # fmt: skip
    first, second = report.group_rows(rows, NAMES, WHO)
    assert first.emergency == "patiënt bewusteloos, huisarts afwezig"
    assert first.reason == "Noodtoegang: patiënt bewusteloos, huisarts afwezig"
    assert second.sentence == (
        "Toestemmingscontrole: geen toestemming van de patiënt, verzending gestopt"
    )
    assert second.refused
    assert not any(UUID_RE.search(part) for _, _, _, part in second.fold)
    assert "01000001" not in second.fold[0][3]


# -- over real HTTP after a real send -------------------------------------------------------


async def _officer(webapp: WebApp, username: str = "privacy_a") -> Browser:
    b = webapp.browser()
    assert (await b.login(username)).status == 303
    return b


def _names(webapp: WebApp) -> tuple[str, str]:
    def read(db: Any) -> tuple[str, str]:
        gp = auth.user_by_name(db, "gp_a")
        org = db.execute("SELECT name FROM organisations WHERE code = '01000001'").fetchone()[0]
        return str(db.execute("SELECT name FROM users WHERE id = ?", [gp.id]).fetchone()[0]), org

    return webapp.svc.store.read_sync(read)


def _other_patient(webapp: WebApp) -> None:
    """Another patient's request in the same practice: it must not reach this report."""

    def write(db: Any) -> None:
        gp = auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
        audit.record(
            db,
            AuditEvent.of(
                gp,
                "request.send",
                patient_id=OTHER_BSN,
                object_type="request",
                object_id="UVZ-2026-000999",
                sender_org="01000001",
                recipient_org=CENTRUM,
            ),
        )

    webapp.svc.store.write_sync(write)


FORM = {"bsn": BSN, "from": "2000-01-01", "to": "2099-12-31"}


async def test_patient_page_speaks_plain_dutch_after_a_real_send(webapp: WebApp) -> None:
    reference = await webapp.send("gp_a", CENTRUM)
    gp_name, practice = _names(webapp)
    officer = await _officer(webapp)
    r = await officer.post("/privacy/patient", {**FORM, "format": "page"})
    assert r.status == 200, r.text[:500]
    assert BSN not in r.url
    assert f"Verzoek {reference} ondertekend en verstuurd naar" in r.text
    assert f'<td data-label="Verzoek">{reference}</td>' in r.text
    assert gp_name in r.text and "Huisarts" in r.text and practice in r.text
    # The send's consent checks are one line with their count, the raw rows in its fold
    checks = webapp.audit("consent.check")
    assert len(checks) >= 2
    line = '<td data-label="Wat">Toestemmingscontrole: toestemming aanwezig'
    assert r.text.count(line) == 1
    assert f'{line} <strong class="count">{len(checks)}×</strong>' in r.text
    assert f"Toon de {len(checks)} regels" in r.text  # the fold with the raw rows
    assert not UUID_RE.search(r.text), UUID_RE.search(r.text)
    assert "user_id" not in r.text and "Spoed" not in r.text
    # The user view speaks the same way
    gp_id = webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, "gp_a").id)
    user = await officer.get(f"/privacy/user/{gp_id}?from=2000-01-01&to=2099-12-31")
    assert user.status == 200
    assert f"Verzoek {reference} ondertekend en verstuurd naar" in user.text
    assert f'<td data-label="Verzoek">{reference}</td>' in user.text
    assert not UUID_RE.search(user.text) and "user_id" not in user.text
    # The CSV still holds every raw row
    csv = await officer.post("/privacy/patient", {**FORM, "format": "csv"})
    in_scope = webapp.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT count(*) FROM audit_events WHERE patient_id = ? AND event_code != "
            "'audit.export'",
            [BSN],
        ).fetchone()[0]
    )
    assert len(csv.text.strip().splitlines()) - 1 >= len(checks) + 3
    assert len(csv.text.strip().splitlines()) - 1 <= in_scope


async def test_patient_pdf_names_organisation_and_reference_and_nothing_else(
    webapp: WebApp,
) -> None:
    reference = await webapp.send("gp_a", CENTRUM)
    _other_patient(webapp)
    gp_name, practice = _names(webapp)
    officer = await _officer(webapp)
    async with officer.session.post(
        "/privacy/patient/inzage", data={**FORM, "csrf_token": officer.csrf}
    ) as r:
        body = await r.read()
        assert r.status == 200, body[:300]
        headers = r.headers
    assert body.startswith(b"%PDF")
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Cache-Control"] == "no-store"
    assert re.fullmatch(
        r'attachment; filename="inzage-\d{4}-\d{2}-\d{2}\.pdf"', headers["Content-Disposition"]
    )
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(body)).pages)
    flat = " ".join(text.split())
    assert "Wie heeft uw gegevens ingezien?" in flat
    assert practice in flat and gp_name in flat and "Huisarts" in flat
    assert reference in flat and "ondertekend en verstuurd" in flat
    assert "UVZ-2026-000999" not in flat  # another patient's request
    assert BSN not in flat and OTHER_BSN not in flat
    assert EXAMPLE["patient"]["name"] not in flat
    assert not UUID_RE.search(flat)
    row = webapp.audit("privacy.disclosure_pdf")[-1]
    assert (row["user_name"], row["patient_id"], row["outcome"]) == ("privacy_a", BSN, "success")


async def test_patient_pdf_of_another_practice_holds_none_of_this_one(webapp: WebApp) -> None:
    reference = await webapp.send("gp_a", CENTRUM)
    officer_b = await _officer(webapp, "privacy_b")
    async with officer_b.session.post(
        "/privacy/patient/inzage", data={**FORM, "csrf_token": officer_b.csrf}
    ) as r:
        body = await r.read()
    text = " ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(body)).pages)
    gp_name, _ = _names(webapp)
    assert "Praktijk B" in text  # its own consent record of this patient, nothing of A's send
    assert reference not in text and gp_name not in text


async def test_only_the_privacy_officer_may_download_the_patient_pdf(webapp: WebApp) -> None:
    await webapp.send("gp_a", CENTRUM)
    for username in ("gp_a", "nurse_c"):
        b = webapp.browser()
        assert (await b.login(username)).status == 303
        r = await b.post("/privacy/patient/inzage", FORM)
        assert r.status == 403, (username, r.status)
        assert not r.text.startswith("%PDF")
        denied = webapp.audit("access.denied")[-1]
        assert (denied["user_name"], denied["outcome"]) == (username, "refused")
    officer = await _officer(webapp)
    r = await officer.post("/privacy/patient/inzage", FORM, csrf=False)
    assert r.status == 403
    assert webapp.audit("privacy.disclosure_pdf") == []
    r = await officer.post("/privacy/patient/inzage", {**FORM, "bsn": "123456789"})
    assert r.status == 422 and "123456789" not in r.text
    assert webapp.audit("privacy.disclosure_pdf") == []
