"""The one way tests build a gateway: a home on a short path (gpg-agent's socket), its
Services on the test's clock, and a cast of organisations, people, keys and consent.

``build_gateway`` is the builder; every fixture that needs a gateway (``gw`` in
tests/e2e/conftest.py, ``loop`` in tests/loop_fixtures.py, ``webapp`` and ``web_template``
in tests/conftest.py, the browser tests' ``site``, tests/keyhelpers.py ``make_home``) is a
thin call to it with options:

- ``cast``: who is in the home. ``"e2e"``: one practice with a GP (signing key enrolled),
  a nursing team whose member keys are pinned (``team_keys``; secret halves only in the
  'mail client' keyring ``Gateway.nurse_home``), nurse1, consent for the example patient.
  ``"web"``: the people of tests/auth_fixtures.py (two practices, two teams with a member
  key each, the GPs' signing keys, consents). ``"bare"``: nobody.
- ``teams``: further nursing teams (``Team``), each with its organisation, a nurse, a member
  key, consent, and its own mail client keyring (tests/loop_fixtures.py's team B);
  ``preferred``: the practice's preferred teams.
- ``clock``: everything recorded is dated by it from the first row on (tests/clock.py).
- ``smtp`` / ``overrides``: settings written into the home's config; ``replace``: settings
  replaced on the opened Services only (one test's web settings).
- ``gateway_key=False``: a lean home (migrations and an empty keyring; no gateway key,
  whose generation ``init_home`` pays for). Sync tests call ``lean_home``, the same step.
- ``template``: a folder holding a home built once (``make_template``, once per session),
  copied for each test, because scrypt and gpg key generation are slow by design.

Invariant: the secret halves of member keys never enter the gateway's keyring; every home is
a fresh short-pathed directory that ``close_gateway`` removes with its gpg-agents.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from securemail import config, demo
from securemail.access import SYSTEM, Actor, org_of, person
from securemail.accounts import auth
from securemail.delivery import worker as delivery
from securemail.exchange.send import Hooks
from securemail.home import MIGRATIONS, autocrypt_headers, init_home, notice_signer, open_services
from securemail.keys import pinning as keydir
from securemail.openpgp.keyring import Keyring
from securemail.region import directory
from securemail.services import Services, utcnow
from securemail.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "examples" / "uitvoeringsverzoek.json").read_text(encoding="utf-8"))
TEAM = "wijkteam-centrum@zorg-noord.example"
OTHER_TEAM = "wijkteam-zonder-sleutel@zorg-noord.example"
PRACTICE = "01234567"
GP_PASSWORD = "correct horse battery staple"
GP_PASSPHRASE = "signing passphrase of the GP"
NURSE_PASSWORD = "nurse password 12345"

#: The web cast: people of tests/auth_fixtures.py left without an authenticator, to walk
#: through first-time pairing; its teams (one member key each) and consents on record.
UNENROLLED = ("nurse_o",)
WEB_TEAMS = ("centrum@zorg.example", "oost@zorg.example")
WEB_CONSENTS = (
    ("gp_a", "centrum@zorg.example"),
    ("gp_a", "oost@zorg.example"),
    ("gp_b", "centrum@zorg.example"),
)
#: Settings of every e2e home: fixed addresses, quick retries against the test relay.
E2E_OVERRIDES: dict[str, dict[str, Any]] = {
    "gateway": {"from_address": "gateway@gateway.example", "base_url": "https://gateway.example"},
    "delivery": {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0, "poll_seconds": 0.05},
}

Cast = Literal["e2e", "web", "bare"]


@dataclass
class Gateway:
    home: Path
    svc: Services
    nurse_home: Path  # the team's mail client keyring (gpg --homedir) with the secret keys
    gp: Actor | None
    member_fingerprints: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def totp_secrets(self) -> dict[str, str]:
        """{username: TOTP secret} of everyone paired with an authenticator the test holds."""
        secrets: dict[str, str] = self.extra["totp_secrets"]
        return secrets

    def decrypt_as_nurse(self, raw: bytes) -> subprocess.CompletedProcess[bytes]:
        """What the nurse's mail client does: gpg --decrypt, reporting the signature."""
        return subprocess.run(
            ["gpg", "--homedir", str(self.nurse_home), "--batch", "--status-fd", "2", "--decrypt"],
            input=raw,
            capture_output=True,
            check=False,
            timeout=60,
        )


