"""The real web app over real HTTP on 127.0.0.1, for the security and browser tests.

An initialised home (gateway key and all), the people of auth_fixtures with their TOTP
secrets known to the test, and a clock the test can move (the only fake, style.md §4).
The home is tests/gateway.py's web cast, built once per test session (``web_template``) and
copied for each test by ``build_gateway(template=...)``, because scrypt and gpg key
generation are slow by design.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from securemail.accounts import auth
from securemail.config import Settings
from securemail.services import Services
from tests.auth_fixtures import PASSWORD, PEOPLE, Person
from tests.clock import Clock, real_now
from tests.gateway import (  # noqa: F401 - UNENROLLED and kill_agents re-exported for tests
    UNENROLLED,
    Gateway,
    build_gateway,
    close_gateway,
    kill_agents,
    make_template,
    scratch_dir,
)

_FIELD_RE = r'name="{name}" value="([^"]+)"'


def short_dir(prefix: str) -> Path:
    return scratch_dir(prefix)


def build_template_home(root: Path) -> dict[str, str]:
    """The web cast built once into ``root`` (tests/gateway.py ``make_template``): the people
    of auth_fixtures, all but UNENROLLED paired, the GPs' signing keys, each team a member
    key, the example patient's consent; returns {username: TOTP secret}."""
    return make_template(root, cast="web")


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
    gateway: Gateway | None = None  # closed with the app, when the app opened it

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
        """Close the browsers, then the gateway's agents and home copy (the Services stay
        with the app, which the test client closes)."""
        for b in self.browsers:
            await b.session.close()
        if self.gateway is not None:
            close_gateway(self.gateway, services=False)

    async def send(self, username: str, to: str) -> str:
        """A real send of the example request by a GP (form, consent, sign, seal, queue)."""
        from securemail.exchange import send as exchange
        from tests.gateway import GP_PASSPHRASE, example

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
    template: Path,
    aiohttp_client: Any,
    *,
    web_settings: dict[str, Any] | None = None,
    prepare: Any = None,
) -> WebApp:
    """The real app (create_app) on a fresh copy of the template home; prepare(app) may add
    routes first. The clock starts at the real time: the template home was made at it."""
    from securemail.web import create_app

    clock = Clock(real_now())
    replace = {"web": web_settings} if web_settings else None
    gw = await build_gateway(template=template, clock=clock, replace=replace, home=None)
    app = create_app(gw.svc.settings, services=gw.svc, run_worker=False)
    if prepare is not None:
        prepare(app)
    client = await aiohttp_client(app)
    secrets = gw.totp_secrets
    people = {u: Person(u, 0, PEOPLE[u][0], secrets.get(u, "")) for u in PEOPLE}
    return WebApp(app, client, gw.svc, clock, gw.svc.settings, secrets, people, gateway=gw)


@contextlib.asynccontextmanager
async def another_web(
    template: tuple[Path, dict[str, str]], aiohttp_client: Any, **kw: Any
) -> AsyncIterator[WebApp]:
    """A second app on its own copy of the template home (other settings, extra routes)."""
    w = await start_web(template[0], aiohttp_client, **kw)
    try:
        yield w
    finally:
        await w.close()
