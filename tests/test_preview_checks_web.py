"""Before signing (issue 20): a missing consent or a team whose keys cannot be used is said on
the form, with the next step (record the consent here; choose another team), not after the GP
signed. Real app over HTTP (webapp), real gpg, sqlite."""

from __future__ import annotations

from tests.e2e.webflow import form_fields
from tests.gateway import example
from tests.test_withdraw_web import _with_phones
from tests.web_fixtures import Browser, WebApp

NO_CONSENT_BSN = "111222333"  # a valid BSN (11-test) with nothing on record


async def _gp(webapp: WebApp) -> Browser:
    _with_phones(webapp)
    b = webapp.browser()
    await b.login("gp_a")
    return b


def _fields(to: str, **changes: str) -> dict[str, str]:
    return {**form_fields(example()), "receiver.team_address": to, **changes}


async def test_missing_consent_shows_the_next_step_before_signing(webapp: WebApp) -> None:
    """A region with explicit consent, a patient with nothing on record (an objection takes
    the same path: ConsentRefusedError)."""
    webapp.svc.settings = webapp.svc.settings.replace(consent={"policy": "explicit"})
    gp = await _gp(webapp)
    before = webapp.svc.store.read_sync(lambda db: db["requests"].count)
    fields = _fields("centrum@zorg.example", **{"patient.bsn": NO_CONSENT_BSN})
    r = await gp.post("/requests/preview", fields)
    assert r.status == 422
    assert 'name="passphrase"' not in r.text  # nothing to sign
    assert "Volgende stap: toestemming" in r.text
    assert 'action="/consents/patient"' in r.text
    assert f'name="bsn" value="{NO_CONSENT_BSN}"' in r.text
    assert 'formaction="/drafts/save"' in r.text  # the work is kept meanwhile
    assert webapp.svc.store.read_sync(lambda db: db["requests"].count) == before
    # the step leads to the patient's consents, the BSN in the body only
    page = await gp.post("/consents/patient", {"bsn": NO_CONSENT_BSN})
    assert page.status == 200 and NO_CONSENT_BSN not in page.url


async def test_a_team_without_a_usable_key_is_said_before_signing(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    ok = await gp.post("/requests/preview", _fields("oost@zorg.example"))
    assert ok.status == 200 and 'name="passphrase"' in ok.text
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE team_members SET status = 'removed' WHERE team_id = "
            "(SELECT id FROM teams WHERE address = 'oost@zorg.example')"
        )
    )
    r = await gp.post("/requests/preview", _fields("oost@zorg.example"))
    assert r.status == 422 and 'name="passphrase"' not in r.text
    assert 'href="#receiver.team_address"' in r.text and "Kies een ander team" in r.text
    # another team still goes
    other = await gp.post("/requests/preview", _fields("centrum@zorg.example"))
    assert other.status == 200


async def test_preview_needs_csrf_and_the_gp_role(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    r = await gp.post("/requests/preview", _fields("centrum@zorg.example"), csrf=False)
    assert r.status == 403
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    assert (await nurse.post("/requests/preview", _fields("centrum@zorg.example"))).status == 403
