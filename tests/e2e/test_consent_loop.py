"""The covenant's loop under both consent policies: risk-reducing sends are never gated,
direct care needs no recorded permit, an objection always stops a send, and a refused
check is on record only for the organisation that asked.

Real gateway (tests/loop_fixtures.py): real gpg, real SMTP with STARTTLS, real sqlite.
"""

from __future__ import annotations

import subprocess
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from securemail import consent
from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.errors import NotFoundError
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.form import request as forms
from securemail.message import mime
from securemail.region import directory
from securemail.store import set_meta
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    OTHER_TEAM,
    TEAM,
    deliver_all,
    example,
)
from tests.loop_fixtures import TEAM_B, Loop, verify_order

BSN = EXAMPLE["patient"]["bsn"]
POLICIES = ("direct_care", "explicit")


def _policy(loop: Loop, policy: str) -> None:
    svc = loop.gw.svc
    svc.settings = svc.settings.replace(consent={"policy": policy})


def _object(loop: Loop, *, team: str = "", org_code: str = "") -> None:
    """The patient's objection, recorded by the GP, for one team or one organisation."""
    svc, gp = loop.gw.svc, loop.gw.gp

    def write(db: object) -> None:
        if team:
            recipient = consent.Recipient(team_id=directory.team_by_address(db, team).id)
        else:
            org = db.execute("SELECT id FROM organisations WHERE code = ?", [org_code]).fetchone()  # type: ignore[attr-defined]
            recipient = consent.Recipient(org_id=int(org[0]))
        consent.record(
            db,  # type: ignore[arg-type]
            gp,
            patient_bsn=BSN,
            source_org_id=gp.org_id or 0,
            recipient=recipient,
            decision="deny",
            basis="objection",
            valid_from=svc.now(),
            given_at=svc.now(),
            channel="in_person",
            performer="patient",
            now=svc.now(),
        )

    svc.store.write_sync(write)


def _forget_consents(loop: Loop) -> None:
    """Withdraw the fixture's explicit permits: no record left for either team."""
    svc, gp = loop.gw.svc, loop.gw.gp
    for address in (TEAM, TEAM_B):

        def write(db: object, address: str = address) -> None:
            consent.withdraw(
                db,  # type: ignore[arg-type]
                gp,
                patient_bsn=BSN,
                source_org_id=gp.org_id or 0,
                recipient=consent.Recipient(team_id=directory.team_by_address(db, address).id),
                channel="in_person",
                now=svc.now(),
                stop_pending=exchange.stop_for_consent,
            )

        svc.store.write_sync(write)


def _gpg(home: Path, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", *args],
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )


def _delivered_to(smtp_server: object, address: str) -> list[bytes]:
    return [r.content for r in smtp_server.handler.snapshot() if address in r.rcpt_tos]  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", POLICIES)
async def test_withdrawal_reaches_the_team_after_the_patient_objected(
    loop: Loop, smtp_server: object, policy: str
) -> None:
    _policy(loop, policy)
    svc = loop.gw.svc
    first = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    # The patient objects to team A; an order is still with that team
    _object(loop, team=TEAM)
    with pytest.raises(consent.ConsentDeniedError):  # a new order is refused ...
        await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    withdrawal = example()
    withdrawal.update(kind="intrekking", supersedes=first.reference)
    second = await exchange.send(svc, loop.gw.gp, withdrawal, GP_PASSPHRASE)  # ... not this
    await deliver_all(svc)
    raws = _delivered_to(smtp_server, TEAM)
    assert len(raws) == 2  # the order and its withdrawal
    opened = _gpg(loop.gw.nurse_home, "--decrypt", data=raws[-1])
    assert opened.returncode == 0, opened.stderr.decode()
    inner = mime.parse_inner(opened.stdout)
    assert second.reference.encode() in inner.json and b"intrekking" in inner.json
    row = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT check_consent FROM audit_events WHERE event_code = 'request.send' "
            "AND object_id = ? AND outcome = 'success'",
            [second.reference],
        ).fetchone()
    )
    assert row[0] == "exempt:withdrawal"


async def test_direct_care_sends_without_a_record_and_fills_the_consent_profile(
    loop: Loop, smtp_server: object
) -> None:
    _forget_consents(loop)
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    assert len(_delivered_to(smtp_server, TEAM)) == 1
    row = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT check_consent, consent_id FROM audit_events WHERE event_code = 'request.send' "
            "AND object_id = ?",
            [sent.reference],
        ).fetchone()
    )
    assert tuple(row) == (f"implied_referral:{sent.reference}",) * 2


