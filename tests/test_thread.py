"""The conversation on a request or an ask (securemail.exchange.thread), over the real web
app, real gpg and a real STARTTLS relay: a nurse asks for a home visit, the practice is
told with the reference only, the GP answers on the thread, the nurse reads it on her page
and the team's gpg opens the GP's message from its mail. Who may read and post, bounds,
consent, sealing at rest and the retention purge."""

from __future__ import annotations

import html
from email import message_from_bytes, policy
from typing import Any

import aiohttp
import pytest

from securemail import consent
from securemail.access import HiddenDeniedError
from securemail.errors import NotFoundError
from securemail.exchange import asks, thread
from securemail.exchange import send as exchange
from securemail.form.request import FormInvalidError
from securemail.ops import retention
from securemail.region import directory
from tests.e2e.webflow import csrf_of, login
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, deliver_all, example
from tests.loop_fixtures import NURSE_B_PASSWORD, Loop, audit_codes, notices, other_practice_gp
from tests.test_ask_visits import (  # noqa: F401 - site: a fixture used by name
    VISIT,
    _client,
    ask_on_the_web,
    site,
)

QUESTION = "Kunt u vandaag nog langskomen? Saturatie 89%."
ANSWER = "Ik kom om 15.00 uur langs, dr. Huisarts."


def _sealed_mails_to(loop: Loop, smtp_server: Any, reference: str) -> list[bytes]:
    box = smtp_server.handler.mailbox()
    return [
        raw
        for raw in box.values()
        if f"X-Securemail-Reference: {reference}".encode() in raw
        and b"X-Securemail-Notice" not in raw
        and b"multipart/encrypted" in raw
    ]


async def _post(
    client: aiohttp.ClientSession, url: str, body: str, page: str
) -> aiohttp.ClientResponse:
    async with client.post(url, data={"body": body, "csrf_token": csrf_of(page)}) as r:
        await r.read()
        return r


async def test_nurse_asks_a_home_visit_practice_notified_gp_answers_on_the_thread(
    loop: Loop,
    site: str,  # noqa: F811 - the fixture imported above
    smtp_server: Any,
) -> None:
    svc = loop.gw.svc
    async with _client() as nurse, _client() as gp:
        # Given a nurse who asks for a home visit on the ask form
        await login(nurse, site, loop.credentials("nurse1"))
        reference, page = await ask_on_the_web(nurse, site, VISIT)
        # And a question on the ask's thread
        assert f'action="/asks/{reference}/thread"' in page
        r = await _post(nurse, f"{site}/asks/{reference}/thread", QUESTION, page)
        assert r.status == 200 and str(r.url).endswith(f"/asks/{reference}")
        # Then the practice is notified, with the reference only
        [told] = notices(svc, "thread")
        assert reference.encode() in told and b"nieuw bericht in het gesprek" in told
        for secret in (QUESTION, "89%", EXAMPLE["patient"]["name"], EXAMPLE["patient"]["bsn"]):
            assert secret.encode() not in told
        # When the GP answers on the thread
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(f"{site}/asks/{reference}") as r:
            page = html.unescape(await r.text())
        assert QUESTION in page
        r = await _post(gp, f"{site}/asks/{reference}/thread", ANSWER, page)
        assert r.status == 200
        # Then the ask is answered, and the nurse reads the answer on her page, newest last
        async with nurse.get(f"{site}/asks/{reference}") as r:
            page = html.unescape(await r.text())
        assert page.index(QUESTION) < page.index(ANSWER) and "beantwoord" in page
        assert "CET" in page or "CEST" in page  # the moment in Europe/Amsterdam with its zone
        assert (
            svc.store.read_sync(
                lambda db: db.execute(
                    "SELECT state FROM asks WHERE reference = ?", [reference]
                ).fetchone()[0]
            )
            == "fulfilled"
        )
    # And the team's own gpg opens the GP's message from its mail
    await deliver_all(svc)
    [mail] = _sealed_mails_to(loop, smtp_server, reference)
    assert ANSWER.encode() not in mail and b"15.00" not in mail
    opened = loop.gw.decrypt_as_nurse(mail)
    # (signed by the gateway's key, which this test's mail client has not imported)
    assert b"[GNUPG:] DECRYPTION_OKAY" in opened.stderr, opened.stderr
    assert "15.00 uur langs" in _texts(opened.stdout)
    codes = audit_codes(svc, reference)
    assert codes.count("thread.post") == 2 and "thread.read" in codes and "ask.answer" in codes


