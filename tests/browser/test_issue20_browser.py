"""The new pages of issue 20 on a phone (390x844) and a desktop (1280x900) in chromium: the
GP saves a request form as a draft and finds it again; the administrator's people and delivery
queue pages. No sideways scrolling and no serious or critical axe-core violation on any of
them. Real parts only: the `site` of test_browser.py (real HTTP, gpg, relay, worker).
With UPDATE_SCREENSHOTS=1 the phone and desktop screenshots of these pages replace those in
docs/screenshots/ (docs/screens.md lists them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.accounts import auth
from tests.auth_fixtures import PASSWORD
from tests.browser.test_browser import (  # noqa: F401 - fixtures used by name
    Shots,
    browser_team_keys,
    log_in,
    site,
)
from tests.browser.test_layout import PHONE, SIZES, check_page
from tests.gateway import EXAMPLE, GP_PASSWORD

pytestmark = pytest.mark.browser


async def test_drafts_and_admin_pages_fit_and_pass_axe(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url, secrets, svc = site["url"], site["secrets"], site["svc"]
    found: dict[str, list[str]] = {}
    shots = Shots(tmp_path)

    gp = await chromium.new_page(viewport=PHONE)
    await log_in(gp, url, "huisarts", GP_PASSWORD, secrets["huisarts"])
    await gp.goto(f"{url}/requests/new")
    await gp.fill('[name="patient.name"]', EXAMPLE["patient"]["name"])
    await gp.click("form#request-form button[formaction='/drafts/save']")
    await gp.wait_for_url(f"{url}/drafts/*")
    assert EXAMPLE["patient"]["name"] not in gp.url
    assert await gp.input_value('[name="patient.name"]') == EXAMPLE["patient"]["name"]
    await check_page(gp, "draft (GP)", found)
    await shots.take_sizes(gp, "draft", SIZES)
    await gp.goto(f"{url}/drafts")
    assert await gp.locator("a[href^='/drafts/']").count() == 1
    await check_page(gp, "drafts list (GP)", found)
    await shots.take_sizes(gp, "drafts", SIZES)

    def add_admin(db: Any) -> str:
        auth.add_user(
            db, SYSTEM, username="beheer", name="B. Eheer", role="admin", org_code=None,
            password=PASSWORD, now=svc.now_iso(),
        )  # fmt: skip
        return auth.enrol_totp_for_demo(db, auth.user_by_name(db, "beheer").id)

    admin_secret = svc.store.write_sync(add_admin)
    admin_ctx = await chromium.new_context(viewport=PHONE)
    admin = await admin_ctx.new_page()
    await log_in(admin, url, "beheer", PASSWORD, admin_secret)
    await admin.goto(f"{url}/admin")
    await check_page(admin, "people (admin)", found)
    await shots.take_sizes(admin, "admin", SIZES)
    await admin.goto(f"{url}/admin/queue")
    await check_page(admin, "delivery queue (admin)", found)
    await shots.take_sizes(admin, "admin-queue", SIZES)
    assert found == {}, "\n".join(sum(found.values(), []))
    shots.publish()