async def test_explicit_policy_refuses_without_a_record_and_names_what_to_record(
    loop: Loop,
) -> None:
    _forget_consents(loop)
    _policy(loop, "explicit")
    with pytest.raises(consent.ConsentMissingError) as info:
        await exchange.send(loop.gw.svc, loop.gw.gp, example(), GP_PASSPHRASE)
    assert "record the patient's consent" in str(info.value)


async def test_objection_for_all_wijkverpleging_after_older_org_consent_loses_to_team(
    loop: Loop,
) -> None:
    """audit-consent.md: the most specific record wins; at equal specificity deny wins."""
    svc, gp = loop.gw.svc, loop.gw.gp

    def category_objection(db: object) -> None:
        consent.record(
            db,  # type: ignore[arg-type]
            gp,
            patient_bsn=BSN,
            source_org_id=gp.org_id or 0,
            recipient=consent.Recipient(category="wijkverpleging"),
            decision="deny",
            basis="objection",
            valid_from=svc.now(),
            given_at=svc.now(),
            channel="in_person",
            performer="patient",
            now=svc.now(),
        )

    svc.store.write_sync(category_objection)
    _forget_consents(loop)  # the team permits gone: the category objection decides
    with pytest.raises(consent.ConsentDeniedError):
        await exchange.send(svc, gp, example(), GP_PASSPHRASE)


@pytest.mark.parametrize("policy", POLICIES)
async def test_refused_check_is_not_in_the_refused_organisations_console(
    loop: Loop, policy: str
) -> None:
    _policy(loop, policy)
    _object(loop, team=TEAM)
    svc = loop.gw.svc
    with pytest.raises(consent.ConsentRefusedError):
        await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    rows = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, org_id, sender_org, recipient_org FROM audit_events "
            "WHERE patient_id = ? AND outcome = 'refused'",
            [BSN],
        ).fetchall()
    )
    assert rows  # the refusal is on record ...
    team_org = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT o.id, o.code FROM organisations o WHERE o.code = '87654321'"
        ).fetchone()
    )
    for _code, org_id, sender, recipient in rows:  # ... for the practice that asked only
        assert org_id != team_org[0]
        assert sender == "01234567"
        assert recipient not in (team_org[1], TEAM)


@pytest.mark.parametrize("policy", POLICIES)
async def test_objection_to_an_organisation_stops_a_pass_on_to_any_of_its_teams(
    loop: Loop, policy: str
) -> None:
    _policy(loop, policy)
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    _forget_consents(loop)  # no narrower permit left standing (it would win: most specific)
    _object(loop, org_code="12345678")  # Zorg Zuid, team B's organisation
    with pytest.raises(consent.ConsentDeniedError) as info:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference,
            {"status": "doorbemiddeld", "reason": "Geen capaciteit", "passed_to": TEAM_B},
        )  # fmt: skip
    assert info.value.nl  # Dutch, and it says what to do next
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert status["team_address"] == TEAM


DESK = "doorbemiddeling@regio.example"
OOST = "wijkteam-oost@zorg-oost.example"


def _desk_and_oost(loop: Loop) -> Actor:
    """The region's passing-on desk and a third team (Wijkteam Oost), each with team B's
    member key pinned (so team B's mail client opens what they get), and a desk nurse."""
    svc = loop.gw.svc
    now = svc.now_iso()
    svc.settings = svc.settings.replace(gateway={"passing_on_address": DESK})

    def write(db: Any) -> Actor:
        [fpr] = [
            m.fingerprint for m in directory.members(db, directory.team_by_address(db, TEAM_B).id)
        ]
        directory.add_org(db, SYSTEM, code="55555555", kind="nursing", name="Regio", now=now)
        directory.add_org(db, SYSTEM, code="66666666", kind="nursing", name="Zorg Oost", now=now)
        for org, name, address in (
            ("55555555", "Doorbemiddeling", DESK),
            ("66666666", "Wijkteam Oost", OOST),
        ):
            directory.add_team(db, SYSTEM, org_code=org, name=name, address=address, now=now)
            directory.add_member(
                db,
                SYSTEM,
                team_address=address,
                name="West",
                email="west@zorg-zuid.example",
                fingerprint=fpr,
                now=now,
            )
        auth.add_user(
            db,
            SYSTEM,
            username="desk",
            name="Desk Nurse",
            role="nurse",
            org_code="55555555",
            password="desk nurse password 12345",
            teams=[DESK],
            now=now,
        )
        return auth.actor_for_cli(db, "desk")

    return svc.store.write_sync(write)


