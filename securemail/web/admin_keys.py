"""The operator's key overview (/admin/keys): teams and the state of their keys, keys that expire
soon, quarantined keys with the phone-code confirmation, and the GPs' signing keys.

Admin only (directory.manage), checked here and again by the domain functions; no
patient content is read. The confirmation is a POST with the session's CSRF token.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.access import Resource, require
from securemail.keys import foresight as keycheck
from securemail.keys import gp as gpkeys
from securemail.keys import pinning as keydir
from securemail.openpgp.keystore import reason_nl
from securemail.region import directory
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires


async def _overview(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    svc = request.app[services_key]
    require(request[ACTOR], "directory.manage", Resource("directory"))
    foresight = await keycheck.foresee(svc)

    def load(db: Any) -> tuple[list[Any], list[Any], list[gpkeys.GpKey]]:
        teams = [(t, directory.org_by_id(db, t.org_id)) for t in directory.list_teams(db)]
        return teams, keydir.quarantined(db), gpkeys.list_gp_keys(db)

    teams, quarantined, gp_keys = await svc.store.read(load)
    team_keys = [k for k in foresight.keys if k.kind == "team"]
    context = {
        "foresight": foresight,
        "teams": [
            {
                "team": t,
                "org": org,
                "usable": sum(1 for k in team_keys if k.owner == t.address and not k.why),
                "at_risk": t.address in foresight.at_risk,
            }
            for t, org in teams
        ],
        "team_keys": team_keys,
        "gp_states": {k.fingerprint: k for k in foresight.keys if k.kind == "gp"},
        "expiring": {days: foresight.expiring(days) for days in keycheck.BUCKETS},
        "quarantined": quarantined,
        "gp_keys": gp_keys,
        "why_nl": reason_nl,
        "risk_days": keycheck.RISK_DAYS,
        "error": error,
    }
    return aiohttp_jinja2.render_template("admin/keys.html", request, context, status=status)


@requires("directory.manage")
async def overview(request: web.Request) -> web.StreamResponse:
    return await _overview(request)


@requires("directory.manage")
async def confirm_key(request: web.Request) -> web.StreamResponse:
    """The admin typed the code the key holder read out; release the key if it matches."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    form = await request.post()
    email, fpr, code = (str(form.get(k, "")) for k in ("email", "fingerprint", "code"))
    outcome = await svc.store.write(
        lambda db: keydir.confirm(
            db,
            actor,
            email=email,
            fingerprint=fpr,
            code=code,
            now=svc.now_iso(),
            source_id=svc.settings.gateway.source_id,
        )
    )
    if not outcome.confirmed:
        return await _overview(request, keydir.PhoneCodeError.nl, status=422)
    raise web.HTTPSeeOther("/admin/keys#quarantaine")


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/keys", overview, name="admin_keys")
    app.router.add_post("/admin/keys/confirm", confirm_key, name="admin_key_confirm")
