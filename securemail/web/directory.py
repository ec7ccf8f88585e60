"""The regional directory for GPs and nurses: the GPs' public signing keys, current and
revoked, so a nurse's mail client can check a GP's signature (each message also carries
the signer's key); and the gateway's own public key, so her client can encrypt a reply to
the gateway's reply address (also on every gateway mail as Autocrypt). Public keys and
names only; no patient data."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.access import Resource, require
from securemail.errors import NotFoundError, SecuremailError
from securemail.home import gateway_fingerprint
from securemail.keys import gp as gpkeys
from securemail.services import Services
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

RESOURCE = Resource("gp_keys")


@requires("directory.view")
@aiohttp_jinja2.template("directory/gp_keys.html")
async def gp_keys_page(request: web.Request) -> dict[str, Any]:
    require(request[ACTOR], "directory.view", RESOURCE)
    svc = request.app[services_key]
    return {
        "keys": await svc.store.read(gpkeys.list_gp_keys),
        "gateway_fingerprint": _gateway(svc) or "",
        "reply_address": svc.settings.gateway.reply_to(),
    }


def _gateway(svc: Services) -> str | None:
    try:
        return gateway_fingerprint(svc.store)
    except SecuremailError:  # a home without a key yet (securemail init makes it)
        return None


@requires("directory.view")
async def gp_keys_file(request: web.Request) -> web.StreamResponse:
    require(request[ACTOR], "directory.view", RESOURCE)
    armored, _ = await gpkeys.export_gp_keys(request.app[services_key])
    return web.Response(
        text=armored,
        content_type="application/pgp-keys",
        headers={"Content-Disposition": 'attachment; filename="huisartsen.asc"'},
    )


@requires("directory.view")
async def gateway_key_file(request: web.Request) -> web.StreamResponse:
    """The gateway's public key: its user ids are its From and reply addresses."""
    require(request[ACTOR], "directory.view", RESOURCE)
    svc = request.app[services_key]
    fpr = _gateway(svc)
    if fpr is None:
        raise NotFoundError("the gateway has no key yet")
    armored = await svc.keyring.export_public(fpr)
    return web.Response(
        text=armored,
        content_type="application/pgp-keys",
        headers={"Content-Disposition": 'attachment; filename="gateway.asc"'},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/directory/gp-keys", gp_keys_page, name="directory_gp_keys")
    app.router.add_get("/directory/gp-keys.asc", gp_keys_file, name="directory_gp_keys_file")
    app.router.add_get("/directory/gateway.asc", gateway_key_file, name="directory_gateway_key")
