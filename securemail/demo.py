"""The demo: a home with demo organisations, users, team keys and consents, a loopback SMTP
relay (aiosmtpd, STARTTLS required, certificate made at start) writing a Maildir, and the
web app.

Invariant: running it again on the same home duplicates nothing: setup is recorded in
the meta table and skipped when present; only the relay's certificate is new each start.
Secrets (passwords, the GP's signing passphrase, the team's secret keys) are made here at
run time and written only under H/demo/ (mode 0700), never into the repository.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import secrets
import ssl
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securemail import config, consent
from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.home import gateway_fingerprint, init_home, open_services
from securemail.keys import gp as gpkeys
from securemail.keys import practice as practicekeys
from securemail.openpgp.keyring import Keyring
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.services import Services
from securemail.store import get_meta, set_meta

PRACTICE = {
    "code": "01234567",
    "name": "Huisartsenpraktijk De Linde",
    "notify": "praktijk@delinde-demo.example",
}
NURSING = {"code": "87654321", "name": "Zorg Noord (demo)", "notify": "planning@zorg-noord.example"}
TEAM = {"name": "Wijkteam Centrum", "address": "wijkteam-centrum@zorg-noord.example"}
TEAM2 = {"name": "Wijkteam Oost", "address": "wijkteam-oost@zorg-noord.example"}
# The rest of the demo region (docs/region.md): a second practice, a provider with a night
# team covering the whole city, and the regional passing-on (doorbemiddeling) desk.
PRACTICE2 = {
    "code": "01234568",
    "name": "Huisartsenpraktijk Het Plein",
    "notify": "praktijk@hetplein-demo.example",
}
NURSING2 = {"code": "87654322", "name": "Stadszorg (demo)", "notify": "planning@stadszorg.example"}
TEAM3 = {"name": "Wijkteam West", "address": "wijkteam-west@stadszorg.example"}
NIGHT_TEAM = {"name": "Nachtteam Stad", "address": "nachtteam@stadszorg.example"}
PASSING_ON = {"name": "Regionale doorbemiddeling", "address": "doorbemiddeling@stadszorg.example"}
#: The teams' map entries; days_ago: when the entry was last confirmed (the night team's is
#: stale on purpose, Oost takes no new clients: a newcomer sees both signals).
REGION_ENTRIES: list[dict[str, Any]] = [
    {
        "team": TEAM["address"],
        "days_ago": 2,
        "phone": "020-5550101",
        "areas": "1011-1018",
        "capacity": "ja",
        "services": ["wondzorg", "palliatief_24_7"],
        "level5": True,
        "reach": ["kantoor", "avond", "weekend"],
    },
    {
        "team": TEAM2["address"],
        "days_ago": 5,
        "phone": "020-5550202",
        "areas": "1091-1098, 1015",
        "capacity": "nee",
        "services": ["longzorg", "casemanagement_dementie"],
        "level5": False,
        "reach": ["kantoor", "avond"],
    },
    {
        "team": TEAM3["address"],
        "days_ago": 10,
        "phone": "020-5550505",
        "areas": "1051-1059",
        "capacity": "ja",
        "services": ["wondzorg", "gespecialiseerd_team"],
        "level5": True,
        "reach": ["kantoor", "avond", "weekend"],
    },
    {
        "team": NIGHT_TEAM["address"],
        "days_ago": 45,
        "phone": "020-5550303",
        "areas": "1000-1109",
        "capacity": "beperkt",
        "services": ["nachtzorg", "palliatief_24_7"],
        "level5": True,
        "reach": ["nacht"],
    },
    {
        "team": PASSING_ON["address"],
        "days_ago": 1,
        "phone": "020-5550404",
        "areas": "1000-1109",
        "capacity": "ja",
        "services": [],
        "level5": False,
        "reach": ["kantoor", "avond", "nacht", "weekend"],
    },
]
#: The region whose coordinator reads the adherence figures (/regio/afspraken).
REGION = {"code": "99000001", "name": "Regio Zorg in de Wijk (demo)"}
EXAMPLE = config.PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json"


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def maildir(self) -> Path:
        return self.root / "maildir"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def team_secret(self) -> Path:
        return self.root / "team-secret.asc"

    @property
    def practice_secret(self) -> Path:
        return self.root / "practice-secret.asc"

    @property
    def public_keys(self) -> Path:
        return self.root / "public-keys.asc"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.pem"


def _password() -> str:
    return secrets.token_urlsafe(12)


def make_tls(dirpath: Path, hostname: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for the loopback relay: (ca, cert, key)."""
    dirpath.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securemail demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(hostname))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        dirpath / "ca.pem",
        dirpath / "server.pem",
        dirpath / "server.key",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


