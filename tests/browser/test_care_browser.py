"""The care request (aanmelding wijkverpleging) in Debian's chromium: the GP fills, signs and
sends the wound-care request at a desktop's width (1280 px); a nurse of the receiving team
opens it on her phone (390 px), reads the risky line flagged "niet voorbehouden" and
accepts with the nurse in charge; the GP sees that name. And the other way: a nurse asks
the practice for a home visit on her phone, the GP answers in the ask's conversation at her
desk, the nurse reads the answer on her phone and replies there. At both widths every page of the
journey fits the screen and axe-core finds no serious or critical violation; no URL carries
patient data.

Real parts only: the `site` of test_browser.py (real HTTP, gpg, a STARTTLS relay, the worker).
With UPDATE_SCREENSHOTS=1 the phone and desktop screenshots of the care request form, the GP's
request page with its follow-up and "voor het dossier" buttons, and the ask pages replace those
in docs/screenshots/ (docs/screens.md lists them).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_browser import (  # noqa: F401 - fixtures used by name
    Shots,
    accept_on_page,
    browser_team_keys,
    fill_request,
    log_in,
    site,
)
from tests.browser.test_layout import DESKTOP, PHONE, SIZES, check_page
from tests.gateway import GP_PASSPHRASE, GP_PASSWORD, NURSE_PASSWORD, TEAM

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NURSE_IN_CHARGE = "M. Zwaan-de Boer"


def wound_care() -> dict[str, Any]:
    """The example care request without reserved lines: wound care only, no Wet BIG order."""
    data: dict[str, Any] = json.loads(
        (ROOT / "examples" / "aanmelding_wijkverpleging.json").read_text(encoding="utf-8")
    )
    for key in ("procedures", "period", "instructions"):
        data.pop(key)
    return data


async def delivered(smtp: Any) -> None:
    for _ in range(150):  # the app's own worker delivers it
        if any(TEAM in r.rcpt_tos for r in smtp.handler.snapshot()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the care request was not delivered to the team")


async def test_gp_sends_care_request_on_desktop_nurse_answers_on_phone(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url, secrets = site["url"], site["secrets"]
    care = wound_care()
    found: dict[str, list[str]] = {}
    shots = Shots(tmp_path)
    urls: list[str] = []

    # Given the GP at her desk, on the care request's form
    gp_ctx = await chromium.new_context(viewport=DESKTOP)
    gp = await gp_ctx.new_page()
    gp.on("request", lambda r: urls.append(r.url))
    await log_in(gp, url, "huisarts", GP_PASSWORD, secrets["huisarts"])
    await gp.goto(f"{url}/requests/new?form=aanmelding_wijkverpleging")
    assert await gp.locator('[name="form_id"]').input_value() == "aanmelding_wijkverpleging"
    await check_page(gp, "care request form", found)
    await shots.take_sizes(gp, "care-form", SIZES)
    await gp.set_viewport_size(DESKTOP)

    # When she fills it, checks the preview and signs it
    await fill_request(gp, care)
    await gp.click("form[action='/requests/preview'] button[type=submit]")
    await gp.wait_for_selector("pre.document")
    assert "Wondzorg (niet voorbehouden)" in await gp.inner_text("main")
    await check_page(gp, "care request preview", found)
    await gp.set_viewport_size(DESKTOP)
    await gp.fill("#passphrase", GP_PASSPHRASE)
    await gp.click("button[name=sign]")
    await gp.wait_for_url(f"{url}/requests/AWV-*")
    reference = gp.url.rsplit("/", 1)[-1]
    await delivered(site["smtp"])

    # Then a nurse of the team opens it from her list on her phone
    nurse_ctx = await chromium.new_context(viewport=PHONE)
    nurse = await nurse_ctx.new_page()
    nurse.on("request", lambda r: urls.append(r.url))
    await log_in(nurse, url, "nurse1", NURSE_PASSWORD, secrets["nurse1"])
    await nurse.goto(f"{url}/requests")
    await nurse.click(f"text={reference}")
    await nurse.wait_for_url(f"{url}/requests/{reference}")
    document = await nurse.inner_text("article.request-document")
    assert care["patient"]["name"] in document and "niet voorbehouden" in document
    await check_page(nurse, "care request page (nurse)", found)

    # ... and accepts it with the nurse in charge, on the phone
    await accept_on_page(nurse, url, reference, NURSE_IN_CHARGE)
    await check_page(nurse, "answered care request (nurse)", found)

    # The GP sees the nurse in charge on her request page
    await gp.reload()
    assert NURSE_IN_CHARGE in await gp.inner_text("#answer .nurse-in-charge")
    await check_page(gp, "answered care request (GP)", found)
    # the buttons to start a follow-up and to file it "voor het dossier"
    assert await gp.locator(f"a[href='/requests/{reference}/wijzigen']").count() == 1
    await shots.take_sizes(gp, "gp-request", SIZES)
    await shots.take_sizes(gp, "gp-request-dossier", SIZES, focus=gp.locator("#dossier"))

    assert found == {}, "\n".join(v for vs in found.values() for v in vs)
    shots.publish()
    for u in urls:  # no page put patient data into a URL
        for marker in (care["patient"]["bsn"], care["patient"]["postcode"], "Zwaan"):
            assert marker not in u and marker.replace(" ", "+") not in u, u
    await gp_ctx.close()
    await nurse_ctx.close()


async def test_nurse_asks_a_home_visit_on_her_phone_and_reads_the_gps_answer(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url, secrets = site["url"], site["secrets"]
    care = wound_care()
    found: dict[str, list[str]] = {}
    shots = Shots(tmp_path)
    answer = "Ik kom vandaag om 15.00 uur langs."

    # Given a nurse on her phone, on the ask form
    nurse_ctx = await chromium.new_context(viewport=PHONE)
    nurse = await nurse_ctx.new_page()
    await log_in(nurse, url, "nurse1", NURSE_PASSWORD, secrets["nurse1"])
    await nurse.goto(f"{url}/asks/new")
    await check_page(nurse, "ask form (nurse)", found)
    await shots.take_sizes(nurse, "ask-form", SIZES)
    # When she asks the practice for a home visit (no procedure for a visit)
    await nurse.select_option("#ask_kind", "huisbezoek")
    await nurse.select_option("#practice_code", "01234567")
    await nurse.fill('[name="patient.bsn"]', care["patient"]["bsn"])
    await nurse.fill('[name="patient.name"]', care["patient"]["name"])
    await nurse.fill("#reason", "Toenemende benauwdheid sinds gisteren")
    await nurse.select_option("#urgency", "spoed")
    await nurse.click("form[action='/asks/new'] button[type=submit]")
    await nurse.wait_for_url(f"{url}/asks/ASK-*")
    reference = nurse.url.rsplit("/", 1)[-1]
    assert "Vraag om een huisbezoek" in await nurse.inner_text("h1")
    await check_page(nurse, "ask page (nurse)", found)

    # Then the GP, at her desk, answers it on the ask's page
    gp_ctx = await chromium.new_context(viewport=DESKTOP)
    gp = await gp_ctx.new_page()
    await log_in(gp, url, "huisarts", GP_PASSWORD, secrets["huisarts"])
    await gp.goto(f"{url}/asks")
    await gp.click(f"text={reference}")
    await gp.wait_for_url(f"{url}/asks/{reference}")
    await check_page(gp, "ask page with the conversation (GP)", found)
    await shots.take_sizes(gp, "ask-gp", SIZES)
    await gp.set_viewport_size(DESKTOP)
    await gp.fill("#thread-body", answer)
    await gp.click("form.thread-form button[type=submit]")
    await gp.wait_for_url(f"{url}/asks/{reference}#thread")
    assert answer in await gp.inner_text("#thread")

    # And the nurse reads the answer in the conversation on her phone, and replies there
    await nurse.reload()
    assert answer in await nurse.inner_text("#thread")
    assert "beantwoord" in (await nurse.inner_text("main")).lower()
    await check_page(nurse, "answered ask (nurse)", found)
    await nurse.fill("#thread-body", "Dank u, de familie is thuis.")
    await nurse.click("form.thread-form button[type=submit]")
    await nurse.wait_for_url(f"{url}/asks/{reference}#thread")
    texts = await nurse.locator("#thread .thread-text").all_inner_texts()
    assert texts == [answer, "Dank u, de familie is thuis."]  # newest last
    await check_page(nurse, "conversation after the nurse's reply (nurse)", found)
    await shots.take_sizes(nurse, "ask-answered", SIZES)
    await gp.reload()
    assert "Dank u, de familie is thuis." in await gp.inner_text("#thread")
    assert found == {}, "\n".join(v for vs in found.values() for v in vs)
    shots.publish()
    await gp_ctx.close()
    await nurse_ctx.close()
