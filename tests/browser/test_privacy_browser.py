"""The privacy officer's patient page (issue 20, part 7) on a phone (390x844) and a desktop
(1280x900) in chromium, after a real send: one line per action in plain Dutch, the consent
checks folded, no sideways scrolling and no serious or critical axe-core violation; the
screenshots go to docs/screenshots/ with UPDATE_SCREENSHOTS=1. Real parts only: the `site`
of test_browser.py (real HTTP, gpg, relay, worker)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from securemail.accounts import auth
from securemail.exchange import send as exchange
from tests.browser.test_browser import (  # noqa: F401 - fixtures used by name
    PRIVACY_PASSWORD,
    Shots,
    browser_team_keys,
    log_in,
    site,
)
from tests.browser.test_layout import DESKTOP, PHONE, check_page
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, example

pytestmark = pytest.mark.browser

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


async def test_officers_patient_page_reads_plain_dutch_at_phone_and_desktop(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url, secrets, svc = site["url"], site["secrets"], site["svc"]
    gp = svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "huisarts"), "test")
    )
    reference = (await exchange.send(svc, gp, example(), GP_PASSPHRASE, to=TEAM)).reference
    shots = Shots(tmp_path)
    found: dict[str, list[str]] = {}

    page = await chromium.new_page(viewport=PHONE)
    await log_in(page, url, "privacy", PRIVACY_PASSWORD, secrets["privacy"])
    await page.goto(f"{url}/privacy/patient")
    await page.fill("#bsn", EXAMPLE["patient"]["bsn"])
    await page.click("button[name=format][value=page]")
    await page.wait_for_selector("table.audit-lines")
    assert EXAMPLE["patient"]["bsn"] not in page.url
    body = await page.inner_text("main")
    assert f"Verzoek {reference} ondertekend en verstuurd naar" in body
    assert "Toestemmingscontrole: toestemming aanwezig" in body
    assert not UUID_RE.search(await page.content())
    fold = page.locator("details.fold").first
    await fold.locator("summary").click()
    assert await fold.locator("li").count() >= 2
    await check_page(page, "privacy patient page (officer)", found)
    await shots.take(page, "phone-privacy-patient", focus=page.locator("table.audit-lines"))
    await page.set_viewport_size(DESKTOP)
    await shots.take(page, "desktop-privacy-patient", focus=page.locator("table.audit-lines"))
    shots.publish()
    assert found == {}, "\n".join(sum(found.values(), []))
