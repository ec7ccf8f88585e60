"""The nurse's pass-on list and the GP's hops in Debian's chromium (headless, playwright), on a
nurse's phone (390 px) and a GP's desktop: the list offers only teams that can receive (the
region's passing-on desk first), a team without a usable key is greyed with its reason, a
blocked choice (the patient objected) says what to do next, a decline with no team says it
goes to the desk, and the GP's page shows every hop. axe-core finds no serious or critical
violation on these pages at either size; no page scrolls sideways.

Real parts only: the loop fixture (real gpg, a STARTTLS relay, the app's own worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from securemail.exchange import send as exchange
from securemail.web import create_app
from tests.browser.test_browser import log_in
from tests.browser.test_layout import DESKTOP, PHONE, check_page
from tests.e2e import test_consent_loop as consent_loop  # its helpers, not its tests
from tests.gateway import GP_PASSWORD, NURSE_PASSWORD, OTHER_TEAM, TEAM, example
from tests.loop_fixtures import TEAM_B, Loop

pytestmark = pytest.mark.browser

DESK, OOST = consent_loop.DESK, consent_loop.OOST


@pytest.fixture
async def desk_site(loop: Loop, aiohttp_server: Any) -> AsyncIterator[str]:
    """The loop's gateway with the region's passing-on desk and Wijkteam Oost, served."""
    consent_loop._desk_and_oost(loop)
    app = create_app(loop.gw.svc.settings, services=loop.gw.svc, run_worker=True)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def _delivered(smtp_server: Any, address: str, count: int = 1) -> None:
    for _ in range(150):  # the app's own worker delivers it
        if sum(address in r.rcpt_tos for r in smtp_server.handler.snapshot()) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing delivered to {address}")


async def test_pass_on_list_blocked_choice_and_the_gps_hops(
    chromium: Any, desk_site: str, loop: Loop, smtp_server: Any
) -> None:
    svc = loop.gw.svc
    secrets = loop.gw.extra["totp_secrets"]
    found: dict[str, list[str]] = {}
    sent = await exchange.send(svc, loop.gw.gp, example(), consent_loop.GP_PASSPHRASE)
    await _delivered(smtp_server, TEAM)
    consent_loop._object(loop, team=TEAM_B)  # the patient objected to team B

    # The nurse on her phone opens the request: the list she passes on from
    nurse_ctx = await chromium.new_context(viewport=PHONE)
    nurse = await nurse_ctx.new_page()
    await log_in(nurse, desk_site, "nurse1", NURSE_PASSWORD, secrets["nurse1"], now=loop.clock.now)
    await nurse.goto(f"{desk_site}/requests/{sent.reference}")
    options = await nurse.locator("#answer-passed_to option").evaluate_all(
        "os => os.map(o => ({value: o.value, disabled: o.disabled, text: o.textContent}))"
    )
    offered = [o["value"] for o in options if o["value"] and not o["disabled"]]
    assert offered[0] == DESK and "Doorbemiddelingspunt" in options[1]["text"]
    assert set(offered) == {DESK, OOST, TEAM_B}
    [greyed] = [o for o in options if o["disabled"]]
    assert greyed["value"] == OTHER_TEAM and "geen bruikbare sleutel" in greyed["text"]
    # ... and the form says what a decline with no team does
    assert "vanzelf naar het doorbemiddelingspunt" in await nurse.inner_text("#decline-to-desk")
    await check_page(nurse, "pass-on form (nurse)", found)

    # A blocked choice explains itself: the patient objected to team B
    await nurse.select_option("#answer-status", "doorbemiddeld")
    await nurse.fill("#answer-reason", "Geen capaciteit deze week")
    await nurse.select_option("#answer-passed_to", TEAM_B)
    await nurse.click("form.answer button[type=submit]")
    summary = await nurse.inner_text("#error-summary")
    assert "bezwaar" in summary and "Kies een ander team of het doorbemiddelingspunt" in summary
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert status["team_address"] == TEAM  # still with team A
    await check_page(nurse, "blocked pass-on (nurse)", found)

    # She declines with no team: it goes to the desk by itself, and she is back at her list
    await nurse.select_option("#answer-status", "afgewezen")
    await nurse.select_option("#answer-passed_to", "")
    await nurse.click("form.answer button[type=submit]")
    await nurse.wait_for_url(f"{desk_site}/requests")
    await _delivered(smtp_server, DESK)

    # The GP at the desktop sees every hop: team A declined, now with the desk
    gp_ctx = await chromium.new_context(viewport=DESKTOP)
    gp = await gp_ctx.new_page()
    await log_in(gp, desk_site, "huisarts", GP_PASSWORD, secrets["huisarts"], now=loop.clock.now)
    await gp.goto(f"{desk_site}/requests/{sent.reference}")
    hops = await gp.locator("ol.hops li").all_inner_texts()
    assert len(hops) == 2
    assert TEAM in hops[0] and "afgewezen" in hops[0].lower() and "Vol" not in hops[0]
    assert DESK in hops[1] and "hier ligt het nu" in hops[1]
    await check_page(gp, "request page with hops (GP)", found)
    assert found == {}, "\n".join(sum(found.values(), []))
