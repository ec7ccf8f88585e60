"""A nurse asks the practice for a home visit or a consult (not only for an execution
request): the ask has the covenant's deadline, the practice is notified with the
reference only, the GP answers on the ask, the team is notified, all audited; another
practice cannot answer, and an execution-request ask is answered by a request only."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest

from securemail.access import SYSTEM
from securemail.errors import ConflictError, NotFoundError
from securemail.exchange import ask_answer, asks
from securemail.exchange import send as exchange
from securemail.form.request import FormInvalidError
from securemail.region import directory
from tests.clock import AMS
from tests.e2e.webflow import csrf_of, login
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, example
from tests.loop_fixtures import Loop, audit_codes, notices, other_practice_gp

VISIT = {
    "team_address": TEAM,
    "practice_code": "01234567",
    "ask_kind": "huisbezoek",
    "patient.bsn": EXAMPLE["patient"]["bsn"],
    "patient.name": EXAMPLE["patient"]["name"],
    "reason": "Toenemende benauwdheid sinds gisteren, saturatie 89%",
    "urgency": "spoed",
    "procedure_code": "",  # a visit needs no procedure
}
ANSWER = "Ik kom vandaag om 15.00 uur langs. Dr. A. Huisarts"


async def test_nurse_asks_a_home_visit_and_the_gp_answers_on_the_ask(loop: Loop) -> None:
    svc = loop.gw.svc
    # Given a nurse who urgently asks for a home visit
    made = await asks.create(svc, loop.nurse_a, VISIT)
    # Then it has the covenant's urgent deadline, 2 hours
    assert made.due_at == (loop.clock.now + timedelta(hours=2)).astimezone(AMS).isoformat(
        timespec="minutes"
    )
    # And the practice is told, with the reference only, that it is a consult or visit ask
    [notice] = notices(svc, "ask_contact")
    assert made.reference.encode() in notice
    assert EXAMPLE["patient"]["name"].encode() not in notice
    assert b"consult of huisbezoek" in notice
    # When the GP answers on the ask
    await ask_answer.answer_ask(svc, loop.gw.gp, made.reference, ANSWER)
    # Then the team is told (reference only) and sees the answer on the ask
    [told] = notices(svc, "ask_answered")
    assert made.reference.encode() in told and ANSWER.encode() not in told
    seen = svc.store.write_sync(lambda db: asks.get_ask(db, loop.nurse_a, made.reference))
    assert (seen["ask_kind"], seen["gp_answer"], seen["state"]) == (
        "huisbezoek", ANSWER, "fulfilled",
    )  # fmt: skip
    # And the answer is sealed at rest, and audited
    stored = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT gp_answer FROM asks WHERE reference = ?", [made.reference]
        ).fetchone()[0]
    )
    assert stored.startswith("v1:") and "15.00" not in stored
    assert "ask.answer" in audit_codes(svc, made.reference)
    # A second answer is refused: the ask is closed
    with pytest.raises(ConflictError):
        await ask_answer.answer_ask(svc, loop.gw.gp, made.reference, "nog eens")


async def test_another_practice_cannot_answer_and_a_nurse_cannot(loop: Loop) -> None:
    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, {**VISIT, "ask_kind": "consult"})
    stranger = other_practice_gp(svc)
    with pytest.raises(NotFoundError):
        await ask_answer.answer_ask(svc, stranger, made.reference, ANSWER)
    with pytest.raises(NotFoundError):
        await ask_answer.answer_ask(svc, loop.nurse_a, made.reference, ANSWER)
    assert notices(svc, "ask_answered") == []
    assert "access.denied" in audit_codes(svc, made.reference)


async def test_consult_ask_needs_no_procedure_and_an_empty_answer_is_refused(
    loop: Loop,
) -> None:
    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, {**VISIT, "ask_kind": "consult"})
    with pytest.raises(FormInvalidError) as caught:
        await ask_answer.answer_ask(svc, loop.gw.gp, made.reference, "   ")
    assert [e.code for e in caught.value.errors] == ["required"]
    with pytest.raises(FormInvalidError) as caught:
        await asks.create(svc, loop.nurse_a, {**VISIT, "ask_kind": "koffie"})
    assert [e.field for e in caught.value.errors] == ["ask_kind"]


async def test_request_ask_is_answered_by_a_request_and_a_visit_ask_is_not(loop: Loop) -> None:
    svc = loop.gw.svc
    request_ask = await asks.create(
        svc, loop.nurse_a,
        {**VISIT, "ask_kind": "uitvoeringsverzoek", "procedure_code": "INJ_SC"},
    )  # fmt: skip
    with pytest.raises(FormInvalidError) as caught:
        await ask_answer.answer_ask(svc, loop.gw.gp, request_ask.reference, ANSWER)
    assert [e.code for e in caught.value.errors] == ["ask.needs_request"]
    visit = await asks.create(svc, loop.nurse_a, VISIT)
    with pytest.raises(FormInvalidError) as caught:
        await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE, ask=visit.reference)
    assert [e.code for e in caught.value.errors] == ["ask.not_a_request"]


# --- the same over the web pages -----------------------------------------------------------

ELDERS_PASSWORD = "another password 123"


def _web_user(loop: Loop, username: str, password: str) -> dict[str, object]:
    """Login credentials for a user the loop fixture does not pair (TOTP enrolled here)."""
    from securemail.accounts import auth

    svc = loop.gw.svc
    secret = svc.store.write_sync(
        lambda db: auth.enrol_totp_for_demo(db, auth.user_by_name(db, username).id)
    )
    return {"username": username, "password": password, "totp_secret": secret, "clock": loop.clock}


def _add_elders_gp(loop: Loop) -> None:
    from securemail.accounts import auth

    now = loop.gw.svc.now_iso()

    def add(db: object) -> None:
        directory.add_org(db, SYSTEM, code="07654321", kind="practice", name="Elders", now=now)
        auth.add_user(
            db, SYSTEM, username="gp_elders", name="Dr. Elders", role="gp",
            org_code="07654321", password=ELDERS_PASSWORD, now=now,
            profile={"big": "19012345699"},
        )  # fmt: skip

    loop.gw.svc.store.write_sync(add)


def _ask_row(loop: Loop, reference: str) -> tuple[str, str]:
    return loop.gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT state, gp_answer FROM asks WHERE reference = ?", [reference]
        ).fetchone()
    )


@pytest.fixture
async def site(loop: Loop, aiohttp_server: object) -> AsyncIterator[str]:
    from securemail.web import create_app

    app = create_app(loop.gw.svc.settings, services=loop.gw.svc, run_worker=False)
    server = await aiohttp_server(app, host="127.0.0.1")  # type: ignore[operator]
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def ask_on_the_web(
    nurse: aiohttp.ClientSession, site: str, visit: dict[str, str]
) -> tuple[str, str]:
    """A logged-in nurse asks on the ask form (CSRF from the form); (reference, its page)."""
    async with nurse.get(f"{site}/asks/new") as r:
        page = await r.text()
    assert 'name="ask_kind"' in page and 'value="huisbezoek"' in page
    async with nurse.post(f"{site}/asks/new", data={**visit, "csrf_token": csrf_of(page)}) as r:
        assert r.status == 200, await r.text()
        return str(r.url).rsplit("/", 1)[-1], await r.text()


async def test_nurse_asks_a_visit_on_the_web_and_reads_the_gps_answer_there(
    loop: Loop, site: str
) -> None:
    svc = loop.gw.svc
    async with _client() as nurse, _client() as gp:
        # Given a nurse who asks for a home visit on the ask form (no procedure needed)
        await login(nurse, site, loop.credentials("nurse1"))
        reference, page = await ask_on_the_web(nurse, site, VISIT)
        assert "Vraag om een huisbezoek" in page
        assert asks.REFERENCE_RE.fullmatch(reference)
        # The practice's work list names the kind, not the patient
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(f"{site}/asks") as r:
            listing = await r.text()
        assert reference in listing and "Huisbezoek door de huisarts" in listing
        assert EXAMPLE["patient"]["name"] not in listing
        # The GP's page of the ask offers an answer, not "Verzoek opstellen"
        async with gp.get(f"{site}/asks/{reference}") as r:
            page = await r.text()
        assert f'action="/asks/{reference}/answer"' in page
        assert f'action="/asks/{reference}/draft"' not in page
        # An empty answer: a field error, the ask still open, nothing sent
        async with gp.post(
            f"{site}/asks/{reference}/answer", data={"answer": " ", "csrf_token": csrf_of(page)}
        ) as r:
            assert r.status == 422
            assert 'data-field="answer"' in await r.text()
        assert _ask_row(loop, reference)[0] == "open" and notices(svc, "ask_answered") == []
        # When the GP answers
        async with gp.post(
            f"{site}/asks/{reference}/answer", data={"answer": ANSWER, "csrf_token": csrf_of(page)}
        ) as r:
            assert r.status == 200, await r.text()
            assert str(r.url).endswith(f"/asks/{reference}")
        # Then the team is told (reference only) and the nurse reads the answer on the ask
        [told] = notices(svc, "ask_answered")
        assert ANSWER.encode() not in told
        async with nurse.get(f"{site}/asks/{reference}") as r:
            page = html.unescape(await r.text())
        assert ANSWER in page and "beantwoord" in page
        async with nurse.get(f"{site}/asks") as r:
            assert "beantwoord" in await r.text()
        assert "ask.answer" in audit_codes(svc, reference)


async def test_web_answer_refused_without_csrf_for_a_nurse_and_for_another_practice(
    loop: Loop, site: str
) -> None:
    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, {**VISIT, "ask_kind": "consult"})
    url = f"{site}/asks/{made.reference}/answer"
    _add_elders_gp(loop)
    async with _client() as gp, _client() as nurse, _client() as elders:
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(f"{site}/asks/{made.reference}") as r:
            token = csrf_of(await r.text())
        # No CSRF token: refused
        async with gp.post(url, data={"answer": ANSWER}) as r:
            assert r.status == 403
        # A nurse (even of the asking team) does not answer her own ask
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(f"{site}/asks/{made.reference}") as r:
            nurse_token = csrf_of(await r.text())
            assert f'action="/asks/{made.reference}/answer"' not in await r.text()
        async with nurse.post(url, data={"answer": ANSWER, "csrf_token": nurse_token}) as r:
            assert r.status == 403
        # Another practice's GP: as if there were no such ask
        await login(elders, site, _web_user(loop, "gp_elders", ELDERS_PASSWORD))
        async with elders.get(f"{site}/asks") as r:
            elders_token = csrf_of(await r.text())  # the menu's log-out form carries one
        async with elders.get(f"{site}/asks/{made.reference}") as r:
            assert r.status == 404
        async with elders.post(url, data={"answer": ANSWER, "csrf_token": elders_token}) as r:
            assert r.status == 404
        # Nothing was answered, nobody was told, and the refusals are audited
        assert _ask_row(loop, made.reference) == ("open", "")
        assert notices(svc, "ask_answered") == []
        assert "access.denied" in audit_codes(svc, made.reference)
        # The asked practice's GP still can
        async with gp.post(url, data={"answer": ANSWER, "csrf_token": token}) as r:
            assert r.status == 200
        assert _ask_row(loop, made.reference)[0] == "fulfilled"
