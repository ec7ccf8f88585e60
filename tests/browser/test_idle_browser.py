"""The idle session in Debian's chromium (headless, through playwright): two minutes before
the server ends an idle session, the request form warns (role=alert, so a screen reader
announces it) with "Nu opslaan als concept"; pressing it keeps the form as a draft that the
practice's list shows and that reopens with what was typed. After the idle timeout a submit
leads to the login page, and after logging in the draft saved before is there.

Two clocks, moved together: the browser's (playwright's ``page.clock``: the page's timers
and Date) and the gateway's (the `loop` fixture's Clock, which dates and ends sessions).
Real HTTP on 127.0.0.1, real gpg, a real STARTTLS relay, the app's own worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from securemail.web import create_app
from tests.browser.test_browser import log_in
from tests.gateway import EXAMPLE, GP_PASSWORD
from tests.loop_fixtures import Loop

pytestmark = pytest.mark.browser

NAME = EXAMPLE["patient"]["name"]
#: What the GP typed after the draft was saved and then left unsaved past the timeout.
UNSAVED = "Pietersen-van Dam"
WARN_BEFORE = 120  # seconds: static/session.js shows the warning this long before the end


@pytest.fixture
async def site(loop: Loop, aiohttp_server: Any) -> AsyncIterator[str]:
    app = create_app(loop.gw.svc.settings, services=loop.gw.svc, run_worker=True)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def _log_in(page: Any, site: str, loop: Loop) -> None:
    secret = loop.gw.extra["totp_secrets"]["huisarts"]
    await log_in(page, site, "huisarts", GP_PASSWORD, secret, now=loop.clock.now)


async def test_the_idle_warning_saves_a_draft_that_outlives_the_session(
    chromium: Any, site: str, loop: Loop
) -> None:
    idle = loop.gw.svc.settings.web.session_idle_minutes * 60
    ctx = await chromium.new_context(viewport={"width": 1280, "height": 900})
    gp = await ctx.new_page()
    await gp.clock.install()  # the page's setTimeout and Date move only when told
    await _log_in(gp, site, loop)

    # Given the GP halfway through a new request
    await gp.goto(f"{site}/requests/new")
    await gp.fill('[name="patient.name"]', NAME)
    warning = gp.locator("#session-warning")
    # ... the warning is not there until two minutes before the end
    await gp.clock.run_for((idle - WARN_BEFORE - 1) * 1000)
    assert not await warning.is_visible()
    # When the page has been idle until two minutes before the server ends the session
    await gp.clock.run_for(2000)
    loop.clock.advance(seconds=idle - WARN_BEFORE + 1)
    # Then it warns, as an alert a screen reader announces, with the button to keep the work
    await warning.wait_for(state="visible", timeout=5000)
    assert await warning.get_attribute("role") == "alert"
    assert "twee minuten" in await warning.inner_text()
    save = gp.get_by_role("button", name="Nu opslaan als concept")
    assert await save.is_visible()

    # When the GP presses it, the session still alive on the gateway's clock
    await save.click()
    await gp.wait_for_url(f"{site}/drafts/*")
    draft = gp.url.split("/drafts/", 1)[1].split("?")[0]
    assert NAME not in gp.url
    # Then the draft reopens with the input, and the practice's list shows it
    assert await gp.input_value('[name="patient.name"]') == NAME
    await gp.goto(f"{site}/drafts")
    assert await gp.locator(f"a[href='/drafts/{draft}']").count() == 1
    assert NAME not in await gp.inner_text("main")  # the list names who and when, not whom

    # Given the draft open again, changed, and left alone past the server's idle timeout
    await gp.goto(f"{site}/drafts/{draft}")
    await gp.fill('[name="patient.name"]', UNSAVED)
    loop.clock.advance(seconds=idle + 60)
    # When the GP then submits the form, it leads to the login page
    await gp.click("form#request-form button[formaction='/drafts/save']")
    await gp.wait_for_url(f"{site}/login")
    # Then after logging in again the draft saved before the timeout is there, as saved
    await _log_in(gp, site, loop)
    await gp.goto(f"{site}/drafts")
    assert await gp.locator("a[href^='/drafts/']").count() == 1
    await gp.goto(f"{site}/drafts/{draft}")
    assert await gp.input_value('[name="patient.name"]') == NAME
    await ctx.close()
