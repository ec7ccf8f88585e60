"""The regional map in the web app: the region page (/regio, .json, .csv) for every logged-in
role (and for anyone when ``[region] public_page``), the team's own entry for its nurses,
the practice's entry and preferred providers for its GPs.

No patient data is read or shown on any of these pages: team areas are postcode *areas*
the teams declare, people are professionals. State changes are POSTs with the CSRF token;
scope (which team, which practice) is decided in access.py through the domain functions.
"""

from __future__ import annotations

import io
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.access import Actor, HiddenDeniedError, org_of
from securemail.message import csvsafe
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from securemail.region.map import RegionInputError
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires


async def _region(request: web.Request) -> tuple[list[regionmap.TeamEntry], str, Any, int]:
    svc = request.app[services_key]
    teams = await svc.store.read(regionmap.entries)
    return teams, svc.settings.gateway.passing_on_address, svc.now(), svc.settings.region.stale_days


@requires("region.view")
@aiohttp_jinja2.template("region/region.html")
async def region_page(request: web.Request) -> dict[str, Any]:
    teams, passing_on, now, stale_days = await _region(request)
    on_map = [e for e in teams if e.areas]
    return {
        "rows": regionview.area_rows(on_map),
        "teams": on_map,
        "parts": regionmap.PARTS,
        "services": regionmap.SERVICES,
        "passing": next((e for e in teams if e.team.address == passing_on), None),
        "passing_on": passing_on,
        "stale": {e.team.id for e in teams if e.is_stale(now, stale_days)},
        "stale_days": stale_days,
        "part_now": regionview.part_of_week(now, request.app[services_key].settings.region),
        "public": ACTOR not in request,
    }


@requires("region.view")
async def region_json(request: web.Request) -> web.StreamResponse:
    teams, passing_on, now, stale_days = await _region(request)
    return web.json_response(regionview.region_json(teams, passing_on, now, stale_days))


@requires("region.view")
async def region_csv(request: web.Request) -> web.StreamResponse:
    teams, passing_on, now, stale_days = await _region(request)
    out = io.StringIO()
    writer = csvsafe.writer(out)
    writer.writerow(regionview.CSV_HEADER)
    writer.writerows(regionview.region_csv_rows(teams, passing_on, now, stale_days))
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="regio.csv"'},
    )


# -- the team's own entry (nurses of the team) -----------------------------------------------


def _my_team(actor: Actor, request: web.Request) -> int:
    team_id = int(request.match_info["team_id"])
    if team_id not in actor.team_ids:
        # the domain function refuses too; here another team's page looks like no page
        raise HiddenDeniedError("team_entry", action="region.team_edit", ref=str(team_id))
    return team_id


@requires("region.team_edit")
async def my_teams(request: web.Request) -> web.StreamResponse:
    actor = request[ACTOR]
    if len(actor.team_ids) == 1:
        raise web.HTTPSeeOther(f"/regio/team/{next(iter(actor.team_ids))}")
    svc = request.app[services_key]
    teams = await svc.store.read(
        lambda db: [directory.team_by_id(db, t) for t in sorted(actor.team_ids)]
    )
    return aiohttp_jinja2.render_template("region/my_teams.html", request, {"teams": teams})


async def _team_context(
    request: web.Request,
    team_id: int,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, list[str]] | None = None,
    notice: str = "",
) -> dict[str, Any]:
    svc = request.app[services_key]

    def load(db: Any) -> dict[str, Any]:
        e = regionmap.entry(db, team_id)
        practices = regionmap.partner_practices(db, team_id)
        contacts = {c.practice_org_id: c for c in regionmap.contact_nurses(db, team_id=team_id)}
        return {
            "e": e,
            "partners": [
                (p, regionmap.practice_entry(db, p.id), contacts.get(p.id)) for p in practices
            ],
        }

    ctx = await svc.store.read(load)
    e = ctx["e"]
    if values is None:
        values = {
            "phone": e.phone,
            "areas": e.areas_text,
            "capacity": e.capacity,
            "working_hours": e.working_hours,
            "services": list(e.services),
            "level5": e.level5,
        }
        for p in regionmap.PARTS:
            r = e.reach.get(p) or regionmap.Reach(False)
            values |= {f"reach_{p}": r.reachable, f"phone_{p}": r.phone, f"address_{p}": r.address}
    return {
        **ctx,
        "values": values,
        "errors": errors or {},
        "notice": notice,
        "parts": regionmap.PARTS,
        "services": regionmap.SERVICES,
        "capacity": regionmap.CAPACITY,
        "roles": regionmap.ENTRY_ROLES,
        "stale": e.is_stale(svc.now(), svc.settings.region.stale_days),
        "stale_days": svc.settings.region.stale_days,
    }


@requires("region.team_edit")
@aiohttp_jinja2.template("region/team.html")
async def team_page(request: web.Request) -> dict[str, Any]:
    return await _team_context(request, _my_team(request[ACTOR], request))


def _entry_post(post: Any) -> dict[str, Any]:
    keys = ["phone", "areas", "capacity", "working_hours"] + [
        f"{k}_{p}" for p in regionmap.PARTS for k in ("phone", "address")
    ]
    values: dict[str, Any] = {k: str(post.get(k, "")) for k in keys}
    values["services"] = [str(s) for s in post.getall("services", [])]
    for p in regionmap.PARTS:
        values[f"reach_{p}"] = f"reach_{p}" in post
    values["level5"] = "level5" in post
    return values