@dataclass(frozen=True)
class Team:
    """A further nursing team with its own organisation, one nurse, one member key (armor
    {'public', 'secret'}) and the cast GP's consent for the example patient; the secret half
    goes only to the team's mail client keyring ``home/<keyring>``
    (``Gateway.extra['team_homes'][address]``)."""

    address: str
    name: str
    org_code: str
    org_name: str
    keys: dict[str, str]
    member: tuple[str, str]  # (name, email) of the key's holder
    nurse: tuple[str, str, str]  # (username, name, password)
    keyring: str


# -- gpg outside the gateway: the mail clients' keyrings ----------------------------------------


def gpg_cli(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def kill_agents(*homes: Path) -> None:
    for gnupg in homes:
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "all"],
            check=False,
            capture_output=True,
            timeout=30,
        )


def make_member_key(
    home: Path,
    email: str,
    *,
    name: str = "Nurse",
    usage: str = "sign,cert",
    expire: str | None = "2y",
) -> str:
    """A member's key pair in the keyring at ``home`` (ed25519 + cv25519); its fingerprint.
    ``expire`` None leaves the primary key's expiry to gpg's default."""
    uid, expiry = f"{name} <{email}>", [expire] if expire else []
    gpg_cli(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", usage, *expiry)
    fpr = next(
        line.split(":")[9]
        for line in gpg_cli(home, "--with-colons", "--list-keys", email).decode().splitlines()
        if line.startswith("fpr:")
    )
    gpg_cli(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
    return fpr


def export_pair(home: Path) -> dict[str, str]:
    """Every key in ``home`` as armor: {'public': ..., 'secret': ...}."""
    return {
        "public": gpg_cli(home, "--armor", "--export").decode(),
        "secret": gpg_cli(
            home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor",
            "--export-secret-keys",
        ).decode(),
    }  # fmt: skip


def make_team_member_keys(home: Path) -> dict[str, str]:
    """Two nurses' key pairs in a new keyring at ``home``: {'public': armor, 'secret': armor}."""
    home.mkdir(mode=0o700)
    for email in ("nurse1@zorg-noord.example", "nurse2@zorg-noord.example"):
        make_member_key(home, email)
    keys = export_pair(home)
    kill_agents(home)  # a key-making home: nothing more runs in it
    return keys


def grant_consent(svc: Services, gp: Actor, bsn: str, team_address: str) -> None:
    svc.store.write_sync(
        lambda db: demo.record_team_consent(db, svc, gp, bsn, org_of(gp), team_address)
    )


def relay_settings(smtp_server: Any, relay_cafile: str) -> dict[str, Any]:
    """The [smtp] settings of a home that delivers to the test relay (tests/smtp_fixtures.py)."""
    return {
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "starttls": "required",
        "cafile": relay_cafile,
        "timeout_seconds": 5.0,
    }


# -- the builder -------------------------------------------------------------------------------


def scratch_dir(prefix: str = "sm-") -> Path:
    # gpg-agent's socket path must stay under ~100 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix))


def copy_template(template: Path, home: Path) -> Path:
    """A copy of make_template's home at ``home`` (for tests that need the files only, as
    the command line's tests; build_gateway(template=) opens one as a Gateway)."""
    # Sockets and locks of the template's (stopped) agents are not copied.
    shutil.copytree(
        template / "home", home, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"),
        dirs_exist_ok=True,
    )  # fmt: skip
    return home


def lean_home(home: Path | None = None, **gateway: Any) -> Services:
    """The builder's first step without a gateway key: migrations and an empty keyring under
    a short path, ``gateway`` settings replaced. Sync, for tests that are not coroutines."""
    home = home or scratch_dir("smk-")
    settings = config.load(home, env={})
    if gateway:
        settings = settings.replace(gateway=gateway)
    store = Store(settings.db_path)
    store.migrate(MIGRATIONS)
    store.close()
    Keyring.create(settings.gnupg_home)
    # Tests only: gpg-agent calibrates its passphrase hashing (S2K) to its own clock, which
    # takes seconds per key on a busy 2-core machine; production keeps gpg's calibration.
    with (settings.gnupg_home / "gpg-agent.conf").open("a", encoding="utf-8") as conf:
        conf.write("s2k-count 65536\n")
    return open_services(settings)


async def build_gateway(
    *,
    cast: Cast = "e2e",
    team_keys: dict[str, str] | None = None,
    teams: Sequence[Team] = (),
    preferred: Sequence[str] | None = None,
    smtp: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    replace: dict[str, dict[str, Any]] | None = None,
    clock: Callable[[], datetime] | None = None,
    gateway_key: bool = True,
    template: Path | None = None,
    home: Path | None = None,
) -> Gateway:
    """A gateway home with its cast, opened on ``clock`` (see the module docstring)."""
    if home is None:
        from tests.conftest import SCRATCH_HOMES

        home = scratch_dir()
        SCRATCH_HOMES.append(home)  # removed at session end should its test leave it behind
    if template is not None:
        return _from_template(template, home, clock, replace)
    if not gateway_key:
        svc = lean_home(home, **((replace or {}).get("gateway", {})))
        return Gateway(home, svc, home / "nurse-gnupg", None, [], {"totp_secrets": {}})
    written = {**E2E_OVERRIDES, **(overrides or {})} if cast == "e2e" else dict(overrides or {})
    if smtp is not None:
        written["smtp"] = smtp
    await init_home(home, overrides=written or None)
    svc = _open(home, clock, replace)
    if cast == "e2e":
        gw = await _cast_e2e(home, svc, team_keys)
    elif cast == "web":
        gw = await _cast_web(home, svc)
    else:
        gw = Gateway(home, svc, home / "nurse-gnupg", None, [], {"totp_secrets": {}})
    if preferred is not None:
        svc.store.write_sync(
            lambda db: directory.set_preferred(
                db, practice_code=PRACTICE, team_addresses=list(preferred)
            )
        )
    for team in teams:
        await _add_team(gw, team)
    return gw


def make_template(root: Path, **options: Any) -> dict[str, str]:
    """Build a home once into ``root/home`` (at the real time; its agents stopped afterwards)
    for ``build_gateway(template=root)`` to copy; returns {username: TOTP secret}."""

    async def build() -> dict[str, Any]:
        gw = await build_gateway(home=root / "home", **options)
        extra = {k: v for k, v in gw.extra.items() if k != "team_homes"}
        extra["gp"] = person(gw.gp).username if gw.gp is not None else None
        gw.svc.close()
        return extra

    (root / "home").mkdir(parents=True, exist_ok=True)
    extra = asyncio.run(build())
    (root / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    kill_agents(root / "home" / "gnupg")
    secrets: dict[str, str] = extra["totp_secrets"]
    return secrets


def close_gateway(gw: Gateway, *, services: bool = True) -> None:
    """Close the Services, stop every gpg-agent the home started, remove the home.
    ``services=False`` leaves the Services to the app that still runs on them (an aiohttp
    test client closes its app after the fixture that made the gateway)."""
    if services:
        gw.svc.close()
    homes = [gw.home / "gnupg", gw.nurse_home, *gw.extra.get("team_homes", {}).values()]
    kill_agents(*[Path(h) for h in homes if Path(h).is_dir()])
    shutil.rmtree(gw.home, ignore_errors=True)


def _from_template(
    template: Path,
    home: Path,
    clock: Callable[[], datetime] | None,
    replace: dict[str, dict[str, Any]] | None,
) -> Gateway:
    copy_template(template, home)
    extra = json.loads((template / "extra.json").read_text(encoding="utf-8"))
    svc = _open(home, clock, replace)
    gp = None
    if extra.get("gp"):
        gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, extra["gp"]))
    return Gateway(home, svc, home / "nurse-gnupg", gp, [], extra)


def _open(
    home: Path, clock: Callable[[], datetime] | None, replace: dict[str, dict[str, Any]] | None
) -> Services:
    settings = config.load(home)
    for section, values in (replace or {}).items():
        settings = settings.replace(**{section: values})
    return open_services(settings, clock=clock or utcnow)


def _pair(svc: Services, usernames: Sequence[str]) -> dict[str, str]:
    """Pair people with authenticators the tests hold: {username: TOTP secret}."""
    return {
        u: svc.store.write_sync(
            lambda db, u=u: auth.enrol_totp_for_demo(db, auth.user_by_name(db, u).id)
        )
        for u in usernames
    }


async def _import_gp_key(svc: Services, keyring: Path, username: str) -> None:
    """A mail client knows the GP's public key from the regional directory."""
    fpr = svc.store.read_sync(lambda db: auth.user_by_name(db, username).signing_fingerprint)
    assert fpr is not None, f"{username} has no signing key"
    gpg_cli(keyring, "--import", stdin=(await svc.keyring.export_public(fpr)).encode())


async def _cast_e2e(home: Path, svc: Services, team_keys: dict[str, str] | None) -> Gateway:
    from securemail.cli.directory import enrol_gp_key

    assert team_keys is not None, "the e2e cast needs team_keys (make_team_member_keys)"
    now = svc.now_iso()

    def dir_data(db: Any) -> None:
        directory.add_org(
            db, SYSTEM, code=PRACTICE, kind="practice", name="Praktijk Test",
            notify_address="praktijk@praktijk.example", now=now,
        )  # fmt: skip
        directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="Zorg Noord", now=now)
        directory.add_org(
            db, SYSTEM, code="11223344", kind="practice", name="Andere praktijk", now=now
        )
        directory.add_team(
            db, SYSTEM, org_code="87654321", name="Wijkteam Centrum", address=TEAM, now=now
        )
        directory.add_team(
            db, SYSTEM, org_code="87654321", name="Wijkteam zonder sleutel",
            address=OTHER_TEAM, now=now,
        )  # fmt: skip

    svc.store.write_sync(dir_data)
    team = svc.store.read_sync(lambda db: directory.team_by_address(db, TEAM))
    pinned = await keydir.import_and_pin(svc, SYSTEM, team, team_keys["public"])
    gp_user = svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="huisarts", name="A. Huisarts", role="gp", org_code=PRACTICE,
            password=GP_PASSWORD, email="huisarts@praktijk.example",
            profile={
                "big": "19012345601", "phone": "020-1234567",
                "out_of_hours_phone": "088-0030600",
            },
            now=now,
        )
    )  # fmt: skip
    await enrol_gp_key(svc, gp_user, GP_PASSPHRASE)
    svc.store.write_sync(
        lambda db: auth.add_user(
            db, SYSTEM, username="nurse1", name="Nurse One", role="nurse", org_code="87654321",
            password=NURSE_PASSWORD, teams=[TEAM], now=now,
        )
    )  # fmt: skip
    gp = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "huisarts"))
    grant_consent(svc, gp, EXAMPLE["patient"]["bsn"], TEAM)
    nurse_home = home / "nurse-gnupg"
    nurse_home.mkdir(mode=0o700)
    gpg_cli(nurse_home, "--import", stdin=team_keys["secret"].encode())
    await _import_gp_key(svc, nurse_home, "huisarts")
    # Every login needs a second factor: pair the people with authenticators the tests hold.
    totp_secrets = _pair(svc, ("huisarts", "nurse1"))
    fprs = [str(fpr) for fpr, _, _ in pinned]
    return Gateway(home, svc, nurse_home, gp, fprs, extra={"totp_secrets": totp_secrets})


