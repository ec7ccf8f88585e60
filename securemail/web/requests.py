"""Request pages: the GP's form, preview, sign-and-send; the list; one request's page.

Patient data travels only in POST bodies and page content, never in URLs: a request's
page is addressed by its reference. A request drafted from a nurse's ask carries the ask's
reference (never its content) through the form, the preview and the send.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail import deadlines
from securemail.errors import SecuremailError
from securemail.exchange import answer, asks, orders
from securemail.exchange import send as exchange
from securemail.form import request as forms
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from securemail.services import Services
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

PREVIEW_REFERENCE = "UVZ-CONCEPT"
PROCEDURE_ROWS = 3


@dataclass(frozen=True, slots=True)
class ReceiverOption:
    """A team in the form's receiver list, with why it is there (preferred first)."""

    address: str
    name: str
    note: str  # "voorkeursaanbieder", "regionaal doorbemiddelingsadres", "vroeg om een verzoek"


def receiver_options(db: Any, practice_org_id: int, passing_on: str) -> list[ReceiverOption]:
    """The practice's preferred providers in their order, then the regional passing-on
    address, then teams that asked this practice for a request."""
    preferred = {t.id for t in directory.preferred_teams(db, practice_org_id)}
    out: list[ReceiverOption] = []
    for t in directory.allowed_receivers(db, practice_org_id, passing_on):
        note = (
            "voorkeursaanbieder"
            if t.id in preferred
            else "regionaal doorbemiddelingsadres"
            if t.address == passing_on
            else ""
        )
        out.append(ReceiverOption(t.address, t.name, note))
    seen = {o.address for o in out}
    out += [
        ReceiverOption(t.address, t.name, "vroeg om een verzoek")
        for t in asks.asking_teams(db, practice_org_id)
        if t.address not in seen
    ]
    return out


def _ask_of(post: Any) -> str:
    value = str(post.get("ask", "") or "")
    return value if asks.REFERENCE_RE.fullmatch(value) else ""


#: Form fields that steer the page, not the request: never parsed into the signed document.
NOT_IN_REQUEST = ("csrf_token", "ask", "specialism", "suggest", "choose")


async def _form_context(
    request: web.Request,
    values: dict[str, str],
    errors: dict[str, list[str]],
    ask: str = "",
    *,
    specialism: str = "",
    with_suggestions: bool = False,
) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    passing_on = svc.settings.gateway.passing_on_address
    pc4 = regionmap.pc4_of(values.get("patient.postcode", ""))
    part = regionview.part_of_week(svc.now(), svc.settings.region, svc.settings.deadlines.timezone)
    specialism = specialism if specialism in regionmap.SERVICES else ""

    def load(db: Any) -> tuple[list[ReceiverOption], list[regionview.Suggestion] | None]:
        teams = receiver_options(db, actor.org_id or 0, passing_on)
        if not with_suggestions:
            return teams, None
        # the same ordering as the receiver list: the practice's preferred providers first
        preferred = [t.id for t in directory.preferred_teams(db, actor.org_id or 0)]
        return teams, regionview.suggest(
            regionmap.entries(db),
            preferred=preferred,
            passing_on=passing_on,
            pc4=pc4,
            specialism=specialism,
            part=part,
            now=svc.now(),
            stale_days=svc.settings.region.stale_days,
            selectable=frozenset(t.address for t in teams),
        )

    teams, suggestions = await svc.store.read(load)
    definition = svc.definition
    return {
        "suggestions": suggestions,
        "specialism": specialism,
        "pc4_known": pc4 is not None,
        "part_now": part,
        "region_parts": regionmap.PARTS,
        "region_services": regionmap.SERVICES,
        "definition": definition,
        "values": values,
        "errors": errors,
        "teams": teams,
        "procedure_rows": max(PROCEDURE_ROWS, _rows_in(values)),
        "general_errors": errors.get("", []),
        "ask": ask,
    }


def _rows_in(values: dict[str, str]) -> int:
    idx = [
        int(k.split(".")[1])
        for k in values
        if k.startswith("procedures.") and k.split(".")[1].isdigit()
    ]
    return max(idx) + 1 if idx else 0


