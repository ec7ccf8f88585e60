"""Property-based fuzz of every route as each role (and without a session): random bodies,
content types, charsets, encodings and JSON nestings. The promise: never a 5xx, never a
traceback in the log, never a stored request from garbage.

``make test`` runs a bounded number of examples; ``make fuzz`` runs it longer
(SECUREMAIL_FUZZ_EXAMPLES). The app runs in a thread of its own, on its own event loop,
so that hypothesis (synchronous) can drive real HTTP against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.web import create_app
from tests.clock import Clock, real_now
from tests.gateway import build_gateway
from tests.web_fixtures import Browser, WebApp

T = TypeVar("T")
EXAMPLES = int(os.environ.get("SECUREMAIL_FUZZ_EXAMPLES", "60"))
ROLES = ("", "gp_a", "nurse_c", "privacy_a", "admin", "coord_r")
SAMPLE = {"reference": "UVZ-2025-000001", "token_id": "1", "user_id": "1", "team_id": "1"}


@dataclass
class Running:
    loop: asyncio.AbstractEventLoop
    webapp: WebApp
    browsers: dict[str, Browser]
    routes: list[tuple[str, str]]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)


class _Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def make_url(self, path: str) -> str:
        return self.base + path.lstrip("/")


def _routes(app: web.Application) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path or route.method == "HEAD" or path.startswith("/static"):
            continue
        for key, value in SAMPLE.items():
            path = path.replace("{" + key + "}", value)
        out.append((route.method, path))
    return sorted(set(out))


@pytest.fixture(scope="module")
def running(web_template: tuple[Path, dict[str, str]]) -> Iterator[Running]:
    yield from serve(web_template)


def serve(web_template: tuple[Path, dict[str, str]]) -> Iterator[Running]:
    """A copy of the template home served over HTTP on a loop of its own thread, a browser
    logged in per role (tests/test_text_policy.py drives one too)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[WebApp, web.AppRunner, dict[str, Browser]]:
        from tests.auth_fixtures import PEOPLE, Person

        clock = Clock(real_now())
        gw = await build_gateway(template=web_template[0], clock=clock)
        svc, settings, secrets = gw.svc, gw.svc.settings, gw.totp_secrets
        app = create_app(settings, services=svc, run_worker=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        people = {u: Person(u, 0, PEOPLE[u][0], secrets.get(u, "")) for u in PEOPLE}
        w = WebApp(
            app, _Client(f"http://127.0.0.1:{port}/"), svc, clock, settings, secrets, people,
            gateway=gw,
        )  # fmt: skip
        browsers = {"": w.browser()}
        for username in ROLES[1:]:
            b = w.browser()
            r = await b.login(username)
            assert r.status == 303, (username, r.status)
            browsers[username] = b
        return w, runner, browsers

    w, runner, browsers = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=120)
    yield Running(loop, w, browsers, _routes(w.app))

    async def stop() -> None:
        await w.close()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function, not a lambda: hypothesis checks by reading its source that extend
    # uses its argument, and a lambda split over lines by the formatter reads as not using it.
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20), _nested, max_leaves=30
)
field_names = st.sampled_from(
    ["patient", "patient.bsn", "procedures.0.code", "procedures.99.code", "procedures.x.code",
     "payload", "passphrase", "username", "password", "code", "reason", "name", "team_address",
     "status", "ask", "login_token", "²", "procedures.².code"]
) | st.text(max_size=12)  # fmt: skip
form_bodies = st.dictionaries(field_names, st.text(max_size=30), max_size=12)
raw_bytes = st.binary(max_size=300)
content_types = st.sampled_from(
    ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
     "application/x-www-form-urlencoded; charset=nope", "application/json",
     "application/json; charset=utf-16", "multipart/form-data; boundary=x", "text/plain", ""]
)  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["form", "json", "raw", "deep"]))
    if kind == "form":
        form = draw(form_bodies)
        from urllib.parse import urlencode

        return urlencode(form).encode(), "application/x-www-form-urlencoded"
    if kind == "json":
        value = draw(json_values)
        if draw(st.booleans()):
            value = {"request": value, "passphrase": "x", "payload": json.dumps(value)}
        return json.dumps(value).encode(), "application/json"
    if kind == "deep":
        depth = draw(st.integers(10, 5000))
        return b"[" * depth + b"]" * depth, "application/json"
    return draw(raw_bytes), draw(content_types)


def test_no_route_answers_5xx_or_logs_a_traceback(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        role=st.sampled_from(ROLES),
        route=st.sampled_from(running.routes),
        body=bodies(),
        csrf=st.booleans(),
    )
    def fuzz(role: str, route: tuple[str, str], body: tuple[bytes, str], csrf: bool) -> None:
        b = running.browsers[role]
        method, path = route
        data, content_type = body
        headers = {"Content-Type": content_type} if content_type else {}
        if csrf and b.csrf:
            headers["X-CSRF-Token"] = b.csrf
        caplog.clear()
        r = running.run(b.request(method, path, data=data, headers=headers))
        # /healthz says 503 when the relay is away: a health answer, not a failure.
        health = path in {"/healthz", "/health"} and r.status == 503
        assert r.status < 500 or health, (method, path, role, r.status, r.text[:200])
        bad = [x for x in caplog.records if x.exc_info or x.levelno >= logging.ERROR]
        assert not bad, [x.getMessage() for x in bad]

    def taken() -> list[tuple[str, int]]:
        return running.webapp.svc.store.read_sync(
            lambda db: db.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        )

    before = taken()
    with caplog.at_level(logging.INFO):
        fuzz()
    stored = running.webapp.svc.store.read_sync(lambda db: db["requests"].count)
    assert stored == 0
    # ... and no reference number burnt by malformed input (issue 23)
    assert taken() == before


def test_the_fuzz_reaches_every_route(running: Running) -> None:
    paths = {p for _, p in running.routes}
    assert {"/login", "/requests/preview", "/requests/send", "/api/requests"} <= paths
    assert isinstance(aiohttp.__version__, str)
