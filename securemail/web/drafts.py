"""Draft pages: save the request form half-way, find it again, continue or throw it away.

The form's "Opslaan als concept" button (and the session warning's "Nu opslaan") post the
form here; the draft is sealed and kept for the practice (securemail.exchange.drafts). Every
change is a POST that redirects (Post/Redirect/Get), so a refresh changes nothing; a draft is
addressed by its random id, never by anything about the patient.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.exchange import drafts
from securemail.form import request as forms
from securemail.web import requests as request_pages
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

#: Page-steering fields of the form that a draft does not keep.
NOT_KEPT = frozenset({"csrf_token", "draft", "suggest", "choose", "specialism", "payload"})


def _now(request: web.Request) -> str:
    now = request.app[services_key].now().astimezone(UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _values(post: Any) -> dict[str, str]:
    """The form's fields as typed, or, from the preview (an assistant's "save for the GP"),
    the checked request it carries as ``payload``."""
    payload = post.get("payload")
    if isinstance(payload, str) and payload:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            flat = forms.flatten({k: v for k, v in data.items() if k != "principal"})
            extra = {k: str(post[k]) for k in ("ask",) if post.get(k)}
            return {**{k: str(v) for k, v in flat.items() if str(v) != ""}, **extra}
    return {
        str(k): str(v)
        for k, v in post.items()
        if k not in NOT_KEPT and isinstance(v, str) and v.strip() != ""
    }


@requires("draft.save")
async def save(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    values = _values(post)
    existing = request_pages.draft_of(post)
    now = _now(request)
    draft_id = await svc.store.write(
        lambda db: drafts.save(db, actor, values, now=now, draft_id=existing)
    )
    raise web.HTTPSeeOther(f"/drafts/{draft_id}?opgeslagen=1")


@requires("draft.view")
async def list_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    rows = await svc.store.read(lambda db: drafts.practice_drafts(db, actor))
    return aiohttp_jinja2.render_template("drafts/list.html", request, {"rows": rows})


@requires("draft.view")
async def open_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    draft_id = request.match_info["draft"]
    values = await svc.store.write(lambda db: drafts.open_draft(db, actor, draft_id))
    ask = request_pages.ask_of(values)
    ctx = await request_pages.form_context(request, values, {}, ask, draft=draft_id)
    ctx["draft_saved"] = request.query.get("opgeslagen") == "1"
    return aiohttp_jinja2.render_template("requests/form.html", request, ctx)


@requires("draft.save")
async def delete(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    draft_id = request.match_info["draft"]
    await svc.store.write(lambda db: drafts.delete(db, actor, draft_id))
    raise web.HTTPSeeOther("/drafts")


def setup(app: web.Application) -> None:
    app.router.add_get("/drafts", list_page, name="drafts")
    app.router.add_post("/drafts/save", save, name="draft_save")
    app.router.add_get(r"/drafts/{draft:[A-Za-z0-9_-]{22}}", open_page, name="draft_open")
    app.router.add_post(r"/drafts/{draft:[A-Za-z0-9_-]{22}}/delete", delete, name="draft_delete")