async def test_pass_on_to_the_desk_and_on_to_a_third_team_without_consent_records(
    loop: Loop, smtp_server: object
) -> None:
    desk_nurse = _desk_and_oost(loop)
    _forget_consents(loop)  # direct care: no record for any team
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    # The nurse's list: the desk first, a team without a usable key greyed with the reason
    row = svc.store.read_sync(lambda db: exchange.require_row(db, sent.reference))
    choices = await answer.pass_on_choices(svc, row)
    assert choices[0].team.address == DESK and choices[0].passing_on_desk
    no_key = [c for c in choices if c.team.address == OTHER_TEAM]
    assert no_key and not no_key[0].can_receive and "sleutel" in no_key[0].reason_nl
    # ... and choosing it anyway is refused with the next step, in Dutch
    with pytest.raises(forms.FormInvalidError) as info:
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference,
            {"status": "doorbemiddeld", "reason": "Vol", "passed_to": OTHER_TEAM},
        )  # fmt: skip
    assert "Kies een ander team" in info.value.errors[0].message_nl
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference,
        {"status": "doorbemiddeld", "reason": "Geen capaciteit", "passed_to": DESK},
    )  # fmt: skip
    await deliver_all(svc)
    await answer.record_answer(
        svc, desk_nurse, sent.reference,
        {"status": "doorbemiddeld", "reason": "Oost heeft plek", "passed_to": OOST},
    )  # fmt: skip
    await deliver_all(svc)
    gp_fpr = row["signer_fingerprint"]
    [first_raw] = _delivered_to(smtp_server, TEAM)
    first = _gpg(loop.gw.nurse_home, "--decrypt", data=first_raw)
    status_a, order = verify_order(loop.gw.nurse_home, first.stdout)
    assert f"[GNUPG:] VALIDSIG {gp_fpr}" in status_a, status_a
    for address in (DESK, OOST):
        [raw] = _delivered_to(smtp_server, address)
        opened = _gpg(loop.team_b_home, "--decrypt", data=raw)
        assert opened.returncode == 0, opened.stderr.decode()
        # each team's own gpg: a good signature by the GP's key over the GP's order, the
        # very bytes team A got (the gateway re-encrypted it, it did not re-sign it)
        status_b, forwarded = verify_order(loop.team_b_home, opened.stdout)
        assert "[GNUPG:] GOODSIG" in status_b and f"[GNUPG:] VALIDSIG {gp_fpr}" in status_b
        assert forwarded == order
        parts = mime.parse_inner(opened.stdout)
        assert parts.forwarded_order == order and b"doorbemiddeld" not in parts.json
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert [h["team_address"] for h in status["hops"]] == [TEAM, DESK, OOST]


def _pass_on_details(svc: Any, reference: str) -> list[str]:
    return svc.store.read_sync(
        lambda db: [
            r[0]
            for r in db.execute(
                "SELECT outcome_detail FROM audit_events WHERE object_id = ? "
                "AND event_code = 'request.pass_on' ORDER BY seq",
                [reference],
            )
        ]
    )


def _queued_notices(svc: Any, kind: str) -> list[bytes]:
    rows = svc.store.read_sync(
        lambda db: db.execute("SELECT mime FROM outbox WHERE kind = 'notice'").fetchall()
    )
    marker = f"X-Securemail-Notice: {kind}\r\n".encode()
    return [bytes(r[0]) for r in rows if marker in bytes(r[0])]


