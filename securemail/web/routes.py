"""All routes, registered per audience module; the middleware guards every one of them."""

from __future__ import annotations

from aiohttp import web

from securemail.web.keys import ACTOR
from securemail.web.middleware import requires

HOME_BY_ROLE = {
    "gp": "/requests",
    "nurse": "/requests",
    "privacy_officer": "/privacy",
    "admin": "/admin",
    "coordinator": "/regio/afspraken",
    "assistant": "/drafts",
}


@requires("account.self")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(HOME_BY_ROLE.get(request[ACTOR].role, "/login"))


def setup(app: web.Application) -> None:
    from importlib import import_module

    app.router.add_get("/", home, name="home")
    for name in (
        "login",
        "requests",
        "drafts",
        "totp",
        "account",
        "nurse",
        "asks",
        "consents",
        "consent_register",
        "privacy",
        "admin",
        "admin_keys",
        "directory",
        "region",
        "api",
        "adherence",
        "monitoring",
    ):
        try:
            module = import_module(f"securemail.web.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"securemail.web.{name}":
                raise
            continue
        module.setup(app)
