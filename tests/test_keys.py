"""Key checks, foresight, GP signing keys and WKD discovery, with real keys made in the test:
every refusal names its reason, `keys check` sees a key that expires in 5 days, a GP's
revoked key still verifies old signatures, and a WKD lookup proposes without pinning."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.cli import main
from securemail.errors import NotFoundError
from securemail.exchange import send as exchange
from securemail.keys import foresight as keycheck
from securemail.keys import gp as gpkeys
from securemail.keys import pinning as keydir
from securemail.keys import wkd
from securemail.message import notify
from securemail.openpgp.keyinfo import phone_code
from securemail.openpgp.keyring import RecipientKeyError, SigningError
from securemail.region import directory
from securemail.services import Services
from tests.conftest import GpgTestKey, run_gpg
from tests.keyhelpers import TEAM, TEAM2, drop_home, make_home, member, write_manifest

GP_PASSPHRASE = "eerste wachtzin van de huisarts"
PAST = "20200101T000000!"  # gpg --faked-system-time: keys made then, valid one year


@pytest.fixture(scope="module")
def keys(
    gpg_keygen: Callable[..., GpgTestKey], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, GpgTestKey]:
    revoked = gpg_keygen("Ingetrokken", "ingetrokken@zorg-noord.example")
    # As a directory publishes a revoked key: the certificate with its revocation in it
    home = tmp_path_factory.mktemp("revg")
    home.chmod(0o700)
    run_gpg(home, "--import", input=(revoked.public + revoked.revocation).encode())
    published = run_gpg(home, "--armor", "--export", revoked.fingerprint).stdout.decode()
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    return {
        "good": gpg_keygen("Goed", "goed@zorg-noord.example"),
        "good_new": gpg_keygen("Goed", "goed@zorg-noord.example"),
        "expired": gpg_keygen(
            "Verlopen", "verlopen@zorg-noord.example", expire="1y", faked_time=PAST
        ),
        "revoked": dataclasses.replace(revoked, public=published),
        "signing_only": gpg_keygen("Alleen tekenen", "teken@zorg-noord.example", subkey=None),
        "rsa2048": gpg_keygen("Zwak", "zwak@zorg-noord.example", algo="rsa2048", subkey="rsa2048"),
        "other_address": gpg_keygen("Ander adres", "iemand@elders.example"),
        "five_days": gpg_keygen("Vijf dagen", "vijf@zorg-noord.example", expire="5d"),
    }


@pytest.fixture
async def svc() -> AsyncIterator[Services]:
    s = make_home(admin_address="beheer@gateway.example")
    yield s
    drop_home(s)


def codes(svc: Services) -> list[str]:
    return svc.store.read_sync(
        lambda db: [r[0] for r in db.execute("SELECT event_code FROM audit_events ORDER BY seq")]
    )


async def test_each_bad_member_key_is_refused_with_its_reason_and_the_team_still_receives(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    # Given a team whose reviewed manifest pins one good key and one of each bad kind
    bad = {
        "expired": "expired",
        "revoked": "revoked",
        "signing_only": "no_encryption_subkey",
        "rsa2048": "too_weak",
        "other_address": "address_mismatch",
    }
    members = [member(keys[k], k) for k in ("good", *bad) if k != "other_address"]
    members.append(member(keys["other_address"], "other_address", "ander@zorg-noord.example"))
    folder = write_manifest(tmp_path, {TEAM: members}, [keys[k] for k in ("good", *bad)])
    report = await keydir.sync(svc, folder, SYSTEM)
    assert len(report.warnings) == len(bad)  # the sync says so too
    # When the gateway picks the recipients for a request to the team
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    recipients, skipped = await exchange.usable_recipients(svc, team)
    # Then only the good key is used, and each left-out member is named with the reason
    assert recipients == [keys["good"].fingerprint]
    assert {s["name"]: s["why"] for s in skipped} == bad
    for name, why in bad.items():
        with pytest.raises(RecipientKeyError) as exc:
            await keydir.require_pinned(svc, team, keys[name].fingerprint, svc.now())
        assert exc.value.context["why"] == why, name


async def test_keys_check_reports_a_key_expiring_in_5_days_and_the_team_at_risk(
    svc: Services, tmp_path: Path, keys: dict[str, GpgTestKey]
) -> None:
    folder = write_manifest(
        tmp_path,
        {TEAM: [member(keys["five_days"], "Vijf")], TEAM2: [member(keys["good"], "Goed")]},
        [keys["five_days"], keys["good"]],
    )
    await keydir.sync(svc, folder, SYSTEM)
    foresight = await keycheck.foresee(svc)
    assert [k.fingerprint for k in foresight.expiring(7)] == [keys["five_days"].fingerprint]
    assert foresight.expiring(1) == [] and foresight.expiring(30) == []
    assert foresight.at_risk == (TEAM,) and not foresight.ok
    # Three days before the end the key moves to the 7-day bucket's neighbour: 1 day left
    later = await keycheck.foresee(svc, now=svc.now() + timedelta(days=4, hours=12))
    assert [k.fingerprint for k in later.expiring(1)] == [keys["five_days"].fingerprint]
    # The operator is told once a day, with no key details in the mail
    reference = await keycheck.notify_admin(svc, foresight)
    assert reference == keycheck.notice_reference(foresight.checked_at)
    assert await keycheck.notify_admin(svc, foresight) is None
    mime = svc.store.read_sync(lambda db: db.execute("SELECT mime FROM outbox").fetchone()[0])
    assert b"/admin" in mime and keys["five_days"].fingerprint.encode() not in mime
    notify.require_notice_mime(mime, svc.settings)  # what the SMTP edge accepts
    assert "notice.send" in codes(svc)


def test_cli_keys_sync_check_and_confirm(
    tmp_path: Path, keys: dict[str, GpgTestKey], capsys: pytest.CaptureFixture[str]
) -> None:
    svc = make_home()
    home = ["--home", str(svc.settings.home)]
    svc.close()
    try:
        folder = write_manifest(
            tmp_path / "keys", {TEAM: [member(keys["five_days"], "Vijf")]}, [keys["five_days"]]
        )
        assert main(["keys", "sync", str(folder), *home]) == 0
        assert "added" in capsys.readouterr().out
        assert main(["keys", "check", *home]) == 1  # the team's only key ends within 7 days
        out, err = capsys.readouterr()
        assert "expiring within 7 days: 1" in out and keys["five_days"].fingerprint in out
        assert f"AT RISK: team {TEAM}" in err
        assert main(["keys", "check", "--json", *home]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["expiring"]["7"] == [keys["five_days"].fingerprint]
        # A changed key for the same address: quarantined; confirmed only with the code
        changed = dict(member(keys["good"], "Vijf"), email=keys["five_days"].email)
        write_manifest(folder, {TEAM: [changed]}, [keys["good"]])
        assert main(["keys", "sync", str(folder), *home]) == 0
        assert "quarantined" in capsys.readouterr().out
        fpr = keys["good"].fingerprint
        confirm = ["keys", "confirm", keys["five_days"].email, fpr, *home]
        assert main([*confirm, "--code", "0000-0000-0000-0000"]) == 1
        assert "keys.code_mismatch" in capsys.readouterr().err
        assert main(["keys", "code", fpr]) == 0
        code = capsys.readouterr().out.strip()
        assert main([*confirm, "--code", code]) == 0
        assert "is now active" in capsys.readouterr().out
    finally:
        drop_home(svc)


async def add_gp(svc: Services) -> auth.User:
    def add(db: Any) -> auth.User:
        directory.add_org(db, SYSTEM, code="01234567", kind="practice", name="Praktijk", now="-")
        return auth.add_user(
            db,
            SYSTEM,
            username="huisarts",
            name="A. Huisarts",
            role="gp",
            org_code="01234567",
            password="correct horse battery staple",
            email="huisarts@praktijk.example",
            profile={"big": "19012345601"},
            now=svc.now_iso(),
        )

    user = await svc.store.write(add)
    await gpkeys.enrol(svc, SYSTEM, user, GP_PASSPHRASE)
    return await svc.store.read(lambda db: auth.user_by_name(db, "huisarts"))


def gpg_sign(svc: Services, fpr: str, passphrase: str, data: Path) -> Path:
    sig = data.with_suffix(".sig")
    run_gpg(
        svc.settings.gnupg_home,
        "--passphrase",
        passphrase,
        "--yes",
        "-u",
        fpr,
        "--detach-sign",
        "-o",
        str(sig),
        str(data),
    )
    return sig


async def test_gp_key_passphrase_change_revocation_and_replacement(
    svc: Services, tmp_path: Path
) -> None:
    gp = await add_gp(svc)
    old = gp.signing_fingerprint
    document = tmp_path / "verzoek.json"
    document.write_text('{"reference": "UVZ-2026-000001"}')
    signature = gpg_sign(svc, old, GP_PASSPHRASE, document)
    # Passphrase change: the GP gives the old one; a wrong old one is refused
    with pytest.raises(SigningError):
        await gpkeys.change_passphrase(svc, SYSTEM, gp, "niet de wachtzin", "nieuwe wachtzin 1")
    await gpkeys.change_passphrase(svc, SYSTEM, gp, GP_PASSPHRASE, "nieuwe wachtzin 1")
    # Compromised: revoked with that reason, and a replacement under a new passphrase
    result = await gpkeys.revoke(
        svc,
        SYSTEM,
        gp,
        reason="compromised",
        comment="laptop gestolen",
        passphrase="nieuwe wachtzin 1",
        new_passphrase="vervangende wachtzin",
    )
    assert result.revoked == old and result.replacement not in (None, old)
    assert (await svc.keyring.key_info(old)).revoked
    gp = await svc.store.read(lambda db: auth.user_by_name(db, "huisarts"))
    assert gp.signing_fingerprint == result.replacement
    assert [(k.fingerprint, k.status) for k in await svc.store.read(gpkeys.list_gp_keys)] == [
        (result.replacement, "active"),
        (old, "revoked"),
    ]
    # A nurse imports the GPs' keys from the directory: the old signature still verifies,
    # and gpg says the key was revoked
    armored, listed = await gpkeys.export_gp_keys(svc)
    assert len(listed) == 2 and "PRIVATE KEY" not in armored
    nurse = svc.settings.home / "nurse"
    nurse.mkdir(mode=0o700)
    run_gpg(nurse, "--import", input=armored.encode())
    out = run_gpg(nurse, "--verify", str(signature), str(document), check=False).stderr.decode()
    assert f"VALIDSIG {old}" in out and "REVKEYSIG" in out
    assert codes(svc).count("key.generate") == 2
    assert {"key.passphrase", "key.revoke"} <= set(codes(svc))


async def test_gp_who_left_is_revoked_with_the_stored_certificate(svc: Services) -> None:
    gp = await add_gp(svc)
    result = await gpkeys.revoke(svc, SYSTEM, gp, reason="retired")
    assert result.replacement is None
    assert (await svc.keyring.key_info(gp.signing_fingerprint)).revoked
    foresight = await keycheck.foresee(svc)
    assert [(k.kind, k.why) for k in foresight.keys] == [("gp", "revoked")]


# -- WKD ---------------------------------------------------------------------------------


class LoopbackResolver(AbstractResolver):
    """Names the test serves resolve to 127.0.0.1; any other is 'not found' (NXDOMAIN)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=2, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def wkd_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def wkd_server(wkd_ca: trustme.CA) -> AsyncIterator[dict[str, Any]]:
    """An HTTPS server on 127.0.0.1 answering for zorg-noord.example and its openpgpkey
    host; the test puts key bytes under a path."""
    served: dict[str, bytes] = {}
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        key = f"{request.host.split(':')[0]}{request.path}"
        seen.append(key)
        if key not in served:
            raise web.HTTPNotFound()
        return web.Response(body=served[key], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    cert = wkd_ca.issue_cert("zorg-noord.example", "openpgpkey.zorg-noord.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    client = ssl.create_default_context()
    wkd_ca.configure_trust(client)
    yield {"served": served, "seen": seen, "port": port, "ssl": client}
    await runner.cleanup()


def binary(key: GpgTestKey, home: Path) -> bytes:
    run_gpg(home, "--import", input=key.public.encode())
    return run_gpg(home, "--export", key.fingerprint).stdout


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("wkdg")
    home.chmod(0o700)
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def test_wkd_urls_follow_the_draft() -> None:
    # draft-koch-openpgp-webkey-service, section 3.1, example
    assert wkd.urls("Joe.Doe@Example.ORG")[0][1] == (
        "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/"
        "iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
    )


@pytest.mark.parametrize("subdomain", [True, False])
async def test_wkd_lookup_proposes_the_key_and_pins_nothing(
    svc: Services,
    wkd_server: dict[str, Any],
    keys: dict[str, GpgTestKey],
    scratch: Path,
    subdomain: bool,
) -> None:
    key = keys["good"]
    method, url = wkd.urls(key.email, port=wkd_server["port"])[0 if subdomain else 1]
    host_path = url.split("://", 1)[1].split("?")[0].replace(f":{wkd_server['port']}", "")
    wkd_server["served"][host_path] = binary(key, scratch)
    names = {"zorg-noord.example"} | ({"openpgpkey.zorg-noord.example"} if subdomain else set())
    proposal = await wkd.discover(
        key.email,
        port=wkd_server["port"],
        ssl_context=wkd_server["ssl"],
        resolver=LoopbackResolver(names),
    )
    assert (proposal.fingerprint, proposal.method) == (key.fingerprint, method)
    assert proposal.phone_code == phone_code(key.fingerprint)
    assert "PUBLIC KEY BLOCK" in proposal.armored
    # Nothing pinned, nothing in the gateway's keyring, nothing audited
    assert svc.store.read_sync(lambda db: db["team_members"].count) == 0
    with pytest.raises(NotFoundError):
        await svc.keyring.key_info(key.fingerprint)
    assert codes(svc) == []


async def test_wkd_refuses_a_key_without_the_address_and_an_untrusted_server(
    wkd_server: dict[str, Any], keys: dict[str, GpgTestKey], scratch: Path
) -> None:
    address = "goed@zorg-noord.example"
    url = wkd.urls(address, port=wkd_server["port"])[0][1]
    host_path = url.split("://", 1)[1].split("?")[0].replace(f":{wkd_server['port']}", "")
    wkd_server["served"][host_path] = binary(keys["other_address"], scratch)
    resolver = LoopbackResolver({"openpgpkey.zorg-noord.example", "zorg-noord.example"})
    with pytest.raises(wkd.DiscoveryError, match="0 with the address"):
        await wkd.discover(
            address, port=wkd_server["port"], ssl_context=wkd_server["ssl"], resolver=resolver
        )
    with pytest.raises(wkd.DiscoveryError, match="TLS certificate"):  # system trust only
        await wkd.discover(address, port=wkd_server["port"], resolver=resolver)


def test_cli_keys_import_pins_and_quarantines_and_refuses_secret_keys(
    tmp_path: Path, keys: dict[str, GpgTestKey], capsys: pytest.CaptureFixture[str]
) -> None:
    svc = make_home()
    home = ["--home", str(svc.settings.home)]
    svc.store.write_sync(
        lambda db: (
            directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="Zorg", now="-"),
            directory.add_team(db, SYSTEM, org_code="87654321", name="C", address=TEAM, now="-"),
        )
    )
    svc.close()
    try:
        first, second = tmp_path / "first.asc", tmp_path / "second.asc"
        first.write_text(keys["good"].public)
        assert main(["keys", "import", str(first), "--team", TEAM, *home]) == 0
        assert capsys.readouterr().out.startswith(f"added: {keys['good'].fingerprint}")
        # Same address, another key: held back until the phone code
        second.write_text(keys["good_new"].public)
        assert main(["keys", "import", str(second), "--team", TEAM, *home]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"quarantined: {keys['good_new'].fingerprint}")
        assert "securemail keys confirm goed@zorg-noord.example" in out
        secret = tmp_path / "secret.asc"
        secret.write_text(keys["good"].secret)
        assert main(["keys", "import", str(secret), "--team", TEAM, *home]) == 1
        assert "secret key material" in capsys.readouterr().err
    finally:
        drop_home(svc)


def test_cli_gp_passphrase_revoke_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = make_home()
    home = ["--home", str(svc.settings.home)]
    try:
        old_fpr = asyncio.run(add_gp(svc)).signing_fingerprint
        svc.close()
        texts = {"old": GP_PASSPHRASE, "new": "nieuwe wachtzin 1", "replacement": "vervang 123"}
        files = {name: tmp_path / name for name in texts}
        for name, text in texts.items():
            files[name].write_text(text + "\n")
        passwd = ["keys", "gp-passphrase", "--as", "huisarts", *home]
        assert (
            main([*passwd, "--old-file", str(files["old"]), "--new-file", str(files["new"])]) == 0
        )
        revoke = ["keys", "gp-revoke", "--user", "huisarts", "--reason", "superseded", *home]
        revoke += ["--passphrase-file", str(files["new"])]
        assert main([*revoke, "--new-passphrase-file", str(files["replacement"])]) == 0
        out = capsys.readouterr().out
        assert f"revoked {old_fpr} (superseded)" in out and "replacement signing key" in out
        export = tmp_path / "huisartsen.asc"
        assert main(["keys", "export-gp", "--output", str(export), *home]) == 0
        listing = capsys.readouterr().out
        assert f"huisarts {old_fpr} revoked" in listing and "2 GP key(s)" in listing
        assert export.read_text().count("BEGIN PGP PUBLIC KEY BLOCK") == 2  # no gateway key here
    finally:
        drop_home(svc)