class DemoRelay(Mailbox):
    """Every message into the Maildir, except mail for the gateway's reply addresses: that
    goes on (STARTTLS) to the gateway's reply listener, whose answer (250, or a 5xx saying
    why) is the relay's answer, as a real domain's MX would route it."""

    def __init__(
        self, maildir: str, paths: DemoPaths, reply_addresses: frozenset[str], inbound_port: int
    ) -> None:
        super().__init__(Path(maildir))
        self.paths, self.reply_addresses, self.inbound_port = paths, reply_addresses, inbound_port

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        to_gateway = [a for a in envelope.rcpt_tos if a.lower() in self.reply_addresses]
        if not to_gateway:
            return str(await super().handle_DATA(server, session, envelope))
        import aiosmtplib

        try:
            _, reply = await aiosmtplib.send(
                envelope.original_content or b"",
                sender=envelope.mail_from,
                recipients=to_gateway,
                hostname="127.0.0.1",
                port=self.inbound_port,
                start_tls=True,
                tls_context=ssl.create_default_context(cafile=str(self.paths.ca)),
                timeout=60,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (OSError, aiosmtplib.SMTPException):
            return "451 4.4.1 reply listener not reachable"
        return f"250 {reply}"


def inbound_overrides(paths: DemoPaths, smtp_port: int) -> dict[str, Any]:
    """The demo's reply listener: on, next to the relay, with the relay's certificate."""
    tls = paths.root / "tls"
    return {
        "enabled": True,
        "port": smtp_port + 1,
        "certfile": str(tls / "server.pem"),
        "keyfile": str(tls / "server.key"),
    }


def start_relay(
    paths: DemoPaths,
    port: int,
    reply_addresses: frozenset[str] = frozenset(),
    inbound_port: int = 0,
) -> Controller:
    """The loopback relay: STARTTLS required, every message into the demo Maildir (replies
    to the gateway on to its listener)."""
    # aiosmtpd logs every connection at INFO; the demo's own lines are what a newcomer reads.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    _, cert, key = make_tls(paths.root / "tls")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    paths.maildir.parent.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        DemoRelay(str(paths.maildir), paths, reply_addresses, inbound_port),
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
    )
    controller.start()
    return controller


async def _team_keys(svc: Services, paths: DemoPaths, nurses: list[dict[str, str]]) -> None:
    """Generate the nurses' key pairs in a scratch keyring; publish and pin the public halves."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Keyring.create(Path(tmp) / "gnupg")
        ring = Keyring(Path(tmp) / "gnupg", binary=svc.settings.gpg.binary)
        del scratch
        fprs = []
        for n in nurses:
            fprs.append(await ring.generate_key(n["name"], n["email"], None, kind="both"))
        secret = "".join([await ring.export_secret(f, None) for f in fprs])
        public = "".join([await ring.export_public(f) for f in fprs])
    paths.team_secret.write_text(secret, encoding="utf-8")
    os.chmod(paths.team_secret, 0o600)
    # The gateway's own key too: nurses' replies are encrypted to it (its reply address).
    public += await svc.keyring.export_public(gateway_fingerprint(svc.store))
    paths.public_keys.write_text(public, encoding="utf-8")
    await svc.keyring.import_keys(public)
    now = svc.now_iso()
    for n, fpr in zip(nurses, fprs, strict=True):
        svc.store.write_sync(
            partial(
                directory.add_member,
                actor=SYSTEM,
                team_address=TEAM["address"],
                name=n["name"],
                email=n["email"],
                fingerprint=fpr,
                verified_how="demo: generated locally",
                now=now,
            )
        )


async def _practice_key(svc: Services, paths: DemoPaths) -> None:
    """The demo practice's own key pair (its mail client's): the public half pinned, so the
    team's signed answers land in the practice mailbox; the secret half in the demo folder."""
    with tempfile.TemporaryDirectory() as tmp:
        Keyring.create(Path(tmp) / "gnupg")
        ring = Keyring(Path(tmp) / "gnupg", binary=svc.settings.gpg.binary)
        fpr = await ring.generate_key(PRACTICE["name"], PRACTICE["notify"], None, kind="both")
        secret = await ring.export_secret(fpr, None)
        public = await ring.export_public(fpr)
    paths.practice_secret.write_text(secret, encoding="utf-8")
    os.chmod(paths.practice_secret, 0o600)
    await practicekeys.pin(svc, SYSTEM, PRACTICE["code"], public)


