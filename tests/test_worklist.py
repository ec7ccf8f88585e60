"""Work lists (securemail/exchange/worklist.py; the page: web/worklist.py): the patient's
name, team or practice, urgency, state and deadline; what is due first on top; a search by
name, reference or BSN that travels in a POST body only; pages; every shown row audited; a
nurse sees only her own teams' requests.

Real parts: the web app over HTTP (webapp fixture), real sends (gpg sign and seal), sqlite.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from securemail import contentbox
from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.exchange import name_index, worklist
from securemail.exchange import send as exchange
from securemail.ops import retention
from securemail.secretbox import SecretBox
from tests.gateway import EXAMPLE, GP_PASSPHRASE, example
from tests.web_fixtures import WebApp

CENTRUM, OOST = "centrum@zorg.example", "oost@zorg.example"
BSN = EXAMPLE["patient"]["bsn"]
_ID_OF = "(SELECT id FROM requests WHERE reference = ?)"


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
    # a name search pages too
    named = page(1, "patiënt")
    assert (named.total, named.pages, len(named.rows)) == (3, 2, 2)
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


def test_a_page_is_chosen_on_the_worklist_indexes_without_sorting_the_practice(
    webapp: WebApp,
) -> None:
    """A page of the whole list: the open requests sorted apart on the worklist index (0008),
    the others read in order off the partial index of migration 0009, no sort of the
    practice's or team's entries; a search by reference or BSN on the 0008 index."""

    def plan(sql: str, params: list[Any]) -> list[str]:
        return webapp.svc.store.read_sync(
            lambda db: [str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
        )

    for column, index in (("practice_org_id", "practice"), ("team_id", "team")):
        closed = plan(worklist.closed_walk_sql(column), [1, 25, 0])
        assert any(f"USING COVERING INDEX requests_{index}_closed" in s for s in closed), closed
        assert not any("TEMP B-TREE" in step for step in closed), closed
        opened = plan(worklist.open_walk_sql(f"{column} IN (?)"), [1, 25, 0])
        assert any(
            f"COVERING INDEX requests_{index}_worklist (practice_org_id=? AND state=?)".replace(
                "practice_org_id", column
            )
            in s
            for s in opened
        ), opened
        searched = plan(worklist.page_ids_sql(f"r.{column} IN (?)"), [1, 25, 0])
        assert any(f"COVERING INDEX requests_{index}_worklist" in s for s in searched), searched


async def test_a_page_straddling_the_open_and_the_closed_is_in_order(webapp: WebApp) -> None:
    """Pages of 2 over 3 open requests (deadlines out of send order, one without a deadline)
    and 3 closed (one without a deadline: after the others): page 2 holds the last open and
    the first closed request, and all pages together are the one order of the whole list;
    the nurse's team list (team_id IN ...) the same."""
    refs = [await _send(webapp, CENTRUM, name=f"Patiënt {i}") for i in range(6)]
    due = {
        refs[0]: ("open", "2026-10-25T02:30:00+01:00"),  # 01:30 UTC: second
        refs[1]: ("open", "2026-10-25T02:15:00+02:00"),  # 00:15 UTC: first (clocks go back)
        refs[2]: ("open", ""),  # no deadline yet: after the open ones with one
        refs[3]: ("answered", "2026-10-20T10:00:00+02:00"),
        refs[4]: ("withdrawn", ""),  # closed without a deadline: last
        refs[5]: ("answered", "2026-10-21T10:00:00+02:00"),
    }
    for ref, (state, answer_due) in due.items():
        webapp.svc.store.write_sync(
            lambda db, r=ref, s=state, d=answer_due: db.execute(
                "UPDATE requests SET state = ?, answer_due = ? WHERE reference = ?", [s, d, r]
            )
        )
    expected = [refs[1], refs[0], refs[2], refs[5], refs[3], refs[4]]
    for username in ("gp_a", "nurse_c"):
        actor = _actor(webapp, username)
        pages = [
            webapp.svc.store.write_sync(
                lambda db, n=n, a=actor: worklist.work_list(db, a, page=n, page_size=2)
            )
            for n in (1, 2, 3)
        ]
        assert [p.total for p in pages] == [6, 6, 6]
        assert [r["reference"] for p in pages for r in p.rows] == expected, username
        assert [r["reference"] for r in pages[1].rows] == [refs[2], refs[5]]
        # the old single sort over every entry gives the same order
        where, params = worklist._scope(actor).where()
        sql = worklist.page_ids_sql(where)
        ids = webapp.svc.store.read_sync(
            lambda db, s=sql, p=params: [r[0] for r in db.execute(s, [*p, 9, 0])]
        )
        by_id = webapp.svc.store.read_sync(
            lambda db: {r[0]: r[1] for r in db.execute("SELECT id, reference FROM requests")}
        )
        assert [by_id[i] for i in ids] == expected


