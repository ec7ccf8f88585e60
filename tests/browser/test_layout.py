"""The screens on a nurse's phone (390x844) and a GP's desktop (1280x900), in Debian's chromium:
no page is wider than the screen, the menu folds on the phone and stands in the bar on the
desktop, the keyboard sees where it is (skip link, focus ring), a form's errors are listed at
the top with links to their fields, the nurse's request page shows the request as a document
before the answer form with tap-to-call numbers, printing shows only the request, and axe-core
finds no serious or critical accessibility violation on any main page.

Real parts only: the `site` of test_browser.py (real HTTP, gpg, a STARTTLS relay, the worker).
With UPDATE_SCREENSHOTS=1 its screenshots (phone, and desktop where test_browser.py has none)
replace those in docs/screenshots/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe

from tests.browser.test_browser import (  # noqa: F401 - fixtures used by name
    WRONG_BSN,
    Shots,
    browser_team_keys,
    fill_request,
    log_in,
    site,
)
from tests.gateway import EXAMPLE, GP_PASSPHRASE, GP_PASSWORD, NURSE_PASSWORD, TEAM

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SIZES = (PHONE, DESKTOP)
#: axe impacts that fail a page; "moderate" and "minor" are reported but do not fail.
BLOCKING = ("serious", "critical")


async def overflow(page: Any) -> int:
    """How many CSS pixels the document is wider than the viewport (0: no sideways scroll)."""
    return int(
        await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    )


async def blocking_violations(page: Any) -> list[str]:
    results = await Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]


async def check_page(page: Any, name: str, found: dict[str, list[str]]) -> None:
    """At the phone's and the desktop's size: no sideways scroll; axe at both sizes."""
    for size in SIZES:
        await page.set_viewport_size(size)
        await page.wait_for_timeout(50)
        wide = await overflow(page)
        if wide:
            found.setdefault("overflow", []).append(f"{name} at {size['width']}px: +{wide}px")
        for v in await blocking_violations(page):
            found.setdefault("axe", []).append(f"{name} at {size['width']}px: {v}")
    await page.set_viewport_size(PHONE)


async def test_phone_and_desktop_pages_fit_read_and_pass_axe(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url, secrets = site["url"], site["secrets"]
    shots = Shots(tmp_path)
    found: dict[str, list[str]] = {}

    # The GP on the login page, then her request list and the new request form
    gp = await chromium.new_page(viewport=PHONE)
    await gp.goto(f"{url}/login")
    await check_page(gp, "login", found)
    await shots.take(gp, "phone-login")
    await log_in(gp, url, "huisarts", GP_PASSWORD, secrets["huisarts"])

    # On the phone the menu is folded: its links show after a tap on "Menu"
    await gp.goto(f"{url}/requests")
    phone_link = gp.locator("details.menu nav a[href='/requests/new']")
    assert not await phone_link.is_visible()
    assert not await gp.locator(".menu-wide").is_visible()
    await gp.click("details.menu > summary")
    assert await phone_link.is_visible()
    # ... and on the desktop it stands in the bar
    await gp.set_viewport_size(DESKTOP)
    assert await gp.locator(".menu-wide nav a[href='/requests/new']").is_visible()
    # ... as a row, not the phone's column: the bar stays low (it was 360 px with a column)
    tops = await gp.locator(".menu-wide nav a").evaluate_all(
        "as => as.map(a => Math.round(a.getBoundingClientRect().top))"
    )
    assert len(set(tops)) < len(tops) / 2, tops
    assert await gp.evaluate("() => document.querySelector('header.top').offsetHeight") < 120
    assert not await gp.locator("details.menu").is_visible()
    await gp.set_viewport_size(PHONE)

    # The first Tab reaches the skip link, visible on screen, with a focus ring
    await gp.goto(f"{url}/requests")
    await gp.keyboard.press("Tab")
    focused = await gp.evaluate(
        "() => { const e = document.activeElement; const s = getComputedStyle(e);"
        " const r = e.getBoundingClientRect();"
        " return [e.className, s.outlineStyle, s.outlineWidth, r.top >= 0 && r.bottom > 0]; }"
    )
    assert focused[0] == "skip-link" and focused[1] != "none" and focused[2] != "0px"
    assert focused[3] is True
    await check_page(gp, "request list (GP)", found)
    await shots.take_sizes(gp, "gp-list", SIZES)

    await gp.goto(f"{url}/requests/new")
    await check_page(gp, "new request form", found)
    await shots.take_sizes(gp, "form", SIZES)
    await gp.goto(f"{url}/consents")
    await check_page(gp, "consents", found)
    await shots.take_sizes(gp, "consents", SIZES)
    await gp.goto(f"{url}/asks")
    await check_page(gp, "asks (GP)", found)

    # A mistake: the error summary at the top links to the field that is wrong
    await gp.goto(f"{url}/requests/new")
    wrong = {**EXAMPLE, "patient": {**EXAMPLE["patient"], "bsn": WRONG_BSN}}
    await fill_request(gp, wrong)
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    summary = gp.locator(".error-summary")
    await summary.wait_for()
    targets = await summary.locator("a").evaluate_all("as => as.map(a => a.hash.slice(1))")
    assert "patient.bsn" in targets
    missing = await gp.evaluate("ts => ts.filter(t => !document.getElementById(t))", targets)
    assert missing == []
    await check_page(gp, "form with errors", found)
    await shots.take(gp, "phone-form-error", focus=summary)

    # Corrected, previewed, signed and sent from the phone
    await gp.fill('[name="patient.bsn"]', EXAMPLE["patient"]["bsn"])
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    await gp.wait_for_selector("pre.document")
    await check_page(gp, "preview", found)
    await shots.take_sizes(gp, "preview", (PHONE,))
    await gp.fill("#passphrase", GP_PASSPHRASE)
    await gp.click("button[name=sign]")
    await gp.wait_for_url(f"{url}/requests/UVZ-*")
    reference = gp.url.rsplit("/", 1)[-1]
    for _ in range(150):  # the app's own worker delivers it
        if any(TEAM in r.rcpt_tos for r in site["smtp"].handler.snapshot()):
            break
        await asyncio.sleep(0.1)
    await gp.reload()
    await check_page(gp, "request page (GP)", found)

    # The nurse on her phone: her list, then the request
    nurse_ctx = await chromium.new_context(viewport=PHONE)
    nurse = await nurse_ctx.new_page()
    await log_in(nurse, url, "nurse1", NURSE_PASSWORD, secrets["nurse1"])
    await nurse.goto(f"{url}/requests")
    assert reference in await nurse.inner_text("main")
    await check_page(nurse, "request list (nurse)", found)
    await shots.take(nurse, "phone-nurse-list")
    await nurse.goto(f"{url}/asks")
    await check_page(nurse, "asks (nurse)", found)
    await nurse.goto(f"{url}/requests/{reference}")
    await check_page(nurse, "request page (nurse)", found)
    await shots.take_sizes(nurse, "nurse-request", SIZES)

    # The request comes first, as a document, before the answer form
    assert EXAMPLE["patient"]["name"] in await nurse.inner_text("article.request-document")
    order = await nurse.evaluate(
        "() => Boolean(document.querySelector('article.request-document')"
        ".compareDocumentPosition(document.querySelector('form.answer'))"
        " & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    assert order is True
    # Tap to call the GP and the out-of-hours line
    calls = await nurse.locator("a[href^='tel:']").evaluate_all("as => as.map(a => a.href)")
    assert calls == ["tel:0201234567", "tel:0880030600"]  # the GP's profile (e2e conftest)
    # Keys and delivery are folded away
    assert not await nurse.locator("#technical dl").is_visible()

    # Printed: the request only, no menu and no answer form
    await nurse.emulate_media(media="print")
    assert await nurse.locator("article.request-document").is_visible()
    assert not await nurse.locator("header.top").is_visible()
    assert not await nurse.locator("form.answer").is_visible()
    await nurse.emulate_media(media="screen")

    assert found == {}, "\n".join(sum(found.values(), []))
    shots.publish()