async def setup_demo(svc: Services, paths: DemoPaths) -> dict[str, Any]:
    """Create the demo data once; return the credentials document."""
    if svc.store.read_sync(lambda db: get_meta(db, "demo_setup")):
        stored: dict[str, Any] = json.loads(paths.credentials.read_text(encoding="utf-8"))
        return stored
    now = svc.now_iso()
    users: list[dict[str, str]] = []

    def directory_data(db: Any) -> None:
        directory.add_org(
            db,
            SYSTEM,
            code=PRACTICE["code"],
            kind="practice",
            name=PRACTICE["name"],
            notify_address=PRACTICE["notify"],
            now=now,
        )
        directory.add_org(
            db,
            SYSTEM,
            code=NURSING["code"],
            kind="nursing",
            name=NURSING["name"],
            notify_address=NURSING["notify"],
            now=now,
        )
        for t in (TEAM, TEAM2):
            directory.add_team(
                db, SYSTEM, org_code=NURSING["code"], name=t["name"], address=t["address"], now=now
            )
        directory.set_preferred(
            db, practice_code=PRACTICE["code"], team_addresses=[TEAM["address"], TEAM2["address"]]
        )

    svc.store.write_sync(directory_data)
    svc.store.write_sync(lambda db: _demo_region(db, svc))
    nurses = [
        {
            "username": "verpleegkundige1",
            "name": "Sanne Bakker",
            "email": "s.bakker@zorg-noord.example",
        },
        {
            "username": "verpleegkundige2",
            "name": "Mohamed El Amrani",
            "email": "m.elamrani@zorg-noord.example",
        },
    ]
    await _team_keys(svc, paths, nurses)
    await _practice_key(svc, paths)
    specs: list[dict[str, Any]] = [
        {
            "username": "huisarts",
            "name": "A. Huisarts",
            "role": "gp",
            "org": PRACTICE["code"],
            "email": "a.huisarts@delinde-demo.example",
            "profile": {
                "big": "19012345601",
                "agb": "01012345",
                "phone": "020-1234567",
                "out_of_hours_phone": "088-0030600",
            },
        },
        *[
            {
                "username": n["username"],
                "name": n["name"],
                "role": "nurse",
                "org": NURSING["code"],
                "email": n["email"],
                "teams": [TEAM["address"]],
            }
            for n in nurses
        ],
        {
            "username": "privacy",
            "name": "P. Rivacy",
            "role": "privacy_officer",
            "org": PRACTICE["code"],
        },
        {"username": "beheer", "name": "B. Heerder", "role": "admin", "org": None},
        {
            "username": "coordinator",
            "name": "R. Coördinator",
            "role": "coordinator",
            "org": REGION["code"],
        },
    ]
    svc.store.write_sync(
        lambda db: directory.add_org(
            db, SYSTEM, code=REGION["code"], kind="region", name=REGION["name"], now=now
        )
    )
    for spec in specs:
        password = _password()
        user = svc.store.write_sync(
            partial(
                auth.add_user,
                actor=SYSTEM,
                username=spec["username"],
                name=spec["name"],
                role=spec["role"],
                org_code=spec["org"],
                password=password,
                email=spec.get("email", ""),
                teams=spec.get("teams"),
                profile=spec.get("profile"),
                now=now,
            )
        )
        entry = {"username": user.username, "role": user.role, "password": password}
        # Demo accounts come paired with an authenticator (TOTP is required for every role);
        # the secret goes into the credentials file so a newcomer can make codes.
        entry["totp_secret"] = svc.store.write_sync(
            partial(auth.enrol_totp_for_demo, user_id=user.id)
        )
        if user.role == "gp":
            entry["signing_passphrase"] = secrets.token_urlsafe(12)
            # The keys room makes the GP's signing key (the domain never calls up into cli).
            fpr = await gpkeys.enrol(svc, SYSTEM, user, entry["signing_passphrase"])
            # Nurses verify the GP's signature with the key from the directory.
            with paths.public_keys.open("a", encoding="utf-8") as out:
                out.write(await svc.keyring.export_public(fpr))
        users.append(entry)
    _demo_consents(svc, now)
    creds = {
        "users": users,
        "team_address": TEAM["address"],
        "web": svc.settings.gateway.base_url,
        "maildir": str(paths.maildir),
        "team_secret_keys": str(paths.team_secret),
        "practice_secret_key": str(paths.practice_secret),
    }
    paths.credentials.write_text(json.dumps(creds, indent=2), encoding="utf-8")
    os.chmod(paths.credentials, 0o600)
    svc.store.write_sync(lambda db: set_meta(db, "demo_setup", now))
    return creds


