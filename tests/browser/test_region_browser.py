"""The regional map in Debian's chromium: the GP fills the patient's postcode, asks for
suggestions below the form, chooses the suggested team and goes on to the preview (Enter
still means "Controleren"); the region page shows the teams. No URL carries patient data.
Screenshots: region-suggestions.png and region.png (UPDATE_SCREENSHOTS=1 publishes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.region import directory
from securemail.region import map as regionmap
from tests.browser.test_browser import (  # noqa: F401  (fixtures)
    Shots,
    browser_team_keys,
    fill_request,
    log_in,
    site,
)
from tests.gateway import EXAMPLE, GP_PASSWORD, OTHER_TEAM, TEAM

pytestmark = pytest.mark.browser


def seed(svc: Any) -> None:
    def write(db: Any) -> None:
        for address, areas, capacity in ((TEAM, "1011-1018", "ja"), (OTHER_TEAM, "1015", "nee")):
            regionmap.save_entry(
                db,
                SYSTEM,
                directory.team_by_address(db, address).id,
                {
                    "phone": "0201234567",
                    "areas": areas,
                    "capacity": capacity,
                    "services": ["wondzorg"],
                    "reach_kantoor": True,
                    "reach_avond": True,
                },
                now=svc.now(),
            )

    svc.store.write_sync(write)


async def test_gp_gets_suggestions_chooses_a_team_and_previews(
    chromium: Any,
    site: dict[str, Any],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    url, svc = site["url"], site["svc"]
    seed(svc)
    shots = Shots(tmp_path)
    urls: list[str] = []
    ctx = await chromium.new_context(viewport={"width": 1280, "height": 860})
    gp = await ctx.new_page()
    gp.on("request", lambda r: urls.append(r.url))
    await log_in(gp, url, "huisarts", GP_PASSWORD, site["secrets"]["huisarts"])
    await gp.goto(f"{url}/requests/new")
    data = {**EXAMPLE, "receiver": {"team_address": ""}}
    await fill_request(gp, data)
    await gp.select_option("#specialism", "wondzorg")
    await gp.click("#suggest button[name=suggest]")
    await gp.wait_for_selector("ol.suggestions")
    teams = await gp.locator("ol.suggestions > li").evaluate_all(
        "els => els.map(e => e.dataset.team)"
    )
    assert teams[0] == TEAM
    assert "nieuwe cliënten: nee" in await gp.inner_text("ol.suggestions")
    await shots.take(gp, "region-suggestions", gp.locator("#suggest"))
    await gp.click(f'ol.suggestions li[data-team="{TEAM}"] button[name=choose]')
    await gp.wait_for_selector("#suggest")
    assert await gp.locator('[name="receiver.team_address"]').input_value() == TEAM
    assert await gp.locator('[name="patient.bsn"]').input_value() == EXAMPLE["patient"]["bsn"]
    # Enter in a field still submits the form's own button: the preview
    await gp.press('[name="patient.city"]', "Enter")
    await gp.wait_for_selector("pre.document")
    await gp.goto(f"{url}/regio")
    assert "1011-1018" in await gp.inner_text("main")
    await shots.take(gp, "region")
    shots.publish()
    for u in urls:
        for marker in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["postcode"], "1015"):
            assert marker.replace(" ", "+") not in u and marker not in u, u