def _copies(webapp: WebApp, of: str, names: list[str], *, org_id: int | None = None) -> list[str]:
    """Rows like request ``of`` (its practice, or org_id), one per name, each document sealed
    under its own reference with that name, tokens written as send writes them: many
    requests without many gpg runs."""

    def tx(db: sqlite_utils.Database) -> list[str]:
        row = next(db["requests"].rows_where("reference = ?", [of]))
        doc = worklist.json.loads(
            contentbox.open_value(db, "requests", "document", of, row["document"])
        )
        refs = []
        for i, name in enumerate(names):
            ref = f"UVZ-1999-{i:06d}" if org_id is None else f"UVZ-1998-{i:06d}"
            text = worklist.json.dumps({**doc, "patient": {**doc["patient"], "name": name}})
            db.table("requests").insert(
                {
                    **row,
                    "id": None,
                    "reference": ref,
                    "message_id": f"<{ref}@test>",
                    "practice_org_id": org_id or row["practice_org_id"],
                    "document": contentbox.seal(db, "requests", "document", ref, text),
                }
            )
            name_index.store(db, ref, name)
            refs.append(ref)
        return refs

    return webapp.svc.store.write_sync(tx)


def _found(webapp: WebApp, username: str, query: str) -> set[str]:
    actor = _actor(webapp, username)
    wl = webapp.svc.store.write_sync(lambda db: worklist.work_list(db, actor, query=query))
    return {r["reference"] for r in wl.rows}


async def test_a_name_is_found_in_all_requests_on_keyed_tokens(webapp: WebApp) -> None:
    """Over HTTP: a name older than the newest 500 requests is found (the candidates come
    from the keyed name tokens, not from opening the newest documents); its words in any
    order, capitals and accents ignored; a word of another patient's name makes no hit."""
    old = await _send(webapp, CENTRUM, name="J. Müller-Oldenbarnevelt")
    other = await _send(webapp, CENTRUM, name="K. Bakker")
    _copies(webapp, other, [f"Patiënt Nieuwer{i}" for i in range(505)])
    gp = webapp.browser()
    await gp.login("gp_a")
    for query in ("oldenbarnevelt", "muller oldenbarnevelt", "OLDENBARNEVELT  Müller", "müller"):
        found = await gp.post("/requests", {"q": query})
        assert found.status == 200
        assert f'href="/requests/{old}"' in found.text, query
        assert "J. Müller-Oldenbarnevelt" in found.text
        assert f'href="/requests/{other}"' not in found.text
    for query in ("muller bakker", "oldenbarneveltx", "jans"):
        found = await gp.post("/requests", {"q": query})
        assert f'href="/requests/{old}"' not in found.text, query
        assert f'href="/requests/{other}"' not in found.text, query
        assert "Geen verzoeken gevonden" in found.text
    assert _found(webapp, "gp_a", "bakker") == {other}


async def test_a_name_search_stays_in_the_practice(webapp: WebApp) -> None:
    """Another practice's request with the same name is not among the GP's hits, nor hers
    among the other practice's."""
    mine = await _send(webapp, CENTRUM, name="P. Zandvoort")
    other_org = _actor(webapp, "gp_b").org_id
    assert other_org != _actor(webapp, "gp_a").org_id
    (theirs,) = _copies(webapp, mine, ["P. Zandvoort"], org_id=other_org)
    assert _found(webapp, "gp_a", "zandvoort") == {mine}
    assert _found(webapp, "gp_b", "zandvoort") == {theirs}


async def test_name_tokens_hold_no_name_and_depend_on_the_home_key(webapp: WebApp) -> None:
    """The database file holds no name word in plain text; the tokens are keyed: another
    home's content key gives other tokens, and that key is not in the file either."""
    ref = await _send(webapp, CENTRUM, name="Q. Wolkenkrabber")
    stored = webapp.svc.store.read_sync(
        lambda db: {
            bytes(r[0])
            for r in db.execute(
                f"SELECT token FROM request_name_tokens WHERE request_id = {_ID_OF}",  # noqa: S608
                [ref],
            )
        }
    )
    assert len(stored) == 1 and all(len(t) == name_index.TOKEN_BYTES for t in stored)
    webapp.svc.store.checkpoint()
    raw = webapp.settings.db_path.read_bytes()
    for text in ("Wolkenkrabber", "wolkenkrabber", "WOLKENKRABBER"):
        assert text.encode() not in raw and text.encode("utf-16-le") not in raw
    assert webapp.settings.content_key_path.read_bytes() not in raw
    elsewhere = set(name_index.tokens_with(SecretBox(os.urandom(32)), "Q. Wolkenkrabber"))
    assert elsewhere and not elsewhere & stored