def _demo_region(db: Any, svc: Services) -> None:
    """The demo's regional map: a second practice, a third day team, the night team covering
    the whole city and the passing-on desk,
    the teams' entries, the practices' entries and the contact nurses."""
    now = svc.now_iso()
    for org, kind in ((PRACTICE2, "practice"), (NURSING2, "nursing")):
        directory.add_org(
            db,
            SYSTEM,
            code=org["code"],
            kind=kind,
            name=org["name"],
            notify_address=org["notify"],
            now=now,
        )
    for t in (TEAM3, NIGHT_TEAM, PASSING_ON):
        directory.add_team(
            db, SYSTEM, org_code=NURSING2["code"], name=t["name"], address=t["address"], now=now
        )
    directory.set_preferred(
        db, practice_code=PRACTICE2["code"], team_addresses=[TEAM3["address"], TEAM2["address"]]
    )
    for e in REGION_ENTRIES:
        values: dict[str, Any] = {
            k: e[k] for k in ("phone", "areas", "capacity", "services", "level5")
        }
        values |= {f"reach_{p}": p in e["reach"] for p in regionmap.PARTS}
        team = directory.team_by_address(db, e["team"])
        regionmap.save_entry(
            db, SYSTEM, team.id, values, now=svc.now() - dt.timedelta(days=e["days_ago"])
        )
    practice, practice2 = (directory.org_by_code(db, p["code"]) for p in (PRACTICE, PRACTICE2))
    regionmap.set_practice_entry(
        db,
        SYSTEM,
        practice.id,
        {"role": "poh", "name": "Fatima Yilmaz (POH)", "phone": "020-1234568"},
        now=svc.now(),
    )
    regionmap.set_practice_entry(
        db,
        SYSTEM,
        practice2.id,
        {"role": "praktijkverpleegkundige", "name": "Joost de Wit", "phone": "020-7654321"},
        now=svc.now(),
    )
    contacts = (
        (TEAM, practice, "Sanne Bakker", "06-12345678"),
        (TEAM2, practice, "Mohamed El Amrani", "06-23456789"),
        (TEAM2, practice2, "Eva Jansen", "06-34567890"),
        (TEAM3, practice2, "Daan Visser", "06-45678901"),
    )
    for team_spec, contact_org, name, phone in contacts:
        regionmap.set_contact_nurse(
            db,
            SYSTEM,
            directory.team_by_address(db, team_spec["address"]).id,
            contact_org.id,
            {"name": name, "phone": phone},
            now=svc.now(),
        )


def _demo_consents(svc: Services, now: str) -> None:
    """Explicit consent of the example patient for the demo team."""
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    bsn = example["patient"]["bsn"]

    def grant(db: Any) -> None:
        gp = auth.actor_for_cli(db, "huisarts")
        practice = directory.org_by_code(db, PRACTICE["code"])
        record_team_consent(db, svc, gp, bsn, practice.id, TEAM["address"])

    svc.store.write_sync(grant)


