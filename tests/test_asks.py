"""Asks over real HTTP: a nurse asks a practice for a request; the GP sees it in a work list
with its deadline, opens the form prefilled from the ask (server-side, by POST), sends, and the
ask is fulfilled; an unanswered ask is escalated once to the asking team. No patient data in
URLs, lists or notices."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from securemail import config
from securemail.exchange import asks, escalation
from securemail.message import notify
from securemail.web import create_app
from tests.clock import AMS, working_wednesday
from tests.e2e.webflow import csrf_of, form_fields, login
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, example
from tests.loop_fixtures import Loop, audit_codes, notices

ASK = {
    "team_address": TEAM,
    "practice_code": "01234567",
    "patient.bsn": EXAMPLE["patient"]["bsn"],
    "patient.name": EXAMPLE["patient"]["name"],
    "patient.birth_date": EXAMPLE["patient"]["birth_date"],
    "procedure_code": "INJ_SC",
    "reason": "Insuline, cliënt kan de pen niet meer zelf bedienen",
    "urgency": "spoed",
}


def browser(tracing: aiohttp.TraceConfig | None = None) -> aiohttp.ClientSession:
    """A cookie-keeping HTTP client (cookies from 127.0.0.1 need the unsafe jar)."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), trace_configs=[tracing] if tracing else None
    )


