"""Notices to the practice say what happened (issue 20): geaccepteerd or afgewezen and by which
team, doorgezet and to which team, SPOED flagged; never a patient's data, a nurse's name or the
team's free-text reason. The SMTP edge accepts exactly these and refuses a forged variant.

Real gateway (tests/loop_fixtures.py): real gpg, real sqlite, the outbox's queued notices.
"""

from __future__ import annotations

import email
from datetime import timedelta
from email.policy import SMTP

import pytest

from securemail.errors import InputError
from securemail.exchange import answer
from securemail.exchange import send as exchange
from securemail.message import notify
from tests.clock import real_now
from tests.gateway import EXAMPLE, GP_PASSPHRASE, example
from tests.loop_fixtures import Loop, notices

ACCEPT = {
    "status": "geaccepteerd",
    "nurse_in_charge": "Verpleegkundige Zwaan",
    "nurse_phone": "06 12345678",
    # the planned first visit (no clock compares it): a month from the real today
    "care_start": (real_now() + timedelta(days=30)).strftime("%Y-%m-%dT09:00"),
    "performer_level": "verpleegkundige",
    "competence_confirmed": True,
}
DECLINE = {"status": "afgewezen", "reason": "Geen capaciteit voor mevrouw in de wijk"}
SECRETS = (
    "Zwaan",
    "Nurse One",
    "capaciteit",
    EXAMPLE["patient"]["bsn"],
    EXAMPLE["patient"]["name"],
)


def _parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=SMTP)  # type: ignore[return-value]


async def test_accepted_urgent_says_so_and_by_which_team(loop: Loop) -> None:
    svc = loop.gw.svc
    data = example()
    data["urgency"] = "spoed"
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, ACCEPT)
    [raw] = notices(svc, "answered")
    notify.require_notice_mime(raw, svc.settings)  # what the SMTP edge lets through
    msg = _parsed(raw)
    assert msg["Subject"] == f"securemail: {sent.reference} SPOED geaccepteerd"
    body = msg.get_content()
    team = svc.store.read_sync(
        lambda db: db.execute(
            "SELECT t.name FROM requests r JOIN teams t ON t.id = r.team_id WHERE reference = ?",
            [sent.reference],
        ).fetchone()[0]
    )
    assert f"{team} heeft uw verzoek {sent.reference} geaccepteerd" in body
    assert "SPOED" in body
    for secret in SECRETS:
        assert secret.encode() not in raw


async def test_declined_says_afgewezen_without_the_reason(loop: Loop) -> None:
    svc = loop.gw.svc
    sent = await exchange.send(svc, loop.gw.gp, example(), GP_PASSPHRASE)
    await answer.record_answer(svc, loop.nurse_a, sent.reference, DECLINE)
    [raw] = notices(svc, "answered")
    notify.require_notice_mime(raw, svc.settings)
    msg = _parsed(raw)
    assert msg["Subject"] == f"securemail: {sent.reference} afgewezen"
    assert "afgewezen" in msg.get_content() and "SPOED" not in msg.get_content()
    for secret in SECRETS:
        assert secret.encode() not in raw


def test_the_edge_refuses_a_notice_with_words_of_its_own(loop: Loop) -> None:
    settings = loop.gw.svc.settings
    real = notify.notice_answered(
        "UVZ-2026-000001", "praktijk@example.nl", settings, outcome="geaccepteerd", team="Oost"
    )
    notify.require_notice_mime(real.mime, settings)
    for forged in (
        real.mime.replace(b"X-Securemail-Team: Oost", b"X-Securemail-Team: J. de Vries"),
        real.mime.replace(b"geaccepteerd", b"afgewezen", 1),
        real.mime.replace(b"X-Securemail-Outcome: geaccepteerd", b"X-Securemail-Outcome: x"),
    ):
        assert forged != real.mime
        with pytest.raises(InputError):
            notify.require_notice_mime(forged, settings)
    # a team name that does not fit a notice is left out, never an error for the answer
    odd = notify.notice_answered(
        "UVZ-2026-000001", "praktijk@example.nl", settings, outcome="afgewezen", team="<b>x</b>"
    )
    assert b"<b>" not in odd.mime and b"Het wijkteam heeft" in odd.mime
