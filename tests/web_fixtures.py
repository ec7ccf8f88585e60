"""The real web app over real HTTP on 127.0.0.1, for the security and browser tests.

An initialised home (gateway key and all), the people of auth_fixtures with their TOTP
secrets known to the test, and a clock the test can move (the only fake, style.md §4).
The home is built once per test session and copied for each test, because scrypt and
gpg key generation are slow by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from securemail import config
from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.config import Settings
from securemail.home import init_home, open_services
from securemail.region import directory
from securemail.services import Services
from securemail.store import Store
from tests.auth_fixtures import PASSWORD, PEOPLE, Person, populate
from tests.clock import Clock, real_now

#: People left without an authenticator, to walk through first-time pairing.
UNENROLLED = ("nurse_o",)
_FIELD_RE = r'name="{name}" value="([^"]+)"'


TEAM_ADDRESSES = ("centrum@zorg.example", "oost@zorg.example")
#: Which practice's GP may send the example patient to which team (consent on record).
CONSENTS = (
    ("gp_a", "centrum@zorg.example"),
    ("gp_a", "oost@zorg.example"),
    ("gp_b", "centrum@zorg.example"),
)


def short_dir(prefix: str) -> Path:
    # gpg-agent's socket path must stay under ~100 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix))


def kill_agents(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "all"],
        check=False,
        capture_output=True,
    )


def build_template_home(root: Path) -> dict[str, str]:
    """Init a home, add the people, pair all but UNENROLLED; give the GPs signing keys and
    each team a member key (secret half only in a scratch keyring); record the example
    patient's consent; return {username: TOTP secret}."""
    home = root / "home"
    asyncio.run(_build(home, root / "team-gnupg"))
    store = Store(config.load(home).db_path)
    try:
        secrets: dict[str, str] = {}
        for username in PEOPLE:
            if username in UNENROLLED:
                continue
            uid = store.read_sync(lambda db, u=username: auth.user_by_name(db, u).id)
            secrets[username] = store.write_sync(
                lambda db, uid=uid: auth.enrol_totp_for_demo(db, uid)
            )
    finally:
        store.close()
    kill_agents(home)
    return secrets


async def _build(home: Path, team_gnupg: Path) -> None:
    from securemail.cli.directory import enrol_gp_key
    from tests.e2e.conftest import EXAMPLE, GP_PASSPHRASE, gpg_cli, grant_consent

    await init_home(home)
    svc = open_services(config.load(home))
    try:
        svc.store.write_sync(populate)
        team_gnupg.mkdir(mode=0o700)
        now = svc.now_iso()
        for address in TEAM_ADDRESSES:
            email = "member-" + address
            gpg_cli(
                team_gnupg,
                "--passphrase",
                "",
                "--quick-gen-key",
                f"Member <{email}>",
                "ed25519",
                "sign,cert",
                "2y",
            )
            fpr = [
                line.split(":")[9]
                for line in gpg_cli(team_gnupg, "--with-colons", "--list-keys", email)
                .decode()
                .splitlines()
                if line.startswith("fpr:")
            ][0]
            gpg_cli(team_gnupg, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
            await svc.keyring.import_keys(gpg_cli(team_gnupg, "--armor", "--export", fpr).decode())
            svc.store.write_sync(
                lambda db, a=address, e=email, f=fpr: directory.add_member(
                    db, SYSTEM, team_address=a, name="Member", email=e, fingerprint=f, now=now
                )
            )
        for username in ("gp_a", "gp_b"):
            user = svc.store.read_sync(lambda db, u=username: auth.user_by_name(db, u))
            await enrol_gp_key(svc, user, GP_PASSPHRASE)
        for username, address in CONSENTS:
            gp = svc.store.read_sync(lambda db, u=username: auth.actor_for_cli(db, u))
            grant_consent(svc, gp, EXAMPLE["patient"]["bsn"], address)
    finally:
        svc.close()
        subprocess.run(
            ["gpgconf", "--homedir", str(team_gnupg), "--kill", "all"],
            check=False,
            capture_output=True,
        )


def copy_home(template: Path, target: Path) -> Path:
    shutil.copytree(
        template / "home", target, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*")
    )
    return target


@dataclass
class Response:
    status: int
    headers: Any
    text: str
    url: str

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    def field(self, name: str) -> str:
        m = re.search(_FIELD_RE.format(name=re.escape(name)), self.text)
        assert m, f"no {name} field on {self.url} ({self.status})"
        return m.group(1)

    def set_cookies(self) -> list[str]:
        return list(self.headers.getall("Set-Cookie", []))


@dataclass
class Browser:
    """One person's browser: its own cookie jar; redirects are not followed, so tests see them."""

    web: WebApp
    session: aiohttp.ClientSession
    csrf: str = ""

    async def request(self, method: str, path: str, **kw: Any) -> Response:
        kw.setdefault("allow_redirects", False)
        async with self.session.request(method, path, **kw) as r:
            return Response(r.status, r.headers, await r.text(), str(r.url))

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True, **kw: Any
    ) -> Response:
        data = dict(data or {})
        if csrf and "csrf_token" not in data:
            data["csrf_token"] = self.csrf
        return await self.request("POST", path, data=data, **kw)

    async def password(self, username: str, password: str = PASSWORD) -> Response:
        page = await self.get("/login")
        return await self.request(
            "POST",
            "/login",
            data={
                "login_token": page.field("login_token"),
                "username": username,
                "password": password,
            },
        )

    async def second_factor(self, code: str) -> Response:
        page = await self.get("/login/totp")
        return await self.request(
            "POST", "/login/totp", data={"csrf_token": page.field("csrf_token"), "code": code}
        )

    async def login(self, username: str, *, code: str | None = None) -> Response:
        """Password and TOTP; afterwards self.csrf is the full session's CSRF token."""
        r = await self.password(username)
        assert (r.status, r.location) == (303, "/login/totp"), (r.status, r.text[:500])
        r = await self.second_factor(code or self.web.fresh_code(username))
        if r.status == 303:
            self.csrf = (await self.get("/account")).field("csrf_token")
        return r

    def cookie(self, name: str) -> str:
        for c in self.session.cookie_jar:
            if c.key == name:
                return c.value
        return ""