def record_team_consent(
    db: Any, svc: Services, gp: Actor, bsn: str, source_org_id: int, team_address: str
) -> None:
    """The patient's explicit consent, given in person and open-ended, for one team: without
    it the gateway refuses to send the demo's (or an end-to-end test's) request there."""
    team = directory.team_by_address(db, team_address)
    consent.record(
        db,
        gp,
        patient_bsn=bsn,
        source_org_id=source_org_id,
        recipient=consent.Recipient(team_id=team.id, org_id=None, category=None),
        decision="permit",
        basis="explicit",
        valid_from=svc.now(),
        valid_until=None,
        given_at=svc.now(),
        channel="in_person",
        performer="patient",
        now=svc.now(),
    )


def demo_overrides(paths: DemoPaths, port: int, smtp_port: int) -> dict[str, dict[str, Any]]:
    return {
        "gateway": {
            "base_url": f"http://127.0.0.1:{port}",
            "passing_on_address": PASSING_ON["address"],
            "from_address": "gateway@securemail-demo.example",
        },
        "web": {"port": port},
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "starttls": "required",
            "cafile": str(paths.ca),
        },
        "delivery": {"retry_initial_seconds": 5.0},
        "inbound": inbound_overrides(paths, smtp_port),
    }


def run_demo(
    home: Path, *, port: int = 8080, smtp_port: int = 8025, setup_only: bool = False
) -> None:
    paths = DemoPaths(home / "demo")
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(init_home(home, overrides=demo_overrides(paths, port, smtp_port)))
    settings = config.load(home).replace(
        web={"port": port},
        smtp={"port": smtp_port, "cafile": str(paths.ca)},
        inbound=inbound_overrides(paths, smtp_port),
    )
    g = settings.gateway
    to_gateway = frozenset({g.reply_to().lower(), g.from_address.lower()})
    controller = (
        None if setup_only else start_relay(paths, smtp_port, to_gateway, settings.inbound.port)
    )
    svc = open_services(settings)
    try:
        creds = asyncio.run(setup_demo(svc, paths))
    finally:
        svc.close()
    _print_welcome(creds, paths, settings, on_terminal=sys.stdout.isatty())
    if setup_only:
        return
    from securemail.web.server import serve

    try:
        serve(settings)
    finally:
        if controller is not None:
            controller.stop()


def _print_welcome(
    creds: dict[str, Any], paths: DemoPaths, settings: config.Settings, *, on_terminal: bool
) -> None:
    """The demo's welcome. The credentials are what a person trying the demo needs first, so
    a terminal shows them; into a pipe, a file or a service log (where they would stay) only
    names, roles and the path of the 0600 credentials file go."""
    print("")
    print(f"securemail demo: {settings.gateway.base_url}")
    if on_terminal:
        print("  users (password and TOTP secret; GP also a signing passphrase; demo only):")
    else:
        print(f"  users (passwords, TOTP secrets, signing passphrase: {paths.credentials}):")
    for u in creds["users"]:
        print(f"    {u['role']:<16} {u['username']:<18} {u['password'] if on_terminal else ''}")
        if on_terminal and u.get("signing_passphrase"):
            print(f"    {'':<16} {'':<18} signing passphrase: {u['signing_passphrase']}")
        if on_terminal and u.get("totp_secret"):
            print(f"    {'':<16} {'':<18} totp secret: {u['totp_secret']}")
    print(f"  team address:      {creds['team_address']}")
    print(f"  region map:        {settings.gateway.base_url}/regio  (docs/region.md)")
    print(f"  arrived mail:      {paths.maildir}/new/")
    print(f"  team secret keys:  {paths.team_secret}  (gpg --import, then gpg --decrypt)")
    print(f"  practice key:      {paths.practice_secret}  (reads the team's signed answers)")
    print(f"  credentials file:  {paths.credentials}")
    print("  second factor:     add a user's TOTP secret to an authenticator app, or make a code:")
    print("    .venv/bin/python -c \"import pyotp; print(pyotp.TOTP('<totp secret>').now())\"")
    print(f"  local SMTP relay:  127.0.0.1:{settings.smtp.port} (STARTTLS required)")
    print(
        f"  replies:           {settings.gateway.reply_to()} via the relay, or the gateway's"
        f" listener 127.0.0.1:{settings.inbound.port} (STARTTLS, CA {paths.ca})"
    )
    print("")
