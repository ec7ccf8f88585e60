"""Issue 21: the team ends an accepted order with a reason that reaches the GP.

Real gateway (tests/loop_fixtures.py): real gpg (the practice's own keyring decrypts the
sealed copy), real sqlite, the real aiohttp app over HTTP, a controllable clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from securemail import consent
from securemail.accounts import auth
from securemail.exchange import answer, escalation, order_end
from securemail.exchange import send as exchange
from securemail.ops import retention
from securemail.region import directory
from securemail.web import create_app
from tests.e2e.webflow import csrf_of, login
from tests.fhir_r4 import assert_valid
from tests.gateway import GP_PASSPHRASE, TEAM, deliver_all, example
from tests.loop_fixtures import NURSE_B_PASSWORD, Loop, audit_codes, notices
from tests.test_dossier import _entries, _fhir
from tests.test_orders import ACCEPT, _answer_copies, _pin_practice_key, _read_sealed

BSN = example()["patient"]["bsn"]


def _order(days: int = 20) -> dict[str, Any]:
    data = example()
    data["period"] = {"start_date": "today", "end_date": f"today+{days}d"}
    return data


@dataclass
class Site:
    loop: Loop
    base: str
    sessions: dict[str, aiohttp.ClientSession]
    creds: dict[str, dict[str, Any]]

    async def login(self, who: str) -> None:
        """(Again, after the clock moved past the session's life.)"""
        if who in self.sessions:
            await self.sessions.pop(who).close()
        self.sessions[who] = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        await login(self.sessions[who], self.base, self.creds[who])

    async def page(self, who: str, path: str) -> tuple[int, str]:
        async with self.sessions[who].get(f"{self.base}{path}") as r:
            return r.status, await r.text()

    async def end(
        self, who: str, reference: str, data: dict[str, str], *, csrf: bool = True
    ) -> tuple[int, str]:
        """POST the end form as ``who`` would (the token from the page the session sees)."""
        body = dict(data)
        if csrf:
            _, page = await self.page(who, "/requests")
            body["csrf_token"] = csrf_of(page)
        url = f"{self.base}/requests/{reference}/beeindigen"
        async with self.sessions[who].post(url, data=body, allow_redirects=False) as r:
            return r.status, await r.text()


@pytest.fixture
async def site(loop: Loop, aiohttp_server: Any) -> AsyncIterator[Site]:
    """The app over HTTP with the GP, a nurse of team A and a nurse of team B logged in."""
    svc = loop.gw.svc
    secret_b = svc.store.write_sync(
        lambda db: auth.enrol_totp_for_demo(db, auth.user_by_name(db, "nurse_b").id)
    )
    server = await aiohttp_server(create_app(svc.settings, services=svc, run_worker=False))
    base = str(server.make_url("")).rstrip("/")
    creds = {
        "huisarts": loop.credentials("huisarts"),
        "nurse1": loop.credentials("nurse1"),
        "nurse_b": {"username": "nurse_b", "password": NURSE_B_PASSWORD,
                    "totp_secret": secret_b, "clock": loop.clock},
    }  # fmt: skip
    here = Site(loop, base, {}, creds)
    try:
        for who in creds:
            await here.login(who)
        yield here
    finally:
        for http in here.sessions.values():
            await http.close()
        await server.close()


async def _accepted(loop: Loop, days: int = 20) -> str:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, _order(days), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    return sent.reference


MOVED = {"reason": "verhuisd", "text": "Verhuisd naar Zwolle per 1 maart"}


async def test_the_team_ends_with_verhuisd_and_the_gp_reads_it_sealed_and_on_the_page(
    loop: Loop, site: Site
) -> None:
    svc = loop.gw.svc
    practice_home = await _pin_practice_key(loop)
    reference = await _accepted(loop)
    # The nurse of the team that accepted sees the form on the request page
    _, page = await site.page("nurse1", f"/requests/{reference}")
    assert f'action="/requests/{reference}/beeindigen"' in page
    assert "Opdracht beëindigen" in page and 'value="overleden"' in page
    # ... the GP does not
    _, gp_page = await site.page("huisarts", f"/requests/{reference}")
    assert "/beeindigen" not in gp_page
    status, body = await site.end("nurse1", reference, MOVED)
    assert status == 303, body
    # "beëindigd" with the reason on the GP's page and in the GP's work; on the nurse's too
    _, gp_page = await site.page("huisarts", f"/requests/{reference}")
    assert 'id="order-ended"' in gp_page and "Cliënt verhuisd" in gp_page
    assert "Verhuisd naar Zwolle" in gp_page and "state-beeindigd" in gp_page
    _, gp_list = await site.page("huisarts", "/requests")
    assert f"{reference}</a>: <strong>beëindigd</strong>" in gp_list
    _, nurse_page = await site.page("nurse1", f"/requests/{reference}")
    assert 'id="order-ended"' in nurse_page and "/beeindigen" not in nurse_page
    _, nurse_list = await site.page("nurse1", "/requests")
    assert "state-beeindigd" in nurse_list
    # The notice to the practice says what happened and by whom, never why
    [notice] = notices(svc, "order_ended")
    assert reference.encode() in notice and b"Wijkteam" in notice
    for secret in (b"verhuisd", b"Verhuisd", b"Zwolle", BSN.encode()):
        assert secret not in notice
    # The practice's own gpg decrypts the sealed copy and reads the reason
    [_, raw] = _answer_copies(loop)  # the answer's copy, then the end's
    for secret in (b"verhuisd", b"Zwolle", BSN.encode()):
        assert secret not in raw
    doc, gpg_status = _read_sealed(practice_home, raw)
    assert doc["document"] == "uitvoeringsverzoek.beeindiging"
    assert (doc["reference"], doc["reason"]) == (reference, "verhuisd")
    assert doc["text"] == MOVED["text"] and doc["team_address"] == TEAM
    assert "[GNUPG:] GOODSIG" in gpg_status
    codes = audit_codes(svc, reference)
    assert codes.count("order.end_by_team") == 1
    # The API's status (no content) carries the fact and moment, not the reason
    state = svc.store.read_sync(lambda db: exchange.status(db, reference))["order"]
    assert state["ended"] is True and state["ended_at"] and "verhuisd" not in str(state)


async def test_after_the_end_no_reminder_no_verlopen_no_stop_notice(loop: Loop, site: Site) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop)
    assert (await site.end("nurse1", reference, MOVED))[0] == 303
    loop.clock.advance(days=10)  # within the reminder lead of the end date
    assert (await escalation.check(svc)).orders == ()
    loop.clock.advance(days=11)  # past the end date
    assert (await escalation.check(svc)).orders == ()
    for kind in ("order_end", "order_end_team", "order_expired", "order_stop"):
        assert notices(svc, kind) == [], kind
    codes = audit_codes(svc, reference)
    assert "request.remind" not in codes and "request.expire" not in codes


