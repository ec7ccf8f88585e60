"""The real app in Debian's chromium (headless, through playwright): a GP logs in with TOTP,
makes a mistake in the form and sees the error next to the field, corrects it, previews,
signs and sends; a nurse of the receiving team logs in and sees the request; the practice's
privacy officer sees the audit view. No part is faked: real HTTP on 127.0.0.1, real gpg,
a real STARTTLS relay.

Screenshots of each page go to tmp_path; with UPDATE_SCREENSHOTS=1 they replace the ones
in docs/screenshots/ that the README shows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.accounts import auth, totp
from securemail.form import request as forms
from securemail.web import create_app
from tests.e2e.webflow import typed_dates
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    GP_PASSWORD,
    NURSE_PASSWORD,
    TEAM,
    build_gateway,
    close_gateway,
    make_team_member_keys,
    relay_settings,
)

pytestmark = pytest.mark.browser

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PRIVACY_PASSWORD = "privacy officer password"
VIEWPORT = {"width": 1280, "height": 860}
WRONG_BSN = EXAMPLE["patient"]["bsn"][:-1] + str((int(EXAMPLE["patient"]["bsn"][-1]) + 1) % 10)
#: Form fields the page fills itself or that are not inputs.
NOT_TYPED = ("principal.", "reference", "form_id", "form_version", "issued_at")


@pytest.fixture(scope="session")
def browser_team_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two nurses' key pairs for the receiving team, made once: {'public', 'secret'} armor."""
    return make_team_member_keys(tmp_path_factory.mktemp("browser-team-keys") / "gnupg")


@pytest.fixture
async def site(
    tmp_path: Path,
    browser_team_keys: dict[str, str],
    smtp_server: Any,
    relay_cafile: str,
    aiohttp_server: Any,
) -> AsyncIterator[dict[str, Any]]:
    """The gateway of the e2e tests, served with its delivery worker; everyone paired."""
    smtp = relay_settings(smtp_server, relay_cafile)
    gw = await build_gateway(team_keys=browser_team_keys, smtp=smtp)
    svc = gw.svc
    svc.store.write_sync(
        lambda db: auth.add_user(
            db,
            SYSTEM,
            username="privacy",
            name="P. Rivacy",
            role="privacy_officer",
            org_code="01234567",
            password=PRIVACY_PASSWORD,
            now=svc.now_iso(),
        )
    )
    secrets = {}
    for username in ("huisarts", "nurse1", "privacy"):
        secrets[username] = svc.store.write_sync(
            lambda db, u=username: auth.enrol_totp_for_demo(db, auth.user_by_name(db, u).id)
        )
    app = create_app(svc.settings, services=svc, run_worker=True)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield {
        "url": str(server.make_url("")).rstrip("/"),
        "secrets": secrets,
        "svc": svc,
        "smtp": smtp_server,
        "app": app,
    }
    await server.close()
    close_gateway(gw, services=False)


class Shots:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "screenshots"
        self.dir.mkdir()
        self.taken: list[Path] = []

    async def take(self, page: Any, name: str, focus: Any = None) -> None:
        """The visible part of the page (1280x860), centred on focus when given."""
        if focus is not None:
            await focus.evaluate("e => e.scrollIntoView({block: 'center'})")
        path = self.dir / f"{name}.png"
        await page.screenshot(path=str(path))
        self.taken.append(path)

    async def take_sizes(
        self, page: Any, name: str, sizes: tuple[dict[str, int], ...], focus: Any = None
    ) -> None:
        """The page at each size: ``phone-<name>`` at a width under 600 px, ``<name>`` at a
        desktop's; the viewport is left at the first size."""
        for size in sizes:
            await page.set_viewport_size(size)
            await page.wait_for_timeout(50)
            prefix = "phone-" if size["width"] < 600 else ""
            await self.take(page, f"{prefix}{name}", focus=focus)
        await page.set_viewport_size(sizes[0])

    def publish(self) -> None:
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for path in self.taken:
                shutil.copy(path, DOCS_SCREENSHOTS / path.name)


async def log_in(
    page: Any,
    url: str,
    username: str,
    password: str,
    secret: str,
    shots: Shots | None = None,
    now: datetime | None = None,
) -> None:
    """Password, then the code the authenticator shows at `now` (the gateway's clock)."""
    await page.goto(f"{url}/login")
    if shots:
        await shots.take(page, "login")
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/login/totp")
    if shots:
        await shots.take(page, "totp")
    await page.fill("#code", totp.code_at(secret, totp.step_of(now or _now())))
    await page.click("form[action='/login/totp'] button[type=submit]")
    await page.wait_for_load_state()
    assert "/login" not in page.url, await page.content()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def fill_request(page: Any, data: dict[str, Any], now: datetime | None = None) -> None:
    """Type the request into the form as a GP would: every field by its name, the example's
    relative dates ("now", "today+6m") as the GP's calendar shows them on `now`'s day (the
    gateway's clock; the real one by default)."""
    for name, value in typed_dates(forms.flatten(data), now or _now()).items():
        if name.startswith(NOT_TYPED):
            continue
        field = page.locator(f'[name="{name}"]')
        if await field.count() == 0:
            continue
        tag = await field.evaluate("e => e.tagName.toLowerCase() + ':' + (e.type || '')")
        if tag.startswith("select"):
            await field.select_option(str(value))
        elif tag.endswith("checkbox"):
            await field.set_checked(value in ("on", "true", True))
        else:
            await field.fill(str(value))


