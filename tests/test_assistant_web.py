"""The practice assistant (doktersassistent/POH, issue 20): prepares requests and records
consents for the practice; only a GP signs; the audit trail names both the assistant (actor)
and the responsible GP. Real app over HTTP (webapp), real gpg, sqlite."""

from __future__ import annotations

import html
import re

import pytest

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.errors import InputError
from securemail.exchange import view
from tests.auth_fixtures import PASSWORD
from tests.e2e.webflow import form_fields
from tests.gateway import EXAMPLE, GP_PASSPHRASE, example
from tests.test_consent_web import ids
from tests.test_withdraw_web import _with_phones
from tests.web_fixtures import Browser, WebApp

CENTRUM = "centrum@zorg.example"


def _add_assistant(
    webapp: WebApp, username: str = "poh_a", gp: str = "gp_a", org_code: str = "01000001"
) -> None:
    def add(db):  # type: ignore[no-untyped-def]
        auth.add_user(
            db,
            SYSTEM,
            username=username,
            name="Petra Oosterhuis",
            role="assistant",
            org_code=org_code,
            password=PASSWORD,
            responsible=gp,
            now=webapp.clock.now.isoformat(),
        )
        return auth.enrol_totp_for_demo(db, auth.user_by_name(db, username).id)

    webapp.secrets[username] = webapp.svc.store.write_sync(add)


async def _assistant(webapp: WebApp) -> Browser:
    _with_phones(webapp)
    _add_assistant(webapp)
    b = webapp.browser()
    r = await b.login("poh_a")
    assert r.status == 303
    return b


def _uid(webapp: WebApp, username: str) -> int:
    return webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, username).id)


async def test_the_assistant_prepares_and_a_gp_signs(webapp: WebApp) -> None:
    poh = await _assistant(webapp)
    fields = {**form_fields(example()), "receiver.team_address": CENTRUM}
    preview = await poh.post("/requests/preview", fields)
    assert preview.status == 200, preview.text[:2000]
    assert 'name="passphrase"' not in preview.text  # nothing for the assistant to sign
    payload = re.search(r'name="payload" value="([^"]*)"', preview.text)
    assert payload
    # signing is a GP's: refused even when posted by hand
    refused = await poh.post(
        "/requests/send",
        {"payload": html.unescape(payload.group(1)), "passphrase": GP_PASSPHRASE},
    )
    assert refused.status == 403
    saved = await poh.post("/drafts/save", {"payload": html.unescape(payload.group(1))})
    assert saved.status == 303
    draft = saved.location.split("/")[2].split("?")[0]
    rows = [r for r in webapp.audit("draft.save") if r["object_id"] == draft]
    assert rows[-1]["user_name"] == "poh_a"
    assert rows[-1]["responsible_user_id"] == _uid(webapp, "gp_a")

    # the GP finds it under Concepten, checks and signs
    gp = webapp.browser()
    await gp.login("gp_a")
    assert f"/drafts/{draft}" in (await gp.get("/drafts")).text
    page = await gp.get(f"/drafts/{draft}")
    assert f'value="{EXAMPLE["patient"]["name"]}"' in html.unescape(page.text)
    from tests.test_follow_up_web import _sign, form_values

    reference = await _sign(gp, form_values(page.text))
    assert reference.startswith("UVZ-")
    (deleted,) = [r for r in webapp.audit("draft.delete") if r["object_id"] == draft]
    assert deleted["user_name"] == "gp_a" and deleted["outcome_detail"] == "prepared_by=poh_a"
    assert webapp.audit("request.send")[-1]["user_name"] == "gp_a"


async def test_the_assistant_records_a_consent_under_the_gp(webapp: WebApp) -> None:
    poh = await _assistant(webapp)
    r = await poh.post(
        "/consents/record",
        {
            "bsn": EXAMPLE["patient"]["bsn"],
            "recipient": f"team:{ids(webapp)['oost']}",
            "decision": "permit",
            "channel": "phone",
            "performer": "patient",
        },
    )
    assert r.status == 303, r.text[:1000]
    row = webapp.audit("consent.record")[-1]
    assert row["user_name"] == "poh_a" and row["user_role"] == "assistant"
    assert row["responsible_user_id"] == _uid(webapp, "gp_a")
    assert row["role_code"] == "urn:securemail:role|assistant"


async def test_what_the_assistant_may_not_do(webapp: WebApp) -> None:
    first = await webapp.send("gp_a", CENTRUM)
    poh = await _assistant(webapp)
    for path in ("/requests", f"/requests/{first}", f"/requests/{first}/dossier.pdf", "/privacy"):
        assert (await poh.get(path)).status == 403, path
    assert (await poh.post(f"/requests/{first}/withdraw", {"reason": "x"})).status == 403
    # CSRF still applies to the assistant's own actions
    r = await poh.post("/drafts/save", {"patient.name": "X"}, csrf=False)
    assert r.status == 403
    # another practice's GP does not see the assistant's drafts
    saved = await poh.post("/drafts/save", {"patient.name": "X"})
    draft = saved.location.split("/")[2].split("?")[0]
    other = webapp.browser()
    await other.login("gp_b")
    assert (await other.get(f"/drafts/{draft}")).status == 404