async def test_another_team_gets_404_the_gp_403_and_no_csrf_403(loop: Loop, site: Site) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop)
    assert (await site.end("nurse_b", reference, MOVED))[0] == 404
    assert (await site.end("huisarts", reference, MOVED))[0] == 403
    assert (await site.end("nurse1", reference, MOVED, csrf=False))[0] == 403
    # Nothing was ended, nothing told; every refusal is on record
    state = svc.store.read_sync(lambda db: exchange.status(db, reference))["order"]
    assert state["ended"] is False
    assert notices(svc, "order_ended") == []
    assert "access.denied" in audit_codes(svc, reference)
    assert "order.end_by_team" not in audit_codes(svc, reference)


async def test_ending_twice_is_409_and_writes_nothing_more(loop: Loop, site: Site) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop)
    assert (await site.end("nurse1", reference, MOVED))[0] == 303
    status, page = await site.end("nurse1", reference, {"reason": "overleden"})
    assert status == 409 and "kan niet (meer) worden beëindigd" in page
    assert len(notices(svc, "order_ended")) == 1
    assert audit_codes(svc, reference).count("order.end_by_team") == 1
    _, gp_page = await site.page("huisarts", f"/requests/{reference}")
    assert "Cliënt verhuisd" in gp_page and "Cliënt overleden" not in gp_page


async def test_an_order_not_accepted_cannot_be_ended(loop: Loop, site: Site) -> None:
    svc = loop.gw.svc
    waiting = await exchange.send(svc, loop.gw.gp, _order(), GP_PASSPHRASE)
    _, page = await site.page("nurse1", f"/requests/{waiting.reference}")
    assert "/beeindigen" not in page
    assert (await site.end("nurse1", waiting.reference, MOVED))[0] == 409
    declined = await exchange.send(svc, loop.gw.gp, _order(), GP_PASSPHRASE)
    await answer.record_answer(
        svc, loop.nurse_a, declined.reference, {"status": "afgewezen", "reason": "Vol"}
    )
    assert (await site.end("nurse1", declined.reference, MOVED))[0] == 409
    # an order that ran out is not ended afterwards
    expired = await _accepted(loop, days=2)
    loop.clock.advance(days=3)
    await escalation.check(svc)
    await site.login("nurse1")
    assert (await site.end("nurse1", expired, MOVED))[0] == 409
    assert notices(svc, "order_ended") == []