@requires("region.team_edit")
async def team_save(request: web.Request) -> web.StreamResponse:
    actor = request[ACTOR]
    team_id = _my_team(actor, request)
    svc = request.app[services_key]
    post = await request.post()
    values = _entry_post(post)
    try:
        if "confirm" in post:
            await svc.store.write(
                lambda db: regionmap.confirm_entry(db, actor, team_id, now=svc.now())
            )
        else:
            await svc.store.write(
                lambda db: regionmap.save_entry(db, actor, team_id, values, now=svc.now())
            )
    except RegionInputError as exc:
        ctx = await _team_context(request, team_id, values=values, errors=exc.errors_nl())
        return aiohttp_jinja2.render_template("region/team.html", request, ctx, status=422)
    raise web.HTTPSeeOther(f"/regio/team/{team_id}")


@requires("region.team_edit")
async def contact_save(request: web.Request) -> web.StreamResponse:
    actor = request[ACTOR]
    team_id = _my_team(actor, request)
    svc = request.app[services_key]
    post = await request.post()
    practice = str(post.get("practice", ""))
    values = {k: str(post.get(k, "")) for k in ("name", "phone", "address")}
    try:
        if not practice.isdigit():
            raise RegionInputError({"practice": ("choose a practice", "Kies een praktijk.")})
        await svc.store.write(
            lambda db: regionmap.set_contact_nurse(
                db, actor, team_id, int(practice), values, now=svc.now()
            )
        )
    except RegionInputError as exc:
        ctx = await _team_context(
            request,
            team_id,
            errors={f"contact_{practice}_{k}": v for k, v in exc.errors_nl().items()},
        )
        return aiohttp_jinja2.render_template("region/team.html", request, ctx, status=422)
    raise web.HTTPSeeOther(f"/regio/team/{team_id}")


# -- the practice (its GPs) ------------------------------------------------------------------


async def _practice_context(
    request: web.Request,
    *,
    entry_values: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    svc = request.app[services_key]
    org_id = org_of(request[ACTOR])

    def load(db: Any) -> dict[str, Any]:
        preferred = directory.preferred_teams(db, org_id)
        contacts = {c.team_id: c for c in regionmap.contact_nurses(db, practice_org_id=org_id)}
        mine = regionmap.practice_entry(db, org_id)
        return {
            "providers": [(regionmap.entry(db, t.id), contacts.get(t.id)) for t in preferred],
            "all_teams": directory.list_teams(db),
            "preferred": [t.address for t in preferred],
            "entry_values": entry_values
            or ({"role": mine.role, "name": mine.name, "phone": mine.phone} if mine else {}),
        }

    ctx = await svc.store.read(load)
    now, stale_days = svc.now(), svc.settings.region.stale_days
    return {
        **ctx,
        "errors": errors or {},
        "roles": regionmap.ENTRY_ROLES,
        "stale": {e.team.id for e, _ in ctx["providers"] if e.is_stale(now, stale_days)},
    }


@requires("region.practice_edit")
@aiohttp_jinja2.template("region/practice.html")
async def practice_page(request: web.Request) -> dict[str, Any]:
    return await _practice_context(request)


@requires("region.practice_edit")
async def practice_save(request: web.Request) -> web.StreamResponse:
    actor = request[ACTOR]
    svc = request.app[services_key]
    post = await request.post()
    values = {k: str(post.get(k, "")) for k in ("role", "name", "phone")}
    try:
        if "preferred" in post:
            chosen = [str(post.get(f"preferred_{i}", "")) for i in (1, 2, 3)]
            await svc.store.write(
                lambda db: regionmap.set_preferred(db, actor, org_of(actor), chosen)
            )
        else:
            await svc.store.write(
                lambda db: regionmap.set_practice_entry(
                    db, actor, org_of(actor), values, now=svc.now()
                )
            )
    except RegionInputError as exc:
        ctx = await _practice_context(
            request, entry_values=None if "preferred" in post else values, errors=exc.errors_nl()
        )
        return aiohttp_jinja2.render_template("region/practice.html", request, ctx, status=422)
    raise web.HTTPSeeOther("/regio/praktijk")


def setup(app: web.Application) -> None:
    # middleware.OPEN_IF_SETTING names the first three: [region] public_page opens them.
    app.router.add_get("/regio", region_page, name="region")
    app.router.add_get("/regio.json", region_json, name="region_json")
    app.router.add_get("/regio.csv", region_csv, name="region_csv")
    app.router.add_get("/regio/team", my_teams, name="region_my_teams")
    app.router.add_get(r"/regio/team/{team_id:[0-9]{1,9}}", team_page, name="region_team")
    app.router.add_post(r"/regio/team/{team_id:[0-9]{1,9}}", team_save, name="region_team_save")
    app.router.add_post(
        r"/regio/team/{team_id:[0-9]{1,9}}/contact", contact_save, name="region_contact_save"
    )
    app.router.add_get("/regio/praktijk", practice_page, name="region_practice")
    app.router.add_post("/regio/praktijk", practice_save, name="region_practice_save")
