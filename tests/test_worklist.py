"""Work lists (securemail/exchange/worklist.py; the page: web/worklist.py): the patient's
name, team or practice, urgency, state and deadline; what is due first on top; a search by
name, reference or BSN that travels in a POST body only; pages; every shown row audited; a
nurse sees only her own teams' requests.

Real parts: the web app over HTTP (webapp fixture), real sends (gpg sign and seal), sqlite.
"""

from __future__ import annotations

from typing import Any

from securemail.accounts import auth
from securemail.exchange import send as exchange
from securemail.exchange import worklist
from tests.gateway import EXAMPLE, GP_PASSPHRASE, example
from tests.web_fixtures import WebApp

CENTRUM, OOST = "centrum@zorg.example", "oost@zorg.example"
BSN = EXAMPLE["patient"]["bsn"]


async def _send(webapp: WebApp, to: str, *, name: str, urgency: str = "regulier") -> str:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    data = example()
    data["patient"]["name"] = name
    data["urgency"] = urgency
    result = await exchange.send(webapp.svc, gp, data, GP_PASSPHRASE, to=to)
    return result.reference


def _actor(webapp: WebApp, username: str) -> Any:
    return webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, username), "test")
    )


def test_a_search_by_reference_knows_every_kinds_reference() -> None:
    # a care request's AWV- reference is searched as a reference, not as a name
    for ref in ("UVZ-2026-000123", "AWV-2026-000123", "awv-2026-000123"):
        assert worklist.classify(ref) == "reference"
    assert worklist.classify("AWV-2026") == "name"


async def test_lists_show_names_due_first_search_in_the_body_and_audit_each_row(
    webapp: WebApp,
) -> None:
    first = await _send(webapp, CENTRUM, name="J. de Vries-Test")
    urgent = await _send(webapp, CENTRUM, name="K. Jansen", urgency="spoed")
    elsewhere = await _send(webapp, OOST, name="L. Bakker")
    # The deadlines the delivery worker sets when the relay takes a request (no relay here):
    # the urgent one is due first although it was sent later.
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE requests SET answer_due = CASE reference WHEN ? THEN ? WHEN ? THEN ? "
            "ELSE answer_due END",
            [first, "2026-10-25T02:15:00+01:00", urgent, "2026-10-25T02:30:00+02:00"],
        )
    )

    gp = webapp.browser()
    await gp.login("gp_a")
    page = await gp.get("/requests")
    assert page.status == 200
    text = page.text
    # names, teams, urgency marked; the BSN never shown
    for name in ("J. de Vries-Test", "K. Jansen", "L. Bakker"):
        assert name in text
    assert '<span class="urgent">spoed</span>' in text
    assert BSN not in text
    # due first: the urgent one (02:30 CEST = 00:30 UTC) before 02:15 CET (01:15 UTC), the
    # night the clocks go back (as text they sort the other way); no deadline yet: after both
    assert text.index(urgent) < text.index(first) < text.index(elsewhere)
    # each shown row audited with its patient
    rows = [r for r in webapp.audit("request.list") if r["user_name"] == "gp_a"]
    assert sorted(r["object_id"] for r in rows) == sorted([first, urgent, elsewhere])
    assert {r["patient_id"] for r in rows} == {BSN}

    # A search by name, by reference and by BSN, each in the POST body; the URL stays /requests
    for query, expect, absent in (
        ("jansen", {urgent}, {first, elsewhere}),
        (first.lower(), {first}, {urgent, elsewhere}),
        (BSN, {first, urgent, elsewhere}, set()),
    ):
        found = await gp.post("/requests", {"q": query})
        assert found.status == 200 and found.url.endswith("/requests"), found.url
        for ref in expect:
            assert f'href="/requests/{ref}"' in found.text
        for ref in absent:
            assert f'href="/requests/{ref}"' not in found.text
    # the search text reaches no audit row
    assert not any(
        "jansen" in str(v).lower() for r in webapp.audit("request.list") for v in r.values()
    )
    # a query in the URL is no search: the whole list comes back
    via_url = await gp.get("/requests?q=jansen")
    assert first in via_url.text and elsewhere in via_url.text

    # The nurse of centrum sees the practice and her team's requests only, never oost's
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    mine = await nurse.get("/requests")
    assert first in mine.text and urgent in mine.text
    assert elsewhere not in mine.text and "L. Bakker" not in mine.text
    sought = await nurse.post("/requests", {"q": "Bakker"})
    assert elsewhere not in sought.text and "Geen verzoeken gevonden" in sought.text


async def test_pages_are_bounded_and_clamped(webapp: WebApp) -> None:
    refs = [await _send(webapp, CENTRUM, name=f"Patiënt {i}") for i in range(3)]
    gp = _actor(webapp, "gp_a")

    def page(n: int, query: str = "") -> worklist.WorkList:
        return webapp.svc.store.write_sync(
            lambda db: worklist.work_list(db, gp, query=query, page=n, page_size=2)
        )

    one, two, far = page(1), page(2), page(10**6)
    assert (one.pages, one.total, len(one.rows), len(two.rows)) == (2, 3, 2, 1)
    assert far.page == 2 and [r["reference"] for r in far.rows] == [
        r["reference"] for r in two.rows
    ]
    assert {r["reference"] for r in one.rows + two.rows} == set(refs)
    # a name search pages too, and says how far back it looked
    named = page(1, "patiënt")
    assert (named.total, named.pages, named.scanned) == (3, 2, 3)
    # an over-long query is cut, not refused or scanned in full
    assert len(page(1, "x" * 10_000).query) == worklist.MAX_QUERY


async def test_a_gp_of_another_practice_finds_nothing(webapp: WebApp) -> None:
    ref = await _send(webapp, CENTRUM, name="J. de Vries-Test")
    other = webapp.browser()
    await other.login("gp_b")
    for r in (await other.get("/requests"), await other.post("/requests", {"q": ref})):
        assert f'href="/requests/{ref}"' not in r.text and "J. de Vries-Test" not in r.text
    assert not [a for a in webapp.audit("request.list") if a["user_name"] == "gp_b"]


async def test_a_name_search_finds_names_the_document_text_escapes(webapp: WebApp) -> None:
    """A name search reads the document text before parsing it; a quote in a name is written
    escaped in JSON, and still found."""
    quoted = await _send(webapp, CENTRUM, name='M. "Mies" Bakker')
    plain = await _send(webapp, CENTRUM, name="N. Smit")
    gp = _actor(webapp, "gp_a")

    def found(query: str) -> set[str]:
        wl = webapp.svc.store.write_sync(lambda db: worklist.work_list(db, gp, query=query))
        return {r["reference"] for r in wl.rows}

    assert found('"mies"') == {quoted}
    assert found("bakker") == {quoted}
    assert found("smit") == {plain}
    assert found("nobody-of-that-name") == set()


def test_a_page_is_sorted_on_the_worklist_index_alone(webapp: WebApp) -> None:
    """The order of a practice's or a team's list comes from the covering worklist index
    (migration 0008): no row, with its sealed document, is read to choose a page."""
    plans = {}
    for where, index in (
        ("r.practice_org_id = ?", "requests_practice_worklist"),
        ("r.team_id IN (?)", "requests_team_worklist"),
    ):
        sql = "EXPLAIN QUERY PLAN " + worklist.page_ids_sql(where)
        plans[index] = webapp.svc.store.read_sync(
            lambda db, s=sql: [str(r[3]) for r in db.execute(s, [1, 25, 0])]
        )
        assert any(f"USING COVERING INDEX {index}" in step for step in plans[index]), plans
