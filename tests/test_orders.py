"""Issue 21: orders that can be trusted and stay valid: the request's date is the moment of
signing, the principal's enrolled function is what is signed, the team's answer goes back to
the practice sealed to its key, and end and evaluation dates outlive the content.

Real gateway (tests/loop_fixtures.py): real gpg seals, real sqlite, a controllable clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.cli.directory import enrol_gp_key
from securemail.errors import InputError
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.form import request as forms
from tests.e2e.conftest import GP_PASSPHRASE, TEAM, example
from tests.loop_fixtures import Loop


def _signed_document(loop: Loop, reference: str) -> dict[str, Any]:
    svc = loop.gw.svc
    row = svc.store.read_sync(lambda db: exchange.require_row(db, reference))
    return svc.store.read_sync(lambda db: requestview.document(db, row))


async def test_signed_request_is_dated_at_the_moment_of_signing(loop: Loop) -> None:
    # Given a request typed an hour before it is signed (same day)
    svc = loop.gw.svc
    data = example()
    data["issued_at"] = (loop.clock.now - timedelta(hours=1)).isoformat()
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    # Then what is signed and stored carries the gateway's moment of signing
    issued = datetime.fromisoformat(_signed_document(loop, sent.reference)["issued_at"])
    assert issued == loop.clock.now


async def test_backdated_request_or_start_before_signing_is_a_field_error(loop: Loop) -> None:
    svc = loop.gw.svc
    backdated = example()
    backdated["issued_at"] = (loop.clock.now - timedelta(days=3)).isoformat()
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, backdated, GP_PASSPHRASE)
    assert ("issued_at", "datetime.backdated") in {(e.field, e.code) for e in info.value.errors}
    early = example()
    early["period"]["start_date"] = "today-1d"
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, early, GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("period.start_date", "period.start_before_issue")
    ]
    # Nothing was stored
    rows = svc.store.read_sync(lambda db: db.execute("SELECT COUNT(*) FROM requests").fetchone())
    assert rows[0] == 0


# -- the principal's function ------------------------------------------------------------------


def test_principal_functions_are_the_forms_options(loop: Loop) -> None:
    spec = loop.gw.svc.definition.spec("principal.role")
    assert spec is not None
    assert tuple(o.value for o in spec.options) == auth.PRINCIPAL_FUNCTIONS


def _add_locum(loop: Loop, function: str = "waarnemend_huisarts") -> Actor:
    svc = loop.gw.svc
    svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="waarnemer", name="B. Waarnemer", role="gp",
            org_code="01234567", password="locum password 12345",
            profile={"big": "29012345601", "function": function, "phone": "020-1234567",
                     "out_of_hours_phone": "088-0030600"},
            now=svc.now_iso(),
        )
    )  # fmt: skip
    return svc.store.read_sync(lambda db: auth.actor_for_cli(db, "waarnemer"))


async def test_a_locums_request_is_signed_as_waarnemend_huisarts(loop: Loop) -> None:
    svc = loop.gw.svc
    locum = _add_locum(loop)
    user = svc.store.read_sync(lambda db: auth.user_by_name(db, "waarnemer"))
    await enrol_gp_key(svc, user, GP_PASSPHRASE)
    data = example()
    del data["principal"]["role"]  # filled in from the enrolment
    sent = await exchange.send(svc, locum, data, GP_PASSPHRASE)
    assert _signed_document(loop, sent.reference)["principal"]["role"] == "waarnemend_huisarts"
    # The example's "huisarts" is not what the locum is enrolled as: a field error
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, locum, example(), GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("principal.role", "principal.role_mismatch")
    ]


def test_enrolment_refuses_an_unknown_function_and_a_malformed_big(loop: Loop) -> None:
    with pytest.raises(InputError, match="function"):
        _add_locum(loop, function="tandarts")
    svc = loop.gw.svc
    with pytest.raises(InputError, match="BIG"):
        svc.store.write_sync(
            lambda db: auth.add_user(
                db, SYSTEM, username="nurse_c", name="Nurse C", role="nurse",
                org_code="87654321", password="nurse c password 123", teams=[TEAM],
                profile={"big": "1234"}, now=svc.now_iso(),
            )
        )  # fmt: skip


async def test_an_account_without_function_cannot_sign(loop: Loop) -> None:
    svc = loop.gw.svc
    svc.store.write_sync(
        lambda db: db.execute("UPDATE users SET function = '' WHERE username = 'huisarts'")
    )
    data = example()
    data["principal"]["role"] = "huisarts"  # what the form says is not enough
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    assert [e.code for e in info.value.errors] == ["principal.function_missing"]


# -- the team's answer carries the nurse's contact details and the start of care -------------

ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    "nurse_reachability": "Ma-vr 8-17 uur; daarna het teamnummer 020 555 0000",
    "nurse_big": "39012345601",
    "care_start": "2030-01-02T09:00",
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}


async def test_acceptance_needs_the_nurses_phone_and_the_start_of_care(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    bare = {k: v for k, v in ACCEPT.items() if k not in ("nurse_phone", "care_start")}
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(svc, loop.nurse_a, sent.reference, bare)
    assert {(e.field, e.code) for e in info.value.errors} == {
        ("nurse_phone", "answer.phone_required"),
        ("care_start", "answer.care_start_required"),
    }
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference, {**ACCEPT, "nurse_big": "1234"}
        )
    assert [(e.field, e.code) for e in info.value.errors] == [("nurse_big", "big.format")]
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    view = svc.store.write_sync(lambda db: exchange.get_request(db, loop.gw.gp, sent.reference))
    assert view["answer"]["nurse_phone"] == "06 12345678"
    assert view["answer"]["care_start"].startswith("2030-01-02T09:00")
