"""A nurse asks the practice for a home visit or a consult (not only for an execution
request): the ask has the covenant's deadline, the practice is notified with the
reference only, the GP answers on the ask, the team is notified, all audited; another
practice cannot answer, and an execution-request ask is answered by a request only."""

from __future__ import annotations

from datetime import timedelta

import pytest

from securemail.access import SYSTEM
from securemail.errors import ConflictError, NotFoundError
from securemail.exchange import ask_answer, asks
from securemail.exchange import send as exchange
from securemail.form.request import FormInvalidError
from securemail.region import directory
from tests.clock import AMS
from tests.gateway import EXAMPLE, GP_PASSPHRASE, TEAM, example
from tests.loop_fixtures import Loop, audit_codes, notices

VISIT = {
    "team_address": TEAM,
    "practice_code": "01234567",
    "ask_kind": "huisbezoek",
    "patient.bsn": EXAMPLE["patient"]["bsn"],
    "patient.name": EXAMPLE["patient"]["name"],
    "reason": "Toenemende benauwdheid sinds gisteren, saturatie 89%",
    "urgency": "spoed",
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
    now = svc.now_iso()

    def other_gp(db: object) -> None:
        from securemail.accounts import auth

        directory.add_org(db, SYSTEM, code="07654321", kind="practice", name="Elders", now=now)
        auth.add_user(
            db, SYSTEM, username="gp_elders", name="Dr. Elders", role="gp",
            org_code="07654321", password="another password 123", now=now,
            profile={"big": "19012345699"},
        )  # fmt: skip

    svc.store.write_sync(other_gp)
    from securemail.accounts import auth

    stranger = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_elders"))
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
