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
from tests.auth_fixtures import PASSWORD
from tests.e2e.webflow import form_fields
from tests.gateway import EXAMPLE, GP_PASSPHRASE, example
from tests.test_consent_web import ids
from tests.test_withdraw_web import _with_phones
from tests.web_fixtures import Browser, WebApp

CENTRUM = "centrum@zorg.example"


def _add_assistant(webapp: WebApp, username: str = "poh_a", gp: str = "gp_a") -> None:
    def add(db):  # type: ignore[no-untyped-def]
        auth.add_user(
            db,
            SYSTEM,
            username=username,
            name="Petra Oosterhuis",
            role="assistant",
            org_code="01000001",
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
    for path in ("/requests", f"/requests/{first}", "/privacy"):
        assert (await poh.get(path)).status == 403, path
    # a change needs the earlier request, which the assistant does not read: not found
    change = await poh.get(f"/requests/{first}/wijzigen")
    assert change.status == 404 and EXAMPLE["patient"]["name"] not in change.text
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