async def accept_on_page(page: Any, base: str, reference: str, nurse_in_charge: str) -> None:
    """A nurse on the request's page accepts it with the nurse in charge, her phone, the
    start of care, the level and the competence confirmation; back on the page after."""
    await page.select_option("#answer-status", "geaccepteerd")
    await page.fill("#answer-nurse_in_charge", nurse_in_charge)
    await page.fill("#answer-nurse_phone", "06 12345678")
    await page.fill("#answer-care_start", "2030-01-02T09:00")
    await page.select_option("#answer-performer_level", "verpleegkundige")
    await page.check("#answer-competence_confirmed")
    await page.click("form.answer button[type=submit]")
    await page.wait_for_url(f"{base}/requests/{reference}")
    assert nurse_in_charge in await page.inner_text("#answer")


async def test_gp_sends_nurse_sees_privacy_officer_audits(
    chromium: Any, site: dict[str, Any], tmp_path: Path
) -> None:
    url, secrets = site["url"], site["secrets"]
    shots = Shots(tmp_path)
    urls: list[str] = []

    # Given the GP, logged in with password and TOTP
    gp = await chromium.new_page(viewport=VIEWPORT)
    gp.on("request", lambda r: urls.append(r.url))
    await log_in(gp, url, "huisarts", GP_PASSWORD, secrets["huisarts"], shots)

    # When the GP fills the form with a wrong BSN
    await gp.goto(f"{url}/requests/new")
    wrong = {**EXAMPLE, "patient": {**EXAMPLE["patient"], "bsn": WRONG_BSN}}
    await fill_request(gp, wrong)
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    # Then the error shows next to the BSN field
    error = gp.locator('.field.invalid:has([name="patient.bsn"]) .field-error')
    await error.wait_for()
    assert "BSN" in await error.inner_text() or "11" in await error.inner_text()
    assert await gp.locator('[name="patient.bsn"]').input_value() == WRONG_BSN
    await shots.take(gp, "form-error", focus=error)

    # When the GP corrects it, previews, signs and sends
    await gp.fill('[name="patient.bsn"]', EXAMPLE["patient"]["bsn"])
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    await gp.wait_for_selector("pre.document")
    assert EXAMPLE["patient"]["name"] in await gp.inner_text("pre.document")
    await shots.take(gp, "preview")
    await gp.fill("#passphrase", GP_PASSPHRASE)
    await gp.click("button[name=sign]")
    await gp.wait_for_url(f"{url}/requests/UVZ-*")
    reference = gp.url.rsplit("/", 1)[-1]
    # Then the request page shows it, and the relay receives it sealed
    assert reference in await gp.inner_text("h1")
    to_team: list[bytes] = []
    for _ in range(150):
        to_team = [
            r.content for r in site["smtp"].handler.snapshot() if TEAM in r.rcpt_tos and r.accepted
        ]
        if to_team:
            break
        await asyncio.sleep(0.1)
    assert len(to_team) == 1
    assert EXAMPLE["patient"]["bsn"].encode() not in to_team[0]
    await gp.reload()
    await shots.take(gp, "request")

    # A nurse of the receiving team logs in and sees the request
    nurse_ctx = await chromium.new_context(viewport=VIEWPORT)
    nurse = await nurse_ctx.new_page()
    nurse.on("request", lambda r: urls.append(r.url))
    await log_in(nurse, url, "nurse1", NURSE_PASSWORD, secrets["nurse1"])
    await nurse.goto(f"{url}/requests")
    assert reference in await nurse.inner_text("main")
    await shots.take(nurse, "nurse-list")
    await nurse.click(f"text={reference}")
    await nurse.wait_for_url(f"{url}/requests/{reference}")
    assert EXAMPLE["patient"]["name"] in await nurse.inner_text("article.request-document")
    assert TEAM in await nurse.inner_text("main")

    # The practice's privacy officer sees the audit view
    po_ctx = await chromium.new_context(viewport=VIEWPORT)
    po = await po_ctx.new_page()
    po.on("request", lambda r: urls.append(r.url))
    await log_in(po, url, "privacy", PRIVACY_PASSWORD, secrets["privacy"])
    has_privacy = any(
        getattr(r.resource, "canonical", "") == "/privacy" for r in site["app"].router.routes()
    )
    response = await po.goto(f"{url}/privacy")
    assert response is not None
    if has_privacy:
        assert response.status == 200
        # The exchange just made shows in the organisation pairs of the overview.
        assert "Praktijk Test" in await po.inner_text("main")
        await shots.take(po, "audit")
    else:  # the audit view is not merged in yet: the route must not exist rather than half-work
        assert response.status == 404

    # No page ever put patient data into a URL
    for u in urls:
        for marker in (EXAMPLE["patient"]["bsn"], WRONG_BSN, EXAMPLE["patient"]["postcode"]):
            assert marker not in u and marker.replace(" ", "+") not in u, u
    shots.publish()