@pytest.fixture
async def site(loop: Loop, aiohttp_server: Any) -> AsyncIterator[str]:
    app = create_app(loop.gw.svc.settings, services=loop.gw.svc, run_worker=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_nurse_ask_becomes_prefilled_form_for_gp_and_its_deadline_is_tracked(
    loop: Loop, site: str
) -> None:
    svc = loop.gw.svc
    urls: list[str] = []

    async def trace(session: Any, ctx: Any, params: Any) -> None:
        urls.append(str(params.url))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(trace)
    async with (
        browser(tracing) as nurse,
        browser(tracing) as gp,
    ):
        # Given a nurse who asks the practice, urgently, on Wednesday 10:00
        due_expected = (loop.clock.now + timedelta(hours=2)).astimezone(AMS)
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(f"{site}/asks/new") as r:
            token = csrf_of(await r.text())
        async with nurse.post(f"{site}/asks/new", data={**ASK, "csrf_token": token}) as r:
            assert r.status == 200, await r.text()
            reference = str(r.url).rsplit("/", 1)[-1]
        assert asks.REFERENCE_RE.fullmatch(reference)
        # The asking team is a receiver for the request that answers this ask, not for others
        org, team = svc.store.read_sync(
            lambda db: db.execute(
                "SELECT practice_org_id, team_id FROM asks WHERE reference = ?", [reference]
            ).fetchone()
        )
        assert svc.store.read_sync(lambda db: asks.asking_teams(db, org)) == []
        assert [
            t.id for t in svc.store.read_sync(lambda db: asks.asking_teams(db, org, reference))
        ] == [team]
        # Then the deadline is 2 hours on, and the practice gets a notice without patient data
        due = svc.store.read_sync(
            lambda db: db.execute("SELECT due_at FROM asks WHERE reference = ?", [reference])
        ).fetchone()[0]
        assert due == due_expected.isoformat(timespec="minutes")
        [raw] = notices(svc, "ask")
        notify.require_notice_mime(raw, svc.settings)
        assert f"/asks/{reference}".encode() in raw
        assert EXAMPLE["patient"]["bsn"].encode() not in raw
        # When the GP opens the work list
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(f"{site}/asks") as r:
            listing = await r.text()
        assert reference in listing and due_expected.strftime("%d-%m-%Y %H:%M") in listing
        assert (
            EXAMPLE["patient"]["bsn"] not in listing and EXAMPLE["patient"]["name"] not in listing
        )
        # and "Verzoek opstellen" on the ask: the form comes prefilled from the ask
        async with gp.get(f"{site}/asks/{reference}") as r:
            page = await r.text()
        assert EXAMPLE["patient"]["name"] in html.unescape(page)
        async with gp.post(
            f"{site}/asks/{reference}/draft", data={"csrf_token": csrf_of(page)}
        ) as r:
            form = html.unescape(await r.text())
        assert r.status == 200
        assert f'value="{EXAMPLE["patient"]["bsn"]}"' in form
        assert f'value="{EXAMPLE["patient"]["name"]}"' in form
        assert '<option value="INJ_SC" selected>' in form
        assert f'name="ask" value="{reference}"' in form
        # When the GP completes, previews, signs and sends it
        async with gp.post(
            f"{site}/requests/preview",
            data={**form_fields(example()), "csrf_token": csrf_of(form), "ask": reference},
        ) as r:
            preview = await r.text()
            assert r.status == 200, preview
        payload = re.search(r'name="payload" value="([^"]*)"', preview)
        assert payload and f'name="ask" value="{reference}"' in preview
        async with gp.post(
            f"{site}/requests/send",
            data={
                "csrf_token": csrf_of(preview),
                "payload": html.unescape(payload.group(1)),
                "passphrase": GP_PASSPHRASE,
                "sign": "1",
                "ask": reference,
            },
        ) as r:
            assert r.status == 200, await r.text()
            request_ref = str(r.url).rsplit("/", 1)[-1]
        assert request_ref.startswith("UVZ-")
    # Then the ask is fulfilled by that request, audited, and no longer escalates
    row = svc.store.read_sync(lambda db: next(db["asks"].rows_where("reference = ?", [reference])))
    assert (row["state"], row["fulfilled_by_reference"]) == ("fulfilled", request_ref)
    assert audit_codes(svc, reference)[:2] == ["ask.create", "ask.view"]
    assert "ask.fulfil" in audit_codes(svc, reference)
    loop.clock.advance(hours=3)
    assert (await escalation.check(svc)).asks == ()
    # and no URL ever carried patient data
    for u in urls:
        assert EXAMPLE["patient"]["bsn"] not in u and "Vries" not in u


async def test_unanswered_ask_is_overdue_in_both_lists_and_escalated_once_to_the_team(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    result = await asks.create(svc, loop.nurse_a, {**ASK, "urgency": "regulier"})
    friday = (loop.clock.now + timedelta(days=2)).astimezone(AMS)
    assert result.due_at == friday.isoformat(timespec="minutes")  # 2 working days: Wed -> Fri
    loop.clock.advance(days=2, minutes=-1)
    assert (await escalation.check(svc)).asks == ()
    loop.clock.advance(minutes=2)
    assert (await escalation.check(svc)).asks == (result.reference,)
    assert (await escalation.check(svc)).asks == ()
    [raw] = notices(svc, "ask_overdue")
    assert f"To: {TEAM}".encode() in raw
    assert EXAMPLE["patient"]["bsn"].encode() not in raw
    for actor in (loop.gw.gp, loop.nurse_a):
        rows = svc.store.read_sync(lambda db, a=actor: asks.list_asks(db, a))
        assert [(r["reference"], r["overdue"]) for r in rows] == [(result.reference, True)]
    assert audit_codes(svc, result.reference).count("ask.overdue") == 1
    # Another team's nurse sees nothing of it
    assert svc.store.read_sync(lambda db: asks.list_asks(db, loop.nurse_b)) == []


async def test_ask_form_errors_show_next_to_fields_and_keep_values(loop: Loop, site: str) -> None:
    async with browser() as nurse:
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(f"{site}/asks/new") as r:
            token = csrf_of(await r.text())
        bad = {**ASK, "patient.bsn": "123456789", "reason": "", "csrf_token": token}
        async with nurse.post(f"{site}/asks/new", data=bad) as r:
            page = await r.text()
        assert r.status == 422
        assert re.search(r'data-field="patient.bsn"[^>]*>[^<]*11-proef', page)
        assert 'data-field="reason"' in page
        assert 'value="123456789"' in page
    assert loop.gw.svc.store.read_sync(lambda db: db["asks"].count) == 0


@pytest.mark.parametrize("kind", ["answered", "passed_on", "ask", "ask_overdue", "overdue"])
def test_new_notice_kinds_carry_only_the_reference(tmp_path: Path, kind: str) -> None:
    settings = config.Settings(home=tmp_path).replace(
        gateway={"base_url": "https://gateway.example", "from_address": "gw@gateway.example"}
    )
    reference = "ASK-2026-000007" if kind.startswith("ask") else "UVZ-2026-000007"
    notice = notify.make_notice(kind, reference, "praktijk@praktijk.example", settings)
    notify.require_notice_mime(notice.mime, settings)
    page = "asks" if kind.startswith("ask") else "requests"
    assert f"https://gateway.example/{page}/{reference}".encode() in notice.mime


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient.name", "Jan\x00 Jansen"),
        ("patient.name", "Jan \u202eneznaJ"),
        ("patient.name", "Jan\nJansen"),
        ("reason", "Insuline\u2066 stop\u2069"),
        ("reason", "x" * 2001),
    ],
)
def test_an_ask_follows_the_forms_text_policy(field: str, value: str) -> None:
    from securemail.config import PROJECT_ROOT
    from securemail.form.definition import load_definition
    from securemail.form.request import FormInvalidError

    definition = load_definition(PROJECT_ROOT / "forms")
    with pytest.raises(FormInvalidError) as caught:
        asks.parse_ask(definition, {**ASK, field: value}, today=working_wednesday().date())
    assert [e.field for e in caught.value.errors] == [field]
    clean = asks.parse_ask(
        definition, {**ASK, "patient.name": "Ame\u0301lie"}, today=working_wednesday().date()
    )
    assert clean["patient.name"] == "Amélie"  # NFC
