"""One clock for people (issue 20): the signed request's "Datum verzoek" is the gateway's moment
on the Amsterdam clock, whatever the form said; pages show times in Europe/Amsterdam with the
zone. Real app over HTTP (webapp), real gpg; the test's clock is the gateway's."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from securemail.exchange import view
from securemail.web.clock import local_time
from tests.clock import next_date, real_now
from tests.e2e.webflow import form_fields
from tests.gateway import GP_PASSPHRASE, example
from tests.web_fixtures import WebApp

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
#: a winter moment at 23:30 UTC, after today (the home was made at the real time): in
#: Amsterdam it is already the next day, 00:30
LATE = datetime.combine(next_date(real_now(), 12, 2), time(23, 30, 15), tzinfo=UTC)
NEXT_DAY = (LATE + timedelta(days=1)).date().isoformat()


def _payload(page: str) -> dict[str, Any]:
    m = re.search(r'name="payload" value="([^"]*)"', page)
    assert m, page[:2000]
    return dict(json.loads(html.unescape(m.group(1))))


def _signed_issued_at(webapp: WebApp, reference: str) -> str:
    return str(
        webapp.svc.store.read_sync(
            lambda db: view.document(db, view.require_row(db, reference))["issued_at"]
        )
    )


async def _preview(webapp: WebApp, gp: Any, issued_at: str) -> dict[str, Any]:
    form = {
        **form_fields(example()),
        "issued_at": issued_at,
        "receiver.team_address": "centrum@zorg.example",
    }
    page = await gp.post("/requests/preview", form)
    assert page.status == 200, page.text[:3000]
    return _payload(page.text)


async def _send(gp: Any, payload: dict[str, Any], token: str) -> str:
    r = await gp.post(
        "/requests/send",
        {
            "payload": json.dumps(payload),
            "passphrase": GP_PASSPHRASE,
            "sign": "1",
            "send_token": token,
        },
    )
    assert r.status == 303, r.text[:3000]
    return r.location.rsplit("/", 1)[-1]


async def test_the_signed_date_is_the_gateways_amsterdam_time(webapp: WebApp) -> None:
    # the GP's profile carries the numbers the form's principal section is filled from
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE users SET phone = '020-1234567', out_of_hours_phone = '088-0030600' "
            "WHERE username = 'gp_a'"
        )
    )
    webapp.clock.now = LATE
    gp = webapp.browser()
    await gp.login("gp_a")
    webapp.clock.now = LATE  # the login may have moved it a TOTP step
    # The form said yesterday morning (or a UTC server's reading of "now"): the gateway dates it
    payload = await _preview(webapp, gp, f"{LATE.date().isoformat()}T08:00")
    assert payload["issued_at"] == f"{NEXT_DAY}T00:30"
    # Signed a few minutes later on the preview page: the signed date is the moment of
    # signing (issue 21), on the Amsterdam clock, to the second
    webapp.clock.advance(minutes=3)
    ref = await _send(gp, payload, "t1")
    signed = datetime.fromisoformat(_signed_issued_at(webapp, ref))
    assert signed == webapp.clock.now.astimezone(AMSTERDAM).replace(microsecond=0)
    assert signed.isoformat().startswith(f"{NEXT_DAY}T00:33:15")

    # A payload altered to another date is dated anew at signing
    payload = await _preview(webapp, gp, "")
    payload["issued_at"] = f"{(LATE - timedelta(days=12)).date().isoformat()}T09:00"
    ref = await _send(gp, payload, "t2")
    signed = datetime.fromisoformat(_signed_issued_at(webapp, ref))
    assert signed == webapp.clock.now.astimezone(AMSTERDAM).replace(microsecond=0)

    # The request page shows its times on the Amsterdam clock with the zone, not UTC
    page = await gp.get(f"/requests/{ref}")
    shown = (LATE + timedelta(minutes=3)).astimezone(AMSTERDAM).strftime("%d-%m-%Y %H:%M")
    assert f"{shown} CET" in page.text
    assert " UTC" not in page.text


def test_local_time_says_the_zone_summer_and_winter() -> None:
    assert local_time("2026-07-01T10:00:00.000Z") == "01-07-2026 12:00 CEST"
    assert local_time("2026-12-01T10:00:00+00:00") == "01-12-2026 11:00 CET"
    assert local_time("2026-12-01T10:00:00") == "01-12-2026 11:00 CET"  # naive: stored UTC
    assert local_time("2026-12-01T23:30:00Z", date_only=True) == "02-12-2026"
    assert local_time("") == "" and local_time(None) == ""
    assert local_time("geen tijd") == "geen tijd"
