"""Ask pages: a nurse asks a practice for an execution request, a consult or a home visit;
the practice's (and the team's) work list; one ask's page, where the GP answers a consult or
home-visit ask and the nurse reads that answer; and "Verzoek opstellen", the request form
prefilled from an execution-request ask.

Patient data travels only in POST bodies and page content: an ask is addressed by its
reference, and the prefilled form is rendered server-side from the stored ask (a POST),
never from values in a URL.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.exchange import ask_answer, asks
from securemail.form import request as forms
from securemail.region import directory
from securemail.web import thread as threadview
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires
from securemail.web.requests import _errors_by_field, form_context, local_minute


async def _new_context(
    request: web.Request, values: dict[str, str], errors: dict[str, list[str]]
) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]

    def load(db: Any) -> tuple[list[directory.Team], list[directory.Organisation]]:
        teams = [directory.team_by_id(db, t) for t in sorted(actor.team_ids)]
        return teams, asks.practices(db, actor)

    teams, practices = await svc.store.read(load)
    return {
        "values": values,
        "errors": errors,
        "teams": teams,
        "practices": practices,
        "labels": asks.LABELS,
        "kinds": asks.ASK_KINDS,
        "procedures": list(svc.definition.procedures.values()),
        "general_errors": errors.get("", []),
    }


@requires("ask.create")
@aiohttp_jinja2.template("asks/new.html")
async def new_ask(request: web.Request) -> dict[str, Any]:
    return await _new_context(
        request, {"urgency": "regulier", "ask_kind": "uitvoeringsverzoek"}, {}
    )


@requires("ask.create")
async def create_ask(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    post = await request.post()
    values = {k: str(post.get(k, "")) for k in asks.LABELS}
    try:
        result = await asks.create(svc, request[ACTOR], values)
    except forms.FormInvalidError as exc:
        ctx = await _new_context(request, values, _errors_by_field(exc))
        return aiohttp_jinja2.render_template("asks/new.html", request, ctx, status=422)
    raise web.HTTPSeeOther(f"/asks/{result.reference}")


@requires("ask.view")
@aiohttp_jinja2.template("asks/list.html")
async def list_asks(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    rows = await svc.store.read(lambda db: asks.list_asks(db, actor))
    return {
        "rows": rows,
        "procedure_label": svc.definition.procedure_label,
        "kinds": asks.ASK_KINDS,
    }


async def _detail_context(
    request: web.Request,
    answer: str = "",
    errors: dict[str, list[str]] | None = None,
    *,
    thread_body: str = "",
    thread_errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]

    def load(db: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        # The conversation is read (thread.read) in the write that records ask.view.
        return asks.get_ask(db, actor, reference), threadview.entries(db, actor, reference)

    ask, shown = await svc.store.write(load)
    return {
        **threadview.context(
            actor,
            reference,
            shown,
            page="asks",
            purged=ask["purged"],
            body=thread_body,
            errors=thread_errors,
        ),
        "a": ask,
        "procedure_label": svc.definition.procedure_label,
        "labels": asks.LABELS,
        "kinds": asks.ASK_KINDS,
        "content_days": svc.settings.retention.content_days,
        "answer": answer,
        "answer_errors": errors or {},
        "max_answer": ask_answer.MAX_ANSWER,
    }


@requires("ask.view")
@aiohttp_jinja2.template("asks/detail.html")
async def ask_detail(request: web.Request) -> dict[str, Any]:
    return await _detail_context(request)


@requires("ask.answer")
async def answer(request: web.Request) -> web.StreamResponse:
    """The GP's answer on a consult or home-visit ask (POST; the text in the body only)."""
    svc = request.app[services_key]
    reference = request.match_info["reference"]
    text = str((await request.post()).get("answer", ""))
    try:
        await ask_answer.answer_ask(svc, request[ACTOR], reference, text)
    except forms.FormInvalidError as exc:
        ctx = await _detail_context(request, text, _errors_by_field(exc))
        return aiohttp_jinja2.render_template("asks/detail.html", request, ctx, status=422)
    raise web.HTTPSeeOther(f"/asks/{reference}")


@requires("thread.post")
async def thread_post(request: web.Request) -> web.StreamResponse:
    """A message on the ask's conversation (POST/Redirect/Get); the GP's first one on an
    open consult or home-visit ask answers it."""
    refused = await threadview.submit(request)
    if refused is None:
        raise web.HTTPSeeOther(f"/asks/{request.match_info['reference']}#thread")
    ctx = await _detail_context(request, thread_body=refused.body, thread_errors=refused.errors)
    return aiohttp_jinja2.render_template("asks/detail.html", request, ctx, status=refused.status)


@requires("request.create")
async def draft_from_ask(request: web.Request) -> web.StreamResponse:
    """The request form, prefilled server-side from the stored ask (audited ask.view)."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    ask = await svc.store.write(lambda db: asks.get_ask(db, actor, reference))
    values = forms.flatten(asks.prefill(ask))
    values["issued_at"] = local_minute(svc)
    ctx = await form_context(request, values, {}, reference if ask["state"] == "open" else "")
    return aiohttp_jinja2.render_template("requests/form.html", request, ctx)


def setup(app: web.Application) -> None:
    # Any reference shape routes here (an unknown one is "not found" after the access gate),
    # so the gate answers the same for every path; only an ASK-... reference can exist.
    ref = r"{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}"
    app.router.add_get("/asks", list_asks, name="asks")
    app.router.add_get("/asks/new", new_ask, name="ask_new")
    app.router.add_post("/asks/new", create_ask, name="ask_create")
    app.router.add_get(f"/asks/{ref}", ask_detail, name="ask_detail")
    app.router.add_post(f"/asks/{ref}/draft", draft_from_ask, name="ask_draft")
    app.router.add_post(f"/asks/{ref}/answer", answer, name="ask_answer")
    app.router.add_post(f"/asks/{ref}/thread", thread_post, name="ask_thread")