async def test_thread_on_a_request_both_ways_and_refusals(
    loop: Loop,
    site: str,  # noqa: F811 - the fixture imported above
    smtp_server: Any,
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    url = f"{site}/requests/{sent.reference}/thread"
    async with _client() as nurse, _client() as gp, _client() as other_nurse:
        await login(gp, site, loop.credentials("huisarts"))
        async with gp.get(f"{site}/requests/{sent.reference}") as r:
            gp_page = await r.text()
        assert f'action="/requests/{sent.reference}/thread"' in gp_page
        # No CSRF token: 403, nothing stored
        async with gp.post(url, data={"body": ANSWER}) as r:
            assert r.status == 403
        # Too long: a Dutch field error in a linked summary, nothing stored
        r = await _post(gp, url, "x" * (thread.MAX_BODY + 1), gp_page)
        assert r.status == 422
        async with gp.post(url, data={"body": "x" * 2001, "csrf_token": csrf_of(gp_page)}) as r:
            text = await r.text()
        assert 'href="#thread-body"' in text and "te lang" in text and 'id="thread-body"' in text
        # Empty: the same
        async with gp.post(url, data={"body": "  ", "csrf_token": csrf_of(gp_page)}) as r:
            assert r.status == 422 and "Schrijf uw bericht" in await r.text()
        assert _count(loop, sent.reference) == 0
        # The practice writes; the nurse of the team reads and answers
        r = await _post(gp, url, "Graag de wond dagelijks controleren.", gp_page)
        assert r.status == 200
        await login(nurse, site, loop.credentials("nurse1"))
        async with nurse.get(f"{site}/requests/{sent.reference}") as r:
            page = html.unescape(await r.text())
        assert "Graag de wond dagelijks controleren." in page
        r = await _post(nurse, url, "Begrepen, wij starten morgen.", page)
        assert r.status == 200
        [told] = notices(svc, "thread")
        assert b"Begrepen" not in told and sent.reference.encode() in told
        # A nurse of another team: as if there were no such request
        await login(other_nurse, site, _web_user(loop, "nurse_b", NURSE_B_PASSWORD))
        async with other_nurse.get(f"{site}/requests") as r:
            token_page = await r.text()
        async with other_nurse.post(
            url, data={"body": "hallo", "csrf_token": csrf_of(token_page)}
        ) as r:
            assert r.status == 404
    assert _count(loop, sent.reference) == 2
    assert "access.denied" in audit_codes(svc, sent.reference)


async def test_another_practice_gets_not_found_and_the_refusal_is_audited(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    stranger = other_practice_gp(svc)
    with pytest.raises(NotFoundError):
        await thread.post(svc, stranger, sent.reference, "hallo")
    with pytest.raises(HiddenDeniedError) as caught:  # the middleware records it
        svc.store.write_sync(lambda db: thread.read(db, stranger, sent.reference))
    assert caught.value.action == "thread.read"
    assert audit_codes(svc, sent.reference).count("access.denied") == 1
    assert _count(loop, sent.reference) == 0


async def test_the_201st_message_is_refused(loop: Loop) -> None:
    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, VISIT)
    for i in range(thread.MAX_MESSAGES):
        await thread.post(svc, loop.nurse_a, made.reference, f"bericht {i}")
    with pytest.raises(thread.ThreadFullError):
        await thread.post(svc, loop.nurse_a, made.reference, "nog een")
    assert _count(loop, made.reference) == thread.MAX_MESSAGES


async def test_gps_reply_still_goes_after_the_patient_objected(
    loop: Loop, smtp_server: Any
) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)

    # Given the patient now objects to sharing with the team
    def objection(db: Any) -> None:
        team = directory.team_by_address(db, TEAM)
        consent.record(
            db, loop.gw.gp, patient_bsn=EXAMPLE["patient"]["bsn"],
            source_org_id=loop.gw.gp.org_id,
            recipient=consent.Recipient(team_id=team.id, org_id=None, category=None),
            decision="deny", basis="objection", valid_from=svc.now(), valid_until=None,
            given_at=svc.now(), channel="in_person", performer="patient", now=svc.now(),
        )  # fmt: skip

    svc.store.write_sync(objection)
    # When the nurse asks and the GP answers on the thread
    await thread.post(svc, loop.nurse_a, sent.reference, QUESTION)
    await thread.post(svc, loop.gw.gp, sent.reference, ANSWER)
    await deliver_all(svc)
    # Then the GP's answer went to the team (the register never gates it)
    [mail] = _sealed_mails_to(loop, smtp_server, sent.reference)[-1:]
    opened = loop.gw.decrypt_as_nurse(mail)
    assert b"[GNUPG:] DECRYPTION_OKAY" in opened.stderr
    assert "15.00" in _texts(opened.stdout)
    status = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT o.status FROM outbox o JOIN thread_messages m ON m.message_id = o.message_id"
        ).fetchall()
    )
    assert status == [("sent",)]