def _errors_by_field(exc: forms.FormInvalidError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        out.setdefault(e.field, []).append(e.message_nl)
    return out


def local_minute(svc: Services) -> str:
    """Now on the region's wall clock, as a datetime-local input shows it (the server's own
    zone, often UTC, would date a request an hour or two early)."""
    return deadlines.local(svc.now(), svc.settings.deadlines).strftime("%Y-%m-%dT%H:%M")


@requires("request.create")
@aiohttp_jinja2.template("requests/form.html")
async def new_form(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    values = {
        "kind": "nieuw",
        "urgency": "regulier",
        "issued_at": local_minute(svc),
    }
    return await _form_context(request, values, {})


@requires("request.create")
async def preview(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    ask = _ask_of(post)
    data = forms.parse_form_post(svc.definition, post, ignore=NOT_IN_REQUEST)
    values = forms.flatten(data)
    try:
        prepared = await exchange.prepare(svc, actor, data, reference=PREVIEW_REFERENCE)
    except forms.FormInvalidError as exc:
        ctx = await _form_context(request, values, _errors_by_field(exc), ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        ctx = await _form_context(request, values, {"": [exc.message_nl()]}, ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    return aiohttp_jinja2.render_template(
        "requests/preview.html",
        request,
        {
            "text": prepared.rendered.text,
            "team": prepared.team,
            "payload": json.dumps(data, ensure_ascii=False),
            "error": None,
            "ask": ask,
            # one send per preview: a double click or a resubmit gets the first request's page
            "send_token": secrets.token_urlsafe(18),
        },
    )


@requires("request.create")
async def suggest(request: web.Request) -> web.StreamResponse:
    """The form again, with the regional map's suggestions for the patient's postcode area;
    "Kies dit team" fills the receiver. The postcode travels in this POST body only."""
    post = await request.post()
    svc = request.app[services_key]
    values = forms.flatten(forms.parse_form_post(svc.definition, post, ignore=NOT_IN_REQUEST))
    ctx = await _form_context(
        request,
        values,
        {},
        _ask_of(post),
        specialism=str(post.get("specialism", "")),
        with_suggestions=True,
    )
    chosen = str(post.get("choose", ""))
    if chosen and any(s.address == chosen and s.selectable for s in ctx["suggestions"] or []):
        ctx["values"] = {**values, "receiver.team_address": chosen}
    return aiohttp_jinja2.render_template("requests/form.html", request, ctx)


@requires("request.send")
async def send(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    try:
        data = json.loads(str(post.get("payload", "")))
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise web.HTTPSeeOther("/requests/new")
    ask = _ask_of(post)
    if "back" in post:
        values = forms.flatten(data)
        ctx = await _form_context(request, values, {}, ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx)
    passphrase = str(post.get("passphrase", ""))
    token = str(post.get("send_token", ""))
    try:
        result = await exchange.send(
            svc,
            actor,
            data,
            passphrase,
            ask=ask or None,
            idempotency_key=f"form:{token}" if token else None,
        )
    except forms.FormInvalidError as exc:
        ctx = await _form_context(request, forms.flatten(data), _errors_by_field(exc), ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        prepared_text = ""
        return aiohttp_jinja2.render_template(
            "requests/preview.html",
            request,
            {
                "text": prepared_text,
                "team": None,
                "ask": ask,
                "payload": json.dumps(data, ensure_ascii=False),
                "send_token": token,  # refused, nothing stored: the same send may be retried
                "error": exc.message_nl(),
            },
            status=exc.http_status if exc.http_status != 400 else 422,
        )
    raise web.HTTPSeeOther(f"/requests/{result.reference}")


@requires("request.list")
@aiohttp_jinja2.template("requests/list.html")
async def list_page(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    rows = await svc.store.read(lambda db: exchange.list_requests(db, actor))
    work: list[dict[str, Any]] = []
    if actor.role == "gp" and actor.org_id is not None:
        # The GP's work: orders to evaluate, to extend, or that ran out (references only)
        work = await svc.store.read(lambda db: orders.practice_work(db, actor.org_id or 0))
    return {"rows": rows, "order_work": work}


@requires("request.view")
@aiohttp_jinja2.template("requests/detail.html")
async def detail(request: web.Request) -> dict[str, Any]:
    return await detail_context(request)


async def detail_context(
    request: web.Request,
    *,
    answer_values: dict[str, str] | None = None,
    answer_errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """One request's page (audited view); for a nurse of its current team, the answer form."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    view = await svc.store.write(
        lambda db: exchange.get_request(
            db, actor, reference, source_id=svc.settings.gateway.source_id
        )
    )
    can_answer = (
        actor.role == "nurse"
        and view["state"] == "open"
        and view["kind"] != "intrekking"
        and view["team_id"] in actor.team_ids
    )
    other_teams = await answer.pass_on_choices(svc, view) if can_answer else []
    can_answer = can_answer and not view["purged"]
    text = "" if view["purged"] else exchange.render_text(svc, view)
    return {
        "r": view,
        "text": text,
        "can_answer": can_answer,
        "content_days": svc.settings.retention.content_days,
        "answer_spec": svc.definition.answer,
        "other_teams": other_teams,
        "answer_values": answer_values or {},
        "answer_errors": answer_errors or {},
    }


def setup(app: web.Application) -> None:
    app.router.add_get("/requests", list_page, name="requests")
    app.router.add_get("/requests/new", new_form, name="request_new")
    app.router.add_post("/requests/preview", preview, name="request_preview")
    app.router.add_post("/requests/suggest", suggest, name="request_suggest")
    app.router.add_post("/requests/send", send, name="request_send")
    app.router.add_get(
        r"/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}", detail, name="request_detail"
    )
