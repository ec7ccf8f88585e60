"""Outcomes a practice must hear about, end to end: a permanent refusal by the relay, gpg
dying while sealing, and a consent withdrawn while the request waits for a relay that is
down. In each case no byte of patient data reaches the relay in the clear."""

from __future__ import annotations

import email
import os
import stat
from email import policy
from pathlib import Path
from typing import Any

import pytest

from securemail import consent
from securemail.errors import SecuremailError
from securemail.exchange import send as exchange
from securemail.openpgp.keyring import Keyring
from securemail.region import directory
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    TEAM,
    build_gateway,
    deliver_all,
    example,
)

MARKERS = [
    EXAMPLE["patient"]["bsn"].encode(),
    EXAMPLE["patient"]["name"].encode(),
    EXAMPLE["patient"]["birth_date"].encode(),
]


def smtp_settings(relay: Any, cafile: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": relay.port, "cafile": cafile, "timeout_seconds": 5.0}


def notices(relay: Any) -> list[email.message.EmailMessage]:
    """The notices the relay got (multipart/signed by the gateway, never encrypted)."""
    out = []
    for raw in relay.handler.mailbox().values():
        msg = email.message_from_bytes(raw, policy=policy.default)
        if msg["X-Securemail-Notice"] and msg.get_content_type() == "multipart/signed":
            out.append(msg)
    return out


def text(notice: email.message.EmailMessage) -> str:
    body = notice.get_body(preferencelist=("plain",))
    assert isinstance(body, email.message.EmailMessage)
    return str(body.get_content())


async def test_relay_5xx_fails_once_and_tells_the_practice_once(
    tmp_path: Path, team_member_keys: Any, relay_factory: Any, relay_cafile: str
) -> None:
    relay = relay_factory("starttls")
    relay.handler.replies.append("550 5.7.1 Recipient refused")
    gw = await build_gateway(team_keys=team_member_keys, smtp=smtp_settings(relay, relay_cafile))
    try:
        result = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
        await deliver_all(gw.svc)
        info = gw.svc.store.read_sync(lambda db: exchange.status(db, result.reference))
        [delivery] = [d for d in info["delivery"] if d["kind"] == "request"]
        assert delivery["status"] == "failed"
        assert delivery["attempts"] == 1
        sealed_attempts = [
            r
            for r in relay.handler.snapshot()
            if "multipart/encrypted" in r.content.decode("ascii", "replace")
        ]
        assert len(sealed_attempts) == 1  # no further attempts after a 5xx
        [notice] = notices(relay)
        assert notice["To"] == "praktijk@praktijk.example"
        assert result.reference in notice["Subject"]
        for marker in MARKERS:
            assert marker not in bytes(relay.received)
    finally:
        gw.svc.close()


async def test_gpg_dying_while_sealing_refuses_and_sends_nothing(
    tmp_path: Path, team_member_keys: Any, smtp_server: Any, relay_cafile: str
) -> None:
    gw = await build_gateway(
        team_keys=team_member_keys, smtp=smtp_settings(smtp_server, relay_cafile)
    )
    try:
        # A gpg that works for listing keys but is killed the moment it is asked to sign.
        fake = gw.home / "gpg-dies"
        fake.write_text(
            "#!/bin/sh\n"
            'for a in "$@"; do case "$a" in --sign|-s|--detach-sign|-b) kill -9 $$;; esac; done\n'
            'exec gpg "$@"\n',
            encoding="utf-8",
        )
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        gw.svc.keyring = Keyring(gw.svc.settings.gnupg_home, binary=str(fake), timeout=20)
        with pytest.raises(SecuremailError) as info:
            await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
        assert info.value.code.startswith("seal.")
        for marker in MARKERS:
            assert marker.decode() not in info.value.diagnostics()
        assert gw.svc.store.read_sync(lambda db: db["outbox"].count) == 0
        refused = gw.svc.store.read_sync(
            lambda db: db.execute(
                "SELECT outcome_detail FROM audit_events WHERE event_code = 'request.send'"
            ).fetchall()
        )
        assert refused == [(info.value.code,)]
        assert smtp_server.handler.snapshot() == []
        assert os.path.exists(fake)
    finally:
        gw.svc.close()


async def test_withdrawal_stops_a_queued_request_before_it_leaves(
    tmp_path: Path, team_member_keys: Any, relay_factory: Any, relay_cafile: str
) -> None:
    # Given the relay is down and a request is queued
    relay = relay_factory("starttls", start=False)
    gw = await build_gateway(team_keys=team_member_keys, smtp=smtp_settings(relay, relay_cafile))
    try:
        result = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
        await deliver_all(gw.svc, timeout=1.5)  # attempts fail: connection refused, retry later
        # When the patient withdraws consent for the team
        now = gw.svc.now()

        def withdraw(db: Any) -> Any:
            team = directory.team_by_address(db, TEAM)
            return consent.withdraw(
                db,
                gw.gp,
                patient_bsn=EXAMPLE["patient"]["bsn"],
                source_org_id=gw.gp.org_id,
                recipient=consent.Recipient(team_id=team.id),
                channel="phone",
                reason="patient belde",
                now=now,
                stop_pending=exchange.stop_for_consent,
            )

        outcome = gw.svc.store.write_sync(withdraw)
        assert outcome.stopped == (result.reference,)
        # Then, with the relay back, the request never leaves; the practice is told why
        relay.start()
        await deliver_all(gw.svc)
        info = gw.svc.store.read_sync(lambda db: exchange.status(db, result.reference))
        assert info["delivery"][0]["status"] == "stopped"
        assert info["delivery"][0]["stop_reason"] == consent.STOP_REASON
        assert not any(  # nothing of the stopped request left
            m.get_content_type() == "multipart/encrypted"
            for m in (
                email.message_from_bytes(r, policy=policy.default)
                for r in relay.handler.mailbox().values()
            )
        )
        [notice] = notices(relay)
        assert "toestemming" in text(notice)
        stops = gw.svc.store.read_sync(
            lambda db: db.execute(
                "SELECT object_id, outcome_detail FROM audit_events WHERE event_code = "
                "'request.stop'"
            ).fetchall()
        )
        assert stops and stops[0][0] == result.reference
    finally:
        gw.svc.close()
