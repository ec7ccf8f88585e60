"""Request pages: the GP's form, preview, sign-and-send; the list; one request's page.

Patient data travels only in POST bodies and page content, never in URLs: a request's
page is addressed by its reference.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail import directory, exchange, forms
from securemail.errors import SecuremailError
from securemail.web.keys import ACTOR, services_key

PREVIEW_REFERENCE = "UVZ-CONCEPT"
PROCEDURE_ROWS = 3


async def _form_context(request: web.Request, values: dict[str, str],
                        errors: dict[str, list[str]]) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    teams = await svc.store.read(lambda db: directory.allowed_receivers(
        db, actor.org_id or 0, svc.settings.gateway.passing_on_address))
    definition = svc.definition
    return {
        "definition": definition,
        "values": values,
        "errors": errors,
        "teams": teams,
        "procedure_rows": max(PROCEDURE_ROWS, _rows_in(values)),
        "general_errors": errors.get("", []),
    }


def _rows_in(values: dict[str, str]) -> int:
    idx = [int(k.split(".")[1]) for k in values if k.startswith("procedures.") and
           k.split(".")[1].isdigit()]
    return max(idx) + 1 if idx else 0


def _errors_by_field(exc: forms.FormInvalidError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        out.setdefault(e.field, []).append(e.message_nl)
    return out


@aiohttp_jinja2.template("requests/form.html")
async def new_form(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    values = {"kind": "nieuw", "urgency": "regulier",
              "issued_at": svc.now().astimezone().strftime("%Y-%m-%dT%H:%M")}
    return await _form_context(request, values, {})


async def preview(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    data = forms.parse_form_post(svc.definition, post, ignore=("csrf_token",))
    values = forms.flatten(data)
    try:
        prepared = await exchange.prepare(svc, actor, data, reference=PREVIEW_REFERENCE)
    except forms.FormInvalidError as exc:
        ctx = await _form_context(request, values, _errors_by_field(exc))
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        ctx = await _form_context(request, values, {"": [exc.message_nl()]})
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    return aiohttp_jinja2.render_template("requests/preview.html", request, {
        "text": prepared.rendered.text,
        "team": prepared.team,
        "payload": json.dumps(data, ensure_ascii=False),
        "error": None,
    })


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
    if "back" in post:
        values = forms.flatten(data)
        ctx = await _form_context(request, values, {})
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx)
    passphrase = str(post.get("passphrase", ""))
    try:
        result = await exchange.send(svc, actor, data, passphrase)
    except forms.FormInvalidError as exc:
        ctx = await _form_context(request, forms.flatten(data), _errors_by_field(exc))
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        prepared_text = ""
        return aiohttp_jinja2.render_template("requests/preview.html", request, {
            "text": prepared_text, "team": None,
            "payload": json.dumps(data, ensure_ascii=False), "error": exc.message_nl(),
        }, status=exc.http_status if exc.http_status != 400 else 422)
    raise web.HTTPSeeOther(f"/requests/{result.reference}")


@aiohttp_jinja2.template("requests/list.html")
async def list_page(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    rows = await svc.store.read(lambda db: exchange.list_requests(db, actor))
    return {"rows": rows}


@aiohttp_jinja2.template("requests/detail.html")
async def detail(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    view = await svc.store.write(lambda db: exchange.get_request(
        db, actor, reference, source_id=svc.settings.gateway.source_id))
    return {"r": view, "text": exchange.render_text(svc, view)}


def setup(app: web.Application) -> None:
    app.router.add_get("/requests", list_page, name="requests")
    app.router.add_get("/requests/new", new_form, name="request_new")
    app.router.add_post("/requests/preview", preview, name="request_preview")
    app.router.add_post("/requests/send", send, name="request_send")
    app.router.add_get(r"/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}", detail,
                       name="request_detail")