async def _cast_web(home: Path, svc: Services) -> Gateway:
    """The people of tests/auth_fixtures.py; each web team a member key (secret half only in
    a scratch keyring, stopped and thrown away); the GPs' signing keys; the consents."""
    from securemail.cli.directory import enrol_gp_key
    from tests.auth_fixtures import PEOPLE, populate

    svc.store.write_sync(populate)
    team_gnupg = scratch_dir("smg-")
    try:
        now = svc.now_iso()
        for address in WEB_TEAMS:
            email = "member-" + address
            fpr = make_member_key(team_gnupg, email, name="Member")
            await svc.keyring.import_keys(gpg_cli(team_gnupg, "--armor", "--export", fpr).decode())
            svc.store.write_sync(
                lambda db, a=address, e=email, f=fpr: directory.add_member(
                    db, SYSTEM, team_address=a, name="Member", email=e, fingerprint=f, now=now
                )
            )
        for username in ("gp_a", "gp_b"):
            user = svc.store.read_sync(lambda db, u=username: auth.user_by_name(db, u))
            await enrol_gp_key(svc, user, GP_PASSPHRASE)
        for username, address in WEB_CONSENTS:
            gp = svc.store.read_sync(lambda db, u=username: auth.actor_for_cli(db, u))
            grant_consent(svc, gp, EXAMPLE["patient"]["bsn"], address)
    finally:
        kill_agents(team_gnupg)
        shutil.rmtree(team_gnupg, ignore_errors=True)
    secrets = _pair(svc, [u for u in PEOPLE if u not in UNENROLLED])
    gp_a = svc.store.read_sync(lambda db: auth.actor_for_cli(db, "gp_a"))
    return Gateway(home, svc, home / "nurse-gnupg", gp_a, [], {"totp_secrets": secrets})


