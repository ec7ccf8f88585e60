"""The regional map over real HTTP: suggestions in the GP's form (POST only), the team's own
entry, the practice's page, and the region page (HTML, JSON, CSV) with its access rule and
without patient data."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

from securemail.access import SYSTEM
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from tests.gateway import EXAMPLE
from tests.web_fixtures import WebApp

CENTRUM, OOST = "centrum@zorg.example", "oost@zorg.example"
PATIENT = EXAMPLE["patient"]  # postcode 1015 KK: area 1015


def seed(webapp: WebApp, *, centrum_stale: bool = True) -> None:
    """Centrum and Oost both serve area 1015; Oost has no capacity; Centrum's entry is stale."""
    now = webapp.clock.now

    def write(db):
        c = directory.team_by_address(db, CENTRUM).id
        o = directory.team_by_address(db, OOST).id
        regionmap.save_entry(
            db,
            SYSTEM,
            c,
            {
                "phone": "0201111111",
                "areas": "1011-1018",
                "capacity": "ja",
                "services": ["wondzorg"],
                "reach_kantoor": True,
                "reach_avond": True,
            },
            now=now - timedelta(days=45 if centrum_stale else 1),
        )
        regionmap.save_entry(
            db,
            SYSTEM,
            o,
            {
                "phone": "0202222222",
                "areas": "1015, 1091-1098",
                "capacity": "nee",
                "reach_kantoor": True,
                "reach_nacht": True,
                "reach_weekend": True,
            },
            now=now,
        )

    webapp.svc.store.write_sync(write)


def form_post(b, **extra: str) -> dict[str, str]:
    data = {f"patient.{k}": v for k, v in PATIENT.items()}
    data.update(extra)
    data["csrf_token"] = b.csrf
    return data


def order(html: str) -> list[str]:
    return re.findall(r'<li data-team="([^"]+)"', html)


async def test_suggestions_preferred_first_then_a_team_serving_the_area(webapp):
    seed(webapp)
    b = webapp.browser()
    await b.login("gp_b")  # practice B: preferred provider Centrum only
    r = await b.post("/requests/suggest", form_post(b, suggest="1"))
    assert r.status == 200, r.text[:500]
    assert order(r.text) == [CENTRUM, OOST]
    centrum, oost = re.split(r'<li data-team="', r.text)[1:3]
    assert "voorkeursaanbieder" in centrum and "verouderd" in centrum  # stale entry flagged
    assert "werkt in dit postcodegebied" in oost
    assert "nieuwe cliënten: nee" in oost  # no capacity: shown with that status, not hidden
    assert "Kies dit team" in centrum and "Kies dit team" not in oost  # B may not address Oost
    # The patient's data stays in the form (POST body), the page's URL carries none of it.
    assert PATIENT["postcode"] not in r.url and "1015" not in r.url
    r = await b.post("/requests/suggest", form_post(b, choose=CENTRUM))
    assert re.search(rf'<option value="{re.escape(CENTRUM)}" selected>', r.text)
    r = await b.post("/requests/suggest", form_post(b, choose=OOST))  # not selectable: ignored
    assert not re.search(rf'<option value="{re.escape(OOST)}" selected>', r.text)


async def test_the_specialism_and_a_practice_with_two_preferred_providers(webapp):
    seed(webapp)
    b = webapp.browser()
    await b.login("gp_a")  # preferred: Centrum, then Oost
    r = await b.post("/requests/suggest", form_post(b, specialism="wondzorg"))
    assert order(r.text) == [CENTRUM, OOST]
    assert "biedt wondzorg" in r.text and "geen wondzorg" in r.text
    # a postcode outside every area: preferred providers only, said so
    r = await b.post("/requests/suggest", form_post(b, **{"patient.postcode": "9999 ZZ"}))
    assert order(r.text) == [CENTRUM, OOST]
    assert "werkt niet in dit postcodegebied" in r.text


async def test_the_specialism_never_enters_the_request(webapp):
    seed(webapp)
    b = webapp.browser()
    await b.login("gp_a")
    page = await b.get("/requests/new")
    assert 'name="specialism"' in page.text and "/requests/suggest" in page.text
    r = await b.post("/requests/preview", {"csrf_token": b.csrf, "specialism": "wondzorg"})
    assert r.status == 422 and "wondzorg" not in r.text.split("<form")[0]


async def test_region_page_is_for_logged_in_people_unless_the_region_opens_it(webapp):
    seed(webapp)
    anon = webapp.browser()
    for path in ("/regio", "/regio.json", "/regio.csv"):
        r = await anon.get(path)
        assert (r.status, r.location) == (303, "/login"), path
    for user in ("gp_a", "nurse_c", "privacy_a", "admin"):
        b = webapp.browser()
        await b.login(user)
        assert (await b.get("/regio")).status == 200, user
    webapp.svc.settings = webapp.svc.settings.replace(region={"public_page": True})
    r = await anon.get("/regio")
    assert r.status == 200 and "Wijkteam" not in r.text.split("<main>")[0]
    assert "Centrum" in r.text and "0202222222" in r.text
    assert "Content-Security-Policy" in r.headers
    data = json.loads((await anon.get("/regio.json")).text)
    assert {t["address"] for t in data["teams"]} == {CENTRUM, OOST}
    assert next(a for a in data["areas"] if a["from"] <= 1015 <= a["to"])["approach"]["nacht"] == [
        OOST
    ]
    r = await anon.get("/regio.csv")
    assert r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == list(regionview.CSV_HEADER)
    assert any(row[3] == "Centrum" and row[11] == "verouderd" for row in rows[1:])