async def test_body_sealed_at_rest_and_purged_with_the_content(loop: Loop) -> None:
    svc = loop.gw.svc
    made = await asks.create(svc, loop.nurse_a, VISIT)
    await thread.post(svc, loop.nurse_a, made.reference, "Geheime vraag over mevrouw")
    await thread.post(svc, loop.gw.gp, made.reference, ANSWER)
    raw = b"".join(p.read_bytes() for p in svc.settings.db_path.parent.glob("securemail.db*"))
    assert b"Geheime vraag" not in raw and b"15.00 uur" not in raw
    # When the retention purge runs after the content period
    loop.clock.advance(days=svc.settings.retention.content_days + 1)
    counts = retention.purge(svc.store, svc.settings, now=svc.now())
    assert counts.ask_content == 1
    shown = svc.store.write_sync(lambda db: thread.read(db, loop.nurse_a, made.reference))
    assert [m["purged"] for m in shown] == [True, True]
    assert all(m["text"] == "" for m in shown)
    left = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT body, purged_at, author_role FROM thread_messages WHERE reference = ?",
            [made.reference],
        ).fetchall()
    )
    assert [(b, bool(p), r) for b, p, r in left] == [("", True, "nurse"), ("", True, "gp")]
    with pytest.raises(Exception) as caught:
        await thread.post(svc, loop.nurse_a, made.reference, "nog iets")
    assert getattr(caught.value, "code", "") == "retention.content_purged"


async def test_unclean_text_is_a_field_error() -> None:
    with pytest.raises(FormInvalidError) as caught:
        thread.check_body("a\u202eb")
    assert [e.field for e in caught.value.errors] == ["body"]


def _web_user(loop: Loop, username: str, password: str) -> dict[str, object]:
    """Login credentials for a user the loop fixture does not pair (TOTP enrolled here)."""
    from securemail.accounts import auth

    secret = loop.gw.svc.store.write_sync(
        lambda db: auth.enrol_totp_for_demo(db, auth.user_by_name(db, username).id)
    )
    return {"username": username, "password": password, "totp_secret": secret, "clock": loop.clock}


def _texts(decrypted: bytes) -> str:
    """The text parts of a decrypted message, decoded (what the nurse's mail client shows)."""
    msg = message_from_bytes(decrypted, policy=policy.default)
    return "\n".join(
        str(part.get_content()) for part in msg.walk() if part.get_content_type() == "text/plain"
    )


def _count(loop: Loop, reference: str) -> int:
    return int(
        loop.gw.svc.store.read_sync(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM thread_messages WHERE reference = ?", [reference]
            ).fetchone()[0]
        )
    )