async def _add_team(gw: Gateway, team: Team) -> None:
    """A further team beside the cast's: organisation, member key, nurse, consent by the
    cast's GP, and the team's mail client keyring (its secret key, the GP's and the
    gateway's public keys, as from the regional directory)."""
    from securemail.home import gateway_fingerprint

    gp = gw.gp
    assert gp is not None, "a further team needs the cast's GP"
    svc, now = gw.svc, gw.svc.now_iso()
    svc.store.write_sync(
        lambda db: (
            directory.add_org(
                db, SYSTEM, code=team.org_code, kind="nursing", name=team.org_name, now=now
            ),
            directory.add_team(
                db, SYSTEM, org_code=team.org_code, name=team.name, address=team.address,
                now=now,
            ),
        )
    )  # fmt: skip
    [fpr] = await svc.keyring.import_keys(team.keys["public"])
    username, name, password = team.nurse
    svc.store.write_sync(
        lambda db: (
            directory.add_member(
                db, SYSTEM, team_address=team.address, name=team.member[0],
                email=team.member[1], fingerprint=fpr, now=now,
            ),
            auth.add_user(
                db, SYSTEM, username=username, name=name, role="nurse",
                org_code=team.org_code, password=password, teams=[team.address], now=now,
            ),
        )
    )  # fmt: skip
    grant_consent(svc, gp, EXAMPLE["patient"]["bsn"], team.address)
    keyring = gw.home / team.keyring
    keyring.mkdir(mode=0o700)
    gpg_cli(keyring, "--import", stdin=team.keys["secret"].encode())
    await _import_gp_key(svc, keyring, person(gp).username)
    # ... and the gateway's key, which seals what it forwards (from the regional directory too)
    gw_fpr = gateway_fingerprint(svc.store)
    gpg_cli(keyring, "--import", stdin=(await svc.keyring.export_public(gw_fpr)).encode())
    gw.extra.setdefault("team_homes", {})[team.address] = keyring


