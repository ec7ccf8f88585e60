"""The regional directory for GPs and nurses: the GPs' public signing keys, current and
revoked, so a nurse's mail client can check a GP's signature (each message also carries
the signer's key). Public keys and names only; no patient data."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.access import Resource, require
from securemail.keys import gp as gpkeys
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

RESOURCE = Resource("gp_keys")


@requires("directory.view")
@aiohttp_jinja2.template("directory/gp_keys.html")
async def gp_keys_page(request: web.Request) -> dict[str, Any]:
    require(request[ACTOR], "directory.view", RESOURCE)
    svc = request.app[services_key]
    return {"keys": await svc.store.read(gpkeys.list_gp_keys)}


@requires("directory.view")
async def gp_keys_file(request: web.Request) -> web.StreamResponse:
    require(request[ACTOR], "directory.view", RESOURCE)
    armored, _ = await gpkeys.export_gp_keys(request.app[services_key])
    return web.Response(
        text=armored,
        content_type="application/pgp-keys",
        headers={"Content-Disposition": 'attachment; filename="huisartsen.asc"'},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/directory/gp-keys", gp_keys_page, name="directory_gp_keys")
    app.router.add_get("/directory/gp-keys.asc", gp_keys_file, name="directory_gp_keys_file")