async def test_region_page_lists_teams_and_passing_on_and_no_patient_data(webapp):
    seed(webapp)
    webapp.svc.settings = webapp.svc.settings.replace(
        gateway={"passing_on_address": OOST}, region={"public_page": True}
    )
    await webapp.send("gp_a", CENTRUM)  # a request for the example patient, in area 1015
    b = webapp.browser()
    await b.login("nurse_c")
    pages = [(await b.get(p)).text for p in ("/regio", "/regio.json", "/regio.csv")]
    pages += [(await webapp.browser().get(p)).text for p in ("/regio", "/regio.json")]
    assert "Centrum" in pages[0] and 'id="passing-on"' in pages[0]
    assert json.loads(pages[1])["passing_on"]["address"] == OOST
    compact = PATIENT["postcode"].replace(" ", "")
    for text in pages:
        for secret in (
            PATIENT["bsn"],
            PATIENT["name"],
            PATIENT["postcode"],
            compact,
            PATIENT["address"],
            PATIENT["birth_date"],
            "de Vries",
        ):
            assert secret not in text


async def test_a_nurse_keeps_her_teams_entry_with_dutch_errors(webapp):
    b = webapp.browser()
    await b.login("nurse_c")
    r = await b.get("/regio/team")
    cid = webapp.svc.store.read_sync(lambda db: directory.team_by_address(db, CENTRUM).id)
    oid = webapp.svc.store.read_sync(lambda db: directory.team_by_address(db, OOST).id)
    assert r.location == f"/regio/team/{cid}"
    r = await b.post(f"/regio/team/{cid}", {"phone": "12", "areas": "0999", "capacity": "ja"})
    assert r.status == 422
    assert 'data-field="areas"' in r.text and "valt buiten 1000–9999" in r.text
    assert 'data-field="phone"' in r.text
    assert webapp.svc.store.read_sync(lambda db: db["team_map"].count) == 0
    r = await b.post(
        f"/regio/team/{cid}",
        {
            "phone": "020 111 1111",
            "areas": "1011-1018",
            "capacity": "beperkt",
            "services": "longzorg",
            "reach_kantoor": "on",
            "level5": "on",
        },
    )
    assert (r.status, r.location) == (303, f"/regio/team/{cid}")
    page = await b.get(f"/regio/team/{cid}")
    assert "Bevestig dat dit klopt" in page.text and 'value="1011-1018"' in page.text
    webapp.clock.advance(days=31)
    b = webapp.browser()  # a month later: a new session
    await b.login("nurse_c")
    assert "verouderd" in (await b.get(f"/regio/team/{cid}")).text
    r = await b.post(f"/regio/team/{cid}", {"confirm": "1"})
    assert r.status == 303
    assert "verouderd" not in (await b.get(f"/regio/team/{cid}")).text
    assert [row["user_name"] for row in webapp.audit("team.map_confirm")] == ["nurse_c"]
    # another team's entry: no such page for her, refused and audited
    assert (await b.get(f"/regio/team/{oid}")).status == 404
    r = await b.post(
        f"/regio/team/{oid}", {"phone": "0201111111", "areas": "1011", "capacity": "ja"}
    )
    assert r.status == 404
    assert webapp.audit("access.denied")[-1]["check_authz"] == "deny:region.team_edit"


async def test_practice_entry_preferred_providers_and_contact_nurse(webapp):
    gp = webapp.browser()
    await gp.login("gp_b")
    r = await gp.post("/regio/praktijk", {"role": "poh", "name": "", "phone": "abc"})
    assert r.status == 422 and 'data-field="name"' in r.text and 'data-field="phone"' in r.text
    r = await gp.post(
        "/regio/praktijk", {"role": "poh", "name": "P. Ondersteuner", "phone": "0203333333"}
    )
    assert r.status == 303
    r = await gp.post("/regio/praktijk", {"preferred": "1", "preferred_1": ""})
    assert r.status == 422 and "één tot drie" in r.text
    r = await gp.post(
        "/regio/praktijk", {"preferred": "1", "preferred_1": OOST, "preferred_2": CENTRUM}
    )
    assert r.status == 303
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    cid = webapp.svc.store.read_sync(lambda db: directory.team_by_address(db, CENTRUM).id)
    page = await nurse.get(f"/regio/team/{cid}")
    assert "P. Ondersteuner" in page.text and "0203333333" in page.text
    org_b = webapp.svc.store.read_sync(lambda db: directory.org_by_code(db, "01000002").id)
    r = await nurse.post(
        f"/regio/team/{cid}/contact",
        {"practice": str(org_b), "name": "S. Contact", "phone": "0612345678"},
    )
    assert r.status == 303
    page = await gp.get("/regio/praktijk")
    assert "S. Contact" in page.text
    assert page.text.index(OOST) < page.text.index(CENTRUM)  # in the practice's order


async def test_new_form_dates_the_request_on_the_amsterdam_clock_not_the_servers(webapp):
    # Given the gateway's clock (UTC, as on a server) at 23:30 on a winter evening
    webapp.clock.now = datetime(webapp.clock.now.year + 1, 1, 15, 22, 30, tzinfo=UTC)
    b = webapp.browser()
    await b.login("gp_a")
    page = await b.get("/requests/new")
    # Then "Datum verzoek" is prefilled as the GP's wall clock shows it: 23:30, not 22:30
    assert page.field("issued_at") == f"{webapp.clock.now.year}-01-15T23:30"