# -- helpers of the tests that use a gateway ---------------------------------------------------


def example() -> dict[str, Any]:
    return json.loads(json.dumps(EXAMPLE))


def env_for_cli() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def request_send_cli(
    gw: Gateway,
    tmp_path: Path,
    *source: str,
    passphrase: str = GP_PASSPHRASE,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`securemail request send --home HOME --as huisarts SOURCE... --passphrase-file F` as
    a practice system runs it (``source``: ``--file PATH`` or ``--batch PATH|-`` and any
    further flags); the passphrase goes through a file in ``tmp_path``, never argv."""
    pass_file = tmp_path / "passphrase"
    pass_file.write_text(passphrase + "\n", encoding="utf-8")
    argv = [sys.executable, "-m", "securemail", "request", "send", "--home", str(gw.home),
            "--as", "huisarts", *source, "--passphrase-file", str(pass_file)]  # fmt: skip
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        env={**env_for_cli(), **(env or {})},
        timeout=timeout,
        check=False,
    )


async def deliver_all(
    svc: Services, timeout: float = 30.0, clock: Callable[[], datetime] | None = None
) -> None:
    """Run a real delivery worker (with the exchange's hooks) until nothing is due any more,
    on the gateway's clock (``svc.clock``, or ``clock`` when given): the outbox is stamped by
    it, so a worker on another clock would find nothing due, or stamp outcomes elsewhere."""
    hooks = Hooks(svc)
    clock = clock or svc.clock
    worker = delivery.Worker(
        svc.settings,
        svc.store,
        owner_id="test-worker",
        on_final=hooks.on_final,
        before_send=hooks.before_send,
        autocrypt=await autocrypt_headers(svc),
        sign_notice=notice_signer(svc),
        clock=lambda: clock().timestamp(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pending = await svc.store.read(
            lambda db: db.execute(
                "SELECT count(*) FROM outbox WHERE status NOT IN ('sent', 'failed', 'stopped', "
                "'cancelled') OR final_handled_at IS NULL"
            ).fetchone()[0]
        )
        if not pending:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
