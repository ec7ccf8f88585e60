"""A team with one expired member key still receives: the request is encrypted to the other
members only, the nurse opens it, and the GP is told (CLI warning, request page) which
member was left out and why."""

from __future__ import annotations

import email
from collections.abc import Callable
from email import policy
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM
from securemail.accounts import auth, session
from securemail.message import armor
from securemail.region import directory
from securemail.web import create_app
from tests.conftest import GpgTestKey
from tests.e2e.test_send_path import cli_send
from tests.gateway import TEAM, Gateway, example


async def pin_expired_member(gw: Gateway, gpg_keygen: Callable[..., GpgTestKey]) -> str:
    expired = gpg_keygen(
        "Verlopen Lid", "verlopen@zorg-noord.example", expire="1y", faked_time="20200101T000000!"
    )
    await gw.svc.keyring.import_keys(expired.public)
    gw.svc.store.write_sync(
        lambda db: directory.add_member(
            db,
            SYSTEM,
            team_address=TEAM,
            name="Verlopen Lid",
            email=expired.email,
            fingerprint=expired.fingerprint,
            now=gw.svc.now_iso(),
        )
    )
    return expired.fingerprint


async def test_team_with_an_expired_member_key_receives_encrypted_to_the_others_only(
    gw: Gateway, gpg_keygen: Callable[..., GpgTestKey], tmp_path: Path, aiohttp_client: Any
) -> None:
    # Given a team with two good member keys and one that expired years ago
    expired = await pin_expired_member(gw, gpg_keygen)
    gw.svc.store.close()
    # When the GP sends a request to the team
    proc = cli_send(gw, tmp_path, example())
    # Then it is queued, and the GP is warned which member was left out
    assert proc.returncode == 0, proc.stderr
    reference = proc.stdout.splitlines()[0]
    assert f"warning: member Verlopen Lid left out (expired, key {expired})" in proc.stdout
    from securemail import config
    from securemail.home import open_services

    gw.svc = open_services(config.load(gw.home))
    raw = gw.svc.store.read_sync(
        lambda db: db.execute("SELECT mime FROM outbox WHERE kind = 'request'").fetchone()[0]
    )
    # And it is encrypted to the good members' encryption subkeys, not to the expired key
    outer = email.message_from_bytes(raw, policy=policy.default)
    ciphertext = outer.get_payload()[1].get_payload()
    wanted = set()
    for fpr in gw.member_fingerprints:
        info = await gw.svc.keyring.key_info(fpr)
        wanted |= {s[-16:] for s in info.encryption_subkeys}
    assert set(armor.encrypted_to(ciphertext)) == wanted
    dead = await gw.svc.keyring.key_info(expired)
    assert not {s.key_id for s in dead.subkeys} & set(armor.encrypted_to(ciphertext))
    assert gw.decrypt_as_nurse(raw).returncode == 0
    # And the request page shows the keys it went to and the member left out, in Dutch
    uid = gw.svc.store.read_sync(lambda db: auth.user_by_name(db, "huisarts").id)
    sid, _ = gw.svc.store.write_sync(lambda db: session.create(db, uid, now=gw.svc.now()))
    client = await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))
    async with client.get(
        f"/requests/{reference}", headers={"Cookie": f"{session.COOKIE}={sid}"}
    ) as r:
        page = await r.text()
    assert r.status == 200
    assert all(f in page for f in gw.member_fingerprints)
    assert f'Verlopen Lid: sleutel <span class="fpr">{expired}</span> is verlopen' in page