async def test_the_content_purge_deletes_the_name_tokens(webapp: WebApp) -> None:
    ref = await _send(webapp, CENTRUM, name="R. Vergeetmenietje")
    assert _found(webapp, "gp_a", "vergeetmenietje") == {ref}

    def purge(db: sqlite_utils.Database) -> int:
        (request_id,) = db.execute("SELECT id FROM requests WHERE reference = ?", [ref]).fetchone()
        now = datetime.now(UTC)
        plan = retention.Plan(now, now, now, requests=[(request_id, now.isoformat())])
        retention.apply(db, webapp.settings, plan, SYSTEM)
        return int(
            db.execute(
                f"SELECT COUNT(*) FROM request_name_tokens WHERE request_id = {_ID_OF}",  # noqa: S608
                [ref],
            ).fetchone()[0]
        )

    assert webapp.svc.store.write_sync(purge) == 0
    assert _found(webapp, "gp_a", "vergeetmenietje") == set()


async def test_a_request_stored_before_the_tokens_is_found_after_the_backfill(
    webapp: WebApp,
) -> None:
    """A home from before migration 0010: its requests have no tokens; the migration's pass
    (exchange.send.backfill_name_tokens) gives them theirs, and a second pass finds none."""
    ref = await _send(webapp, CENTRUM, name="S. Voorheen")
    webapp.svc.store.write_sync(lambda db: db.execute("DELETE FROM request_name_tokens"))
    assert _found(webapp, "gp_a", "voorheen") == set()
    assert webapp.svc.store.write_sync(exchange.backfill_name_tokens) == 1
    assert _found(webapp, "gp_a", "voorheen") == {ref}
    assert webapp.svc.store.write_sync(exchange.backfill_name_tokens) == 0


async def test_a_passed_on_requests_name_is_found_by_its_new_team_only(webapp: WebApp) -> None:
    """A name token carries the request's team (the search reads its own team's matches on
    the index); when the request moves to another team, the token moves with it (trigger of
    migration 0010), so the new team's nurse finds it and the old team's no longer does."""
    ref = await _send(webapp, CENTRUM, name="T. Verhuisd")
    assert _found(webapp, "nurse_c", "verhuisd") == {ref}
    assert _found(webapp, "nurse_o", "verhuisd") == set()
    oost = _actor(webapp, "nurse_o").team_ids
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE requests SET team_id = ? WHERE reference = ?", [min(oost), ref]
        )
    )
    assert _found(webapp, "nurse_o", "verhuisd") == {ref}
    assert _found(webapp, "nurse_c", "verhuisd") == set()


async def test_a_nurse_of_two_teams_gets_one_list_in_order(webapp: WebApp) -> None:
    """A nurse in two teams: the closed walk runs per team and is merged lazily; pages of 2
    over both teams' requests give the same order as one sort over every entry."""
    refs = [
        await _send(webapp, team, name=f"Patiënt {i}") for i, team in enumerate([CENTRUM, OOST] * 4)
    ]
    states = ["open", "answered", "answered", "withdrawn", "answered", "open", "answered", ""]
    for ref, state in zip(refs, states, strict=True):
        webapp.svc.store.write_sync(
            lambda db, r=ref, s=state: db.execute(
                "UPDATE requests SET state = ?, answer_due = ? WHERE reference = ?",
                [s or "answered", "" if s in ("withdrawn", "") else "2026-10-20T10:00:00+02:00", r],
            )
        )
    oost = min(_actor(webapp, "nurse_o").team_ids)
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "INSERT INTO user_teams (user_id, team_id) VALUES (?, ?)",
            [auth.user_by_name(db, "nurse_c").id, oost],
        )
    )
    nurse = _actor(webapp, "nurse_c")
    assert len(nurse.team_ids) == 2
    pages = [
        webapp.svc.store.write_sync(
            lambda db, n=n: worklist.work_list(db, nurse, page=n, page_size=2)
        )
        for n in range(1, 5)
    ]
    assert {p.total for p in pages} == {8} and {p.pages for p in pages} == {4}
    got = [r["reference"] for p in pages for r in p.rows]
    where, params = worklist._scope(nurse).where()
    sql = worklist.page_ids_sql(where)
    ids = webapp.svc.store.read_sync(lambda db: [r[0] for r in db.execute(sql, [*params, 99, 0])])
    by_id = webapp.svc.store.read_sync(
        lambda db: {r[0]: r[1] for r in db.execute("SELECT id, reference FROM requests")}
    )
    assert sorted(got) == sorted(refs)
    assert got == [by_id[i] for i in ids]
