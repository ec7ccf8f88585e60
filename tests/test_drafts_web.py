"""Drafts (issue 20): a GP's half-filled request form is kept on the server, sealed like other
content, for the practice only, and survives a session timeout; a refresh changes nothing;
the retention purge deletes old drafts. Real app over HTTP (webapp), real sqlite."""

from __future__ import annotations

from datetime import timedelta

from securemail import contentbox
from securemail.ops import retention
from tests.web_fixtures import Browser, WebApp

NAME = "Jansen-de Vries"


async def _gp(webapp: WebApp, username: str = "gp_a") -> Browser:
    b = webapp.browser()
    await b.login(username)
    return b


async def _save(b: Browser, **extra: str) -> str:
    r = await b.post(
        "/drafts/save",
        {"kind": "nieuw", "urgency": "regulier", "patient.name": NAME, **extra},
    )
    assert r.status == 303, r.text[:1000]
    assert r.location.startswith("/drafts/") and NAME not in r.location
    return r.location.split("/")[2].split("?")[0]


def _stored(webapp: WebApp) -> list[dict[str, object]]:
    return webapp.svc.store.read_sync(lambda db: list(db["drafts"].rows))


async def test_a_draft_survives_the_session_timeout(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    draft = await _save(gp)
    # sealed at rest: the name is nowhere in the row
    (row,) = _stored(webapp)
    assert NAME not in str(row) and str(row["form_values"]).startswith("v1:")
    webapp.clock.advance(minutes=webapp.settings.web.session_idle_minutes + 1)
    gone = await gp.get(f"/drafts/{draft}")
    assert (gone.status, gone.location) == (303, "/login")
    await gp.login("gp_a")
    page = await gp.get(f"/drafts/{draft}")
    assert page.status == 200 and f'value="{NAME}"' in page.text
    assert f'name="draft" value="{draft}"' in page.text
    assert webapp.audit("draft.save") and webapp.audit("draft.view")
    # the list names it (who, when), never the patient
    listing = await gp.get("/drafts")
    assert f"/drafts/{draft}" in listing.text and NAME not in listing.text


async def test_saving_again_overwrites_and_refresh_changes_nothing(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    draft = await _save(gp)
    again = await _save(gp, draft=draft, **{"patient.name": "Pietersen"})
    assert again == draft and len(_stored(webapp)) == 1
    # the redirect target is a GET: loading it twice stores nothing new
    for _ in range(2):
        assert (await gp.get(f"/drafts/{draft}?opgeslagen=1")).status == 200
    assert len(_stored(webapp)) == 1 and len(webapp.audit("draft.save")) == 2
    assert 'value="Pietersen"' in (await gp.get(f"/drafts/{draft}")).text


async def test_the_practice_shares_drafts_another_practice_sees_none(webapp: WebApp) -> None:
    draft = await _save(await _gp(webapp))
    colleague = await _gp(webapp, "gp_a2")
    assert (await colleague.get(f"/drafts/{draft}")).status == 200
    other = await _gp(webapp, "gp_b")
    assert (await other.get(f"/drafts/{draft}")).status == 404
    assert (await other.post(f"/drafts/{draft}/delete")).status == 404
    # overwriting another practice's draft by naming it: not found, nothing changed
    r = await other.post("/drafts/save", {"draft": draft, "patient.name": "X"})
    assert r.status == 404
    assert f"/drafts/{draft}" not in (await other.get("/drafts")).text
    assert len(_stored(webapp)) == 1


async def test_wrong_role_and_missing_csrf_are_refused(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    draft = await _save(gp)
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    assert (await nurse.get(f"/drafts/{draft}")).status == 403
    assert (await nurse.post("/drafts/save", {"patient.name": NAME})).status == 403
    r = await gp.post("/drafts/save", {"patient.name": NAME}, csrf=False)
    assert r.status == 403
    r = await gp.post(f"/drafts/{draft}/delete", csrf=False)
    assert r.status == 403 and len(_stored(webapp)) == 1


async def test_delete_and_the_purge(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    first = await _save(gp)
    await _save(gp)
    r = await gp.post(f"/drafts/{first}/delete")
    assert (r.status, r.location) == (303, "/drafts")
    assert webapp.audit("draft.delete") and len(_stored(webapp)) == 1
    # not due yet: the purge keeps it; after draft_days it goes
    settings = webapp.settings
    now = webapp.clock.now
    kept = retention.purge(webapp.svc.store, settings, now=now)
    assert kept.drafts == 0 and len(_stored(webapp)) == 1
    later = now + timedelta(days=settings.retention.draft_days, minutes=1)
    gone = retention.purge(webapp.svc.store, settings, now=later)
    assert gone.drafts == 1 and _stored(webapp) == []


async def test_the_form_offers_save_and_the_session_warning(webapp: WebApp) -> None:
    gp = await _gp(webapp)
    page = await gp.get("/requests/new")
    assert 'formaction="/drafts/save"' in page.text
    assert 'id="session-warning"' in page.text and "/static/session.js" in page.text
    idle = webapp.settings.web.session_idle_minutes * 60
    assert f'data-idle-seconds="{idle}"' in page.text
    assert (await gp.get("/static/session.js")).status == 200
    assert ("drafts", "form_values") in contentbox.SEALED_COLUMNS


async def test_sending_the_request_removes_its_draft(webapp: WebApp) -> None:
    import html
    import re

    from tests.e2e.webflow import form_fields
    from tests.gateway import GP_PASSPHRASE, example
    from tests.test_withdraw_web import _with_phones

    _with_phones(webapp)  # every signed request carries the GP's numbers
    gp = await _gp(webapp)
    draft = await _save(gp)
    fields = {**form_fields(example()), "receiver.team_address": "centrum@zorg.example"}
    preview = await gp.post("/requests/preview", {**fields, "draft": draft})
    assert preview.status == 200, preview.text[:2000]
    assert f'name="draft" value="{draft}"' in preview.text
    payload = re.search(r'name="payload" value="([^"]*)"', preview.text)
    assert payload
    sent = await gp.post(
        "/requests/send",
        {
            "payload": html.unescape(payload.group(1)),
            "passphrase": GP_PASSPHRASE,
            "send_token": preview.field("send_token"),
            "draft": draft,
        },
    )
    assert sent.status == 303 and sent.location.startswith("/requests/UVZ-")
    assert _stored(webapp) == [] and webapp.audit("draft.delete")