async def test_a_missing_reason_or_anders_without_text_is_a_field_error(
    loop: Loop, site: Site
) -> None:
    reference = await _accepted(loop)
    status, page = await site.end("nurse1", reference, {"reason": "", "text": ""})
    assert status == 422 and "Kies de reden van de beëindiging." in page
    status, page = await site.end("nurse1", reference, {"reason": "anders"})
    assert status == 422 and "Licht de reden toe" in page
    status, page = await site.end("nurse1", reference, {"reason": "verhuisd", "text": "x" * 1500})
    assert status == 422 and "te lang" in page
    state = loop.gw.svc.store.read_sync(lambda db: exchange.status(db, reference))["order"]
    assert state["ended"] is False


async def test_the_content_purge_clears_the_reason_and_keeps_the_fact(
    loop: Loop, site: Site
) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop, days=120)
    assert (await site.end("nurse1", reference, MOVED))[0] == 303
    ended_at = svc.store.read_sync(lambda db: exchange.status(db, reference))["order"]["ended_at"]
    loop.clock.advance(days=svc.settings.retention.content_days + 1)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.request_content == 1
    stored = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT content FROM order_ends WHERE reference = ?", [reference]
        ).fetchone()[0]
    )
    assert stored == ""
    state = svc.store.read_sync(lambda db: exchange.status(db, reference))["order"]
    assert state["ended"] is True and state["ended_at"] == ended_at
    await site.login("huisarts")
    _, gp_page = await site.page("huisarts", f"/requests/{reference}")
    assert 'id="order-ended"' in gp_page and "Cliënt verhuisd" not in gp_page
    assert "De reden is verwijderd (bewaartermijn)" in gp_page


async def test_an_end_after_the_requests_purge_is_purged_on_its_own(loop: Loop, site: Site) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop, days=180)
    loop.clock.advance(days=svc.settings.retention.content_days + 1)
    assert retention.purge(svc.store, svc.settings, now=svc.now()).request_content == 1
    # a long order runs on after its content went: the team can still end it
    await order_end.end_order(svc, loop.nurse_a, reference, {"reason": "overleden"})
    end = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, reference))
    assert end["order_end"]["reason"] == "overleden"
    loop.clock.advance(days=svc.settings.retention.content_days + 1)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.order_end_content == 1
    end = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, reference))
    assert end["order_end"]["reason"] is None and end["order"]["ended"] is True


async def test_an_ended_order_is_a_completed_service_request_in_the_fhir_export(loop: Loop) -> None:
    svc = loop.gw.svc
    reference = await _accepted(loop)
    await order_end.end_order(svc, loop.nurse_a, reference, MOVED)
    bundle = _fhir(loop, reference)
    assert_valid(bundle)
    assert _entries(bundle)["ServiceRequest"]["resource"]["status"] == "completed"


async def test_the_end_reaches_the_practice_after_the_patient_objected(loop: Loop) -> None:
    # The end reduces risk (the GP learns care stopped): an objection never holds it back.
    svc = loop.gw.svc
    practice_home = await _pin_practice_key(loop)
    reference = await _accepted(loop)
    await deliver_all(svc)

    def objection(db: Any) -> None:
        team = directory.team_by_address(db, TEAM)
        consent.record(
            db, loop.gw.gp, patient_bsn=BSN, source_org_id=loop.gw.gp.org_id,
            recipient=consent.Recipient(team_id=team.id, org_id=None, category=None),
            decision="deny", basis="objection", valid_from=svc.now(), valid_until=None,
            given_at=svc.now(), channel="in_person", performer="patient", now=svc.now(),
        )  # fmt: skip

    svc.store.write_sync(objection)
    await order_end.end_order(svc, loop.nurse_a, reference, MOVED)
    await deliver_all(svc)
    [_, raw] = _answer_copies(loop)  # the answer's copy, then the end's
    doc, _ = _read_sealed(practice_home, raw)
    assert (doc["reference"], doc["reason"]) == (reference, "verhuisd")
    statuses = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT o.status FROM outbox o JOIN answer_copies c ON c.message_id = o.message_id"
        ).fetchall()
    )
    assert statuses == [("sent",), ("sent",)]
    assert len(notices(svc, "order_ended")) == 1