@dataclass
class WebApp:
    app: web.Application
    client: Any  # aiohttp TestClient
    svc: Services
    clock: Clock
    settings: Settings
    secrets: dict[str, str]
    people: dict[str, Person] = field(default_factory=dict)
    browsers: list[Browser] = field(default_factory=list)
    used_steps: dict[str, int] = field(default_factory=dict)

    def code(self, username: str, offset: int = 0) -> str:
        """The TOTP code an authenticator app would show now (offset: steps later)."""
        from securemail.accounts import totp

        return totp.code_at(self.secrets[username], totp.step_of(self.clock.now) + offset)

    def fresh_code(self, username: str) -> str:
        """A code whose time step this person has not used yet: the clock moves on a step when
        needed, as a person would wait for the app's next code (each step works once)."""
        from securemail.accounts import totp

        step = totp.step_of(self.clock.now)
        if self.used_steps.get(username, -1) >= step:
            self.clock.advance(seconds=totp.STEP_SECONDS)
            step += 1
        self.used_steps[username] = step
        return self.code(username)

    def browser(self) -> Browser:
        session = aiohttp.ClientSession(
            base_url=str(self.client.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        b = Browser(self, session)
        self.browsers.append(b)
        return b

    async def close(self) -> None:
        for b in self.browsers:
            await b.session.close()

    async def send(self, username: str, to: str) -> str:
        """A real send of the example request by a GP (form, consent, sign, seal, queue)."""
        from securemail.exchange import send as exchange
        from tests.e2e.conftest import GP_PASSPHRASE, example

        gp = self.svc.store.read_sync(
            lambda db: auth.actor_for(db, auth.user_by_name(db, username), "test")
        )
        result = await exchange.send(self.svc, gp, example(), GP_PASSPHRASE, to=to)
        return result.reference

    def audit(self, code: str) -> list[dict[str, Any]]:
        return self.svc.store.read_sync(
            lambda db: list(db["audit_events"].rows_where("event_code = ?", [code], order_by="seq"))
        )


async def start_web(
    home: Path,
    secrets: dict[str, str],
    aiohttp_client: Any,
    *,
    web_settings: dict[str, Any] | None = None,
    prepare: Any = None,
) -> WebApp:
    """The real app (create_app) on the copied home; prepare(app) may add routes first."""
    from securemail.web import create_app

    settings = config.load(home)
    if web_settings:
        settings = settings.replace(web=web_settings)
    clock = Clock(real_now())  # the template home was made at the real time
    svc = open_services(settings, clock=clock)
    app = create_app(settings, services=svc, run_worker=False)
    if prepare is not None:
        prepare(app)
    client = await aiohttp_client(app)
    people = {u: Person(u, 0, PEOPLE[u][0], secrets.get(u, "")) for u in PEOPLE}
    return WebApp(app, client, svc, clock, settings, secrets, people)


@contextlib.asynccontextmanager
async def another_web(
    template: tuple[Path, dict[str, str]], aiohttp_client: Any, **kw: Any
) -> AsyncIterator[WebApp]:
    """A second app on its own copy of the template home (other settings, extra routes)."""
    root, secrets = template
    home = copy_home(root, short_dir("smw-") / "home")
    w = await start_web(home, secrets, aiohttp_client, **kw)
    try:
        yield w
    finally:
        await w.close()
        kill_agents(home)
        shutil.rmtree(home.parent, ignore_errors=True)
