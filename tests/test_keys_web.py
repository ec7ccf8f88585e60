"""The admin page shows key foresight and releases a quarantined key with the phone code
(POST with CSRF, admin only); nurses fetch the GPs' public keys from the directory page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.accounts import auth, session
from securemail.keys import gp as gpkeys
from securemail.keys import pinning as keydir
from securemail.openpgp.keyinfo import phone_code
from securemail.region import directory
from securemail.services import Services
from securemail.web import create_app
from tests.conftest import GpgTestKey
from tests.e2e.webflow import csrf_of
from tests.keyhelpers import TEAM, drop_home, make_home, member, write_manifest

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def keys(gpg_keygen: Callable[..., GpgTestKey]) -> dict[str, GpgTestKey]:
    return {
        "old": gpg_keygen("Een", "een@zorg-noord.example"),
        "new": gpg_keygen("Een", "een@zorg-noord.example"),
        "five_days": gpg_keygen("Vijf", "vijf@zorg-noord.example", expire="5d"),
    }


@pytest.fixture
async def svc(tmp_path: Path, keys: dict[str, GpgTestKey]) -> AsyncIterator[Services]:
    s = make_home()
    folder = tmp_path / "keys"
    five = member(keys["five_days"], "Vijf")
    write_manifest(
        folder, {TEAM: [member(keys["old"], "Een"), five]}, [keys["old"], keys["five_days"]]
    )
    await keydir.sync(s, folder, SYSTEM)
    write_manifest(
        folder, {TEAM: [member(keys["new"], "Een"), five]}, [keys["new"], keys["five_days"]]
    )
    await keydir.sync(s, folder, SYSTEM)  # Een's new key: quarantined

    def people(db: Any) -> None:
        directory.add_org(db, SYSTEM, code="01234567", kind="practice", name="Praktijk", now="-")
        auth.add_user(
            db,
            SYSTEM,
            username="beheer",
            name="B. Heerder",
            role="admin",
            org_code=None,
            password=PASSWORD,
            now="-",
        )
        auth.add_user(
            db,
            SYSTEM,
            username="nurse",
            name="N. Urse",
            role="nurse",
            org_code="87654321",
            password=PASSWORD,
            teams=[TEAM],
            now="-",
        )
        auth.add_user(
            db,
            SYSTEM,
            username="huisarts",
            name="A. Huisarts",
            role="gp",
            org_code="01234567",
            password=PASSWORD,
            profile={"big": "19012345601"},
            now="-",
        )

    await s.store.write(people)
    gp = await s.store.read(lambda db: auth.user_by_name(db, "huisarts"))
    await gpkeys.enrol(s, SYSTEM, gp, "wachtzin van de huisarts")
    yield s
    drop_home(s)


def cookie_for(svc: Services, username: str) -> dict[str, str]:
    """A full session made directly, as after password and second factor."""
    uid = svc.store.read_sync(lambda db: auth.user_by_name(db, username).id)
    sid, _ = svc.store.write_sync(lambda db: session.create(db, uid, now=svc.now()))
    return {"Cookie": f"{session.COOKIE}={sid}"}


@pytest.fixture
async def client(svc: Services, aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_app(svc.settings, services=svc, run_worker=False))


def status_of(svc: Services, fpr: str) -> str:
    return svc.store.read_sync(
        lambda db: db.execute(
            "SELECT status FROM team_members WHERE fingerprint = ?", [fpr]
        ).fetchone()[0]
    )


async def test_admin_page_shows_foresight_and_confirms_a_changed_key_by_phone_code(
    client: Any, svc: Services, keys: dict[str, GpgTestKey]
) -> None:
    admin = cookie_for(svc, "beheer")
    async with client.get("/admin/keys", headers=admin) as r:
        page = await r.text()
    assert r.status == 200
    assert keys["five_days"].fingerprint in page  # expiring within 7 days
    assert "Binnen 7 dagen: 1" in page
    assert f"Wijkteam {TEAM} heeft over 7 dagen geen bruikbare sleutel meer" in page
    assert f'name="fingerprint" value="{keys["new"].fingerprint}"' in page
    fields = {"email": keys["new"].email, "fingerprint": keys["new"].fingerprint}
    # Without the CSRF token: refused, and nothing changes
    async with client.post("/admin/keys/confirm", data={**fields, "code": "x"}, headers=admin) as r:
        assert r.status == 403
    assert status_of(svc, keys["new"].fingerprint) == "quarantined"
    # A wrong code: shown, audited, key stays quarantined
    token = csrf_of(page)
    wrong = {**fields, "code": phone_code(keys["old"].fingerprint), "csrf_token": token}
    async with client.post("/admin/keys/confirm", data=wrong, headers=admin) as r:
        assert r.status == 422
        assert "De code klopt niet" in await r.text()
    assert status_of(svc, keys["new"].fingerprint) == "quarantined"
    right = {**fields, "code": phone_code(keys["new"].fingerprint), "csrf_token": token}
    async with client.post("/admin/keys/confirm", data=right, headers=admin) as r:
        assert r.status == 200 and str(r.url).endswith("/admin/keys")
    assert status_of(svc, keys["new"].fingerprint) == "active"


async def test_only_admins_see_the_admin_page_and_nurses_fetch_gp_keys(
    client: Any, svc: Services
) -> None:
    nurse = cookie_for(svc, "nurse")
    async with client.get("/admin/keys", headers=nurse) as r:
        assert r.status == 403
    async with client.get("/directory/gp-keys", headers=nurse) as r:
        page = await r.text()
    gp_fpr = svc.store.read_sync(lambda db: auth.user_by_name(db, "huisarts").signing_fingerprint)
    assert r.status == 200 and gp_fpr in page
    async with client.get("/directory/gp-keys.asc", headers=nurse) as r:
        body = await r.text()
    assert r.status == 200 and body.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    async with client.get("/directory/gp-keys.asc", headers=cookie_for(svc, "beheer")) as r:
        assert r.status == 403