def test_an_assistant_needs_a_gp_of_the_same_practice(webapp: WebApp) -> None:
    for gp in ("gp_b", "nurse_c", "nobody", ""):
        with pytest.raises(InputError):
            _add_assistant(webapp, username=f"poh_{gp or 'none'}", gp=gp)


async def test_the_assistant_prepares_a_change_and_a_gp_signs_it(webapp: WebApp) -> None:
    """WGBO 7:457 lid 2: the assistant takes part in the treatment under the GP's
    responsibility, so she reads the earlier request to prepare its follow-up; a GP signs."""
    from tests.test_follow_up_web import _sign, form_values

    first = await webapp.send("gp_a", CENTRUM)
    poh = await _assistant(webapp)
    # she has no request list: the drafts page takes the reference she was given
    drafts_page = await poh.get("/drafts")
    assert 'action="/requests/vervolg"' in drafts_page.text
    start = await poh.get(f"/requests/vervolg?kenmerk={first.lower()}&soort=wijzigen")
    assert (start.status, start.location) == (303, f"/requests/{first}/wijzigen")
    for bad in ("kenmerk=x' OR 1=1&soort=wijzigen", f"kenmerk={first}&soort=intrekken"):
        refused = await poh.get(f"/requests/vervolg?{bad}")
        assert refused.status == 400 and "Ongeldige invoer" in refused.text, bad
    page = await poh.get(f"/requests/{first}/wijzigen")
    assert page.status == 200, page.text[:1000]
    assert 'name="passphrase"' not in page.text
    values = form_values(page.text)
    assert (values["kind"], values["supersedes"]) == ("wijziging", first)
    assert values["patient.name"] == EXAMPLE["patient"]["name"]
    # the read is audited: the assistant as the actor, the GP as the responsible user
    (read,) = [r for r in webapp.audit("request.view") if r["object_id"] == first]
    assert (read["user_name"], read["user_role"]) == ("poh_a", "assistant")
    assert read["responsible_user_id"] == _uid(webapp, "gp_a")
    assert read["outcome_detail"] == "follow_up=wijziging"
    assert read["patient_id"] == EXAMPLE["patient"]["bsn"]
    for action, kind in (("verlengen", "verlenging"), ("kopieren", "nieuw")):
        assert form_values((await poh.get(f"/requests/{first}/{action}")).text)["kind"] == kind

    # she changes one thing; the checks pass (consent, keys, the earlier request) and there
    # is nothing for her to sign; she saves it as a draft (the form's "Opslaan als concept")
    values["instructions.instructions"] = "Voortaan twee keer per dag."
    checked = await poh.post("/requests/preview", values)
    assert checked.status == 200, checked.text[:2000]
    assert 'name="passphrase"' not in checked.text
    saved = await poh.post("/drafts/save", values)
    assert saved.status == 303, saved.text[:1000]
    draft = saved.location.split("/")[2].split("?")[0]

    # a GP of the practice opens the draft, finds the change as prepared, and signs it
    gp = webapp.browser()
    await gp.login("gp_a")
    opened = form_values((await gp.get(f"/drafts/{draft}")).text)
    assert (opened["kind"], opened["supersedes"]) == ("wijziging", first)
    assert opened["instructions.instructions"] == "Voortaan twee keer per dag."
    second = await _sign(gp, opened)

    def load(db):  # type: ignore[no-untyped-def]
        return view.require_row(db, first), view.document(db, view.require_row(db, second))

    earlier, doc = webapp.svc.store.read_sync(load)
    assert (doc["kind"], doc["supersedes"]) == ("wijziging", first)
    assert doc["instructions"]["instructions"] == "Voortaan twee keer per dag."
    assert (earlier["state"], earlier["superseded_by"]) == ("superseded", second)
    assert webapp.audit("request.send")[-1]["user_name"] == "gp_a"


async def test_a_follow_up_is_for_the_own_practice_only(webapp: WebApp) -> None:
    first = await webapp.send("gp_a", CENTRUM)
    _add_assistant(webapp, username="poh_b", gp="gp_b", org_code="01000002")
    other = webapp.browser()
    assert (await other.login("poh_b")).status == 303
    for action in ("wijzigen", "verlengen", "kopieren"):
        r = await other.get(f"/requests/{first}/{action}")
        assert r.status == 404 and EXAMPLE["patient"]["name"] not in r.text, action
    denied = [r for r in webapp.audit("access.denied") if r["object_id"] == first]
    assert len(denied) == 3 and {r["user_name"] for r in denied} == {"poh_b"}
    assert all(r["responsible_user_id"] == _uid(webapp, "gp_b") for r in denied)
    assert not [r for r in webapp.audit("request.view") if r["object_id"] == first]
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    assert (await nurse.get(f"/requests/{first}/wijzigen")).status == 403
    # saving the prefilled change as a draft needs the session's CSRF token
    poh = await _assistant(webapp)
    values = {"kind": "wijziging", "supersedes": first, "patient.name": "X"}
    assert (await poh.post("/drafts/save", values, csrf=False)).status == 403
    assert webapp.svc.store.read_sync(lambda db: db["drafts"].count) == 0