async def test_a_decline_with_no_alternative_goes_to_the_desk_and_the_deadline_runs_on(
    loop: Loop, smtp_server: object
) -> None:
    desk_nurse = _desk_and_oost(loop)
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    due = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))["answer_due"]
    assert due
    loop.clock.advance(hours=1)
    result = await answer.record_answer(
        svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "Geen capaciteit"}
    )
    assert result.to_desk and result.team_address == DESK
    await deliver_all(svc)
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    # still open, with the desk; team A's hop says it declined; the deadline was not reset
    assert status["state"] == "open" and status["team_address"] == DESK
    assert [(h["team_address"], h["outcome"]) for h in status["hops"]] == [
        (TEAM, "afgewezen"),
        (DESK, ""),
    ]
    assert status["answer_due"] == due
    [detail] = _pass_on_details(svc, sent.reference)
    assert detail.startswith("declined; to passing-on desk automatically; from=" + TEAM)
    # the practice is told: declined, and where it went (no patient data in the notice)
    [notice] = _queued_notices(svc, "declined_to_desk")
    text = message_from_bytes(notice, policy=default).get_body().get_content()  # type: ignore[union-attr]
    assert "doorbemiddelingspunt" in text and "termijn loopt door" in text
    assert "Wijkteam" in text and BSN not in text and BSN.encode() not in notice
    assert not _queued_notices(svc, "answered")
    delivered = [
        raw
        for raw in _delivered_to(smtp_server, "praktijk@praktijk.example")
        if b"X-Securemail-Notice: declined_to_desk" in raw
    ]
    assert len(delivered) == 1  # through the SMTP edge's word-for-word check
    # the desk's own gpg opens it and verifies the GP's signature over the order
    [raw] = _delivered_to(smtp_server, DESK)
    opened = _gpg(loop.team_b_home, "--decrypt", data=raw)
    assert opened.returncode == 0, opened.stderr.decode()
    gp_fpr = svc.store.read_sync(lambda db: exchange.require_row(db, sent.reference))[
        "signer_fingerprint"
    ]
    status_desk, _ = verify_order(loop.team_b_home, opened.stdout)
    assert f"[GNUPG:] VALIDSIG {gp_fpr}" in status_desk
    # team A can no longer answer it (it is not with team A: hidden); the desk can
    with pytest.raises(NotFoundError):
        await answer.record_answer(
            svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "nogmaals"}
        )
    await answer.record_answer(
        svc, desk_nurse, sent.reference,
        {"status": "doorbemiddeld", "reason": "Oost heeft plek", "passed_to": OOST},
    )  # fmt: skip
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert [h["team_address"] for h in status["hops"]] == [TEAM, DESK, OOST]


async def test_the_desk_declining_is_the_answer(loop: Loop, smtp_server: object) -> None:
    desk_nurse = _desk_and_oost(loop)
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    await answer.record_answer(
        svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "Vol"}
    )
    await deliver_all(svc)
    result = await answer.record_answer(
        svc, desk_nurse, sent.reference, {"status": "afgewezen", "reason": "Niemand vrij"}
    )
    assert not result.to_desk
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert (status["state"], status["answer_status"]) == ("answered", "afgewezen")
    assert len(_queued_notices(svc, "answered")) == 1


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_decline_stands_when_the_desk_may_not_have_it(
    loop: Loop, smtp_server: object, policy: str
) -> None:
    _desk_and_oost(loop)
    _policy(loop, policy)
    if policy == "direct_care":
        _object(loop, org_code="55555555")  # the patient objected to the desk's organisation
    # explicit: no permit recorded for the desk
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    result = await answer.record_answer(
        svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "Vol"}
    )
    assert not result.to_desk and result.team_address == TEAM
    await deliver_all(svc)
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert (status["state"], status["answer_status"]) == ("answered", "afgewezen")
    assert not _delivered_to(smtp_server, DESK)
    assert len(_queued_notices(svc, "answered")) == 1
    assert not _pass_on_details(svc, sent.reference)


async def test_a_decline_stands_when_the_gateway_cannot_seal_for_the_desk(
    loop: Loop, smtp_server: object
) -> None:
    """A gateway without its own key cannot pass on; the team's decline still lands."""
    _desk_and_oost(loop)
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(svc)
    svc.store.write_sync(lambda db: set_meta(db, "gateway_fingerprint", ""))
    result = await answer.record_answer(
        svc, loop.nurse_a, sent.reference, {"status": "afgewezen", "reason": "Vol"}
    )
    assert not result.to_desk
    status = svc.store.read_sync(lambda db: exchange.status(db, sent.reference))
    assert (status["state"], status["answer_status"]) == ("answered", "afgewezen")
    assert len(_queued_notices(svc, "answered")) == 1
