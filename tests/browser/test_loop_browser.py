"""The whole loop in Debian's chromium (headless, through playwright): the GP fills, signs and
sends a request; a nurse of the receiving team opens it from her list and accepts it with the
name of the nurse in charge; the GP sees that name on the request page. Real HTTP on 127.0.0.1,
real gpg, a real STARTTLS relay, the app's own delivery worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from securemail.web import create_app
from tests.browser.test_browser import (
    accept_on_page,
    fill_request,
    log_in,
)  # as the GP and nurse do it
from tests.gateway import EXAMPLE, GP_PASSPHRASE, GP_PASSWORD, NURSE_PASSWORD, TEAM
from tests.loop_fixtures import Loop

pytestmark = pytest.mark.browser

NURSE_IN_CHARGE = "M. Zwaan-de Boer"


@pytest.fixture
async def site(loop: Loop, aiohttp_server: Any) -> AsyncIterator[str]:
    app = create_app(loop.gw.svc.settings, services=loop.gw.svc, run_worker=True)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_gp_sends_nurse_accepts_gp_sees_the_nurse_in_charge(
    chromium: Any, site: str, loop: Loop, smtp_server: Any
) -> None:
    urls: list[str] = []
    # Given the GP, logged in, who fills, previews, signs and sends a request
    gp_ctx = await chromium.new_context()
    gp = await gp_ctx.new_page()
    gp.on("request", lambda r: urls.append(r.url))
    secrets = loop.gw.extra["totp_secrets"]
    await log_in(gp, site, "huisarts", GP_PASSWORD, secrets["huisarts"], now=loop.clock.now)
    await gp.goto(f"{site}/requests/new")
    team_option = gp.locator(f'[name="receiver.team_address"] option[value="{TEAM}"]')
    assert "voorkeursaanbieder" in await team_option.inner_text()
    await fill_request(gp, EXAMPLE, loop.clock.now)  # the dates of the gateway's day
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    await gp.wait_for_selector("pre.document")
    await gp.fill("#passphrase", GP_PASSPHRASE)
    await gp.click("button[name=sign]")
    await gp.wait_for_url(f"{site}/requests/UVZ-*")
    reference = gp.url.rsplit("/", 1)[-1]
    for _ in range(150):  # the app's own worker delivers it
        if any(TEAM in r.rcpt_tos for r in smtp_server.handler.snapshot()):
            break
        await asyncio.sleep(0.1)
    # When a nurse of the team opens it from her list and accepts it
    nurse_ctx = await chromium.new_context()
    nurse = await nurse_ctx.new_page()
    nurse.on("request", lambda r: urls.append(r.url))
    await log_in(nurse, site, "nurse1", NURSE_PASSWORD, secrets["nurse1"], now=loop.clock.now)
    await nurse.goto(f"{site}/requests")
    await nurse.click(f"text={reference}")
    await nurse.wait_for_url(f"{site}/requests/{reference}")
    await accept_on_page(nurse, site, reference, NURSE_IN_CHARGE)
    # Then the GP sees the nurse in charge on the request page, and "geaccepteerd" in the list
    await gp.reload()
    assert NURSE_IN_CHARGE in await gp.inner_text("#answer .nurse-in-charge")
    await gp.goto(f"{site}/requests")
    assert "geaccepteerd" in await gp.inner_text("main")
    # No page put patient data (or the nurse's name) into a URL
    for u in urls:
        for marker in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["postcode"], "Zwaan"):
            assert marker not in u and marker.replace(" ", "+") not in u, u
    await gp_ctx.close()
    await nurse_ctx.close()
