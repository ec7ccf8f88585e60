"""Nurse pages: the team's answer on a request's page (accept, decline, pass on), and the
team's end of an order it accepted ("Opdracht beëindigen").

The answer form sits on the request's own page (``/requests/{reference}``, see
web/requests.py); it posts here. Thin: parse the post, call ``answer.record_answer``,
redirect; a refusal re-renders the page with the errors next to the fields and the values
kept. Asks (a nurse asking a practice for a request) live in web/asks.py.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from securemail.errors import SecuremailError
from securemail.exchange import answer, order_end
from securemail.form import request as forms
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires
from securemail.web.requests import _errors_by_field, detail_context


@requires("request.answer")
async def post_answer(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    post = await request.post()
    try:
        data = forms.parse_form_post(svc.definition, post, root="answer", ignore=("csrf_token",))
    except forms.FormShapeError as exc:
        ctx = await detail_context(
            request, answer_values=forms.flatten(exc.data), answer_errors=_errors_by_field(exc)
        )
        return aiohttp_jinja2.render_template("requests/detail.html", request, ctx, status=422)
    values = forms.flatten(data)
    try:
        result = await answer.record_answer(svc, actor, reference, data)
    except forms.FormInvalidError as exc:
        ctx = await detail_context(
            request, answer_values=values, answer_errors=_errors_by_field(exc)
        )
        return aiohttp_jinja2.render_template("requests/detail.html", request, ctx, status=422)
    except answer.AnswerClosedError as exc:
        ctx = await detail_context(
            request, answer_values=values, answer_errors={"": [exc.message_nl()]}
        )
        return aiohttp_jinja2.render_template("requests/detail.html", request, ctx, status=409)
    except SecuremailError as exc:
        if exc.http_status == 404:
            raise
        ctx = await detail_context(
            request, answer_values=values, answer_errors={"": [exc.message_nl()]}
        )
        return aiohttp_jinja2.render_template(
            "requests/detail.html",
            request,
            ctx,
            status=exc.http_status if exc.http_status != 400 else 422,
        )
    if result.status == answer.PASS_ON or result.to_desk:
        # The request is with the other team now; this team's list shows where it went.
        raise web.HTTPSeeOther("/requests")
    raise web.HTTPSeeOther(f"/requests/{reference}")


@requires("order.end")
async def post_end(request: web.Request) -> web.StreamResponse:
    """POST /requests/{ref}/beeindigen: the team ends the order it accepted; a refusal
    re-renders the page with the error (422 field, 409 not endable); another team's 404."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    post = await request.post()
    values = {k: str(post.get(k, "") or "")[: order_end.TEXT_MAX * 2] for k in ("reason", "text")}
    try:
        await order_end.end_order(svc, actor, reference, dict(values))
    except SecuremailError as exc:
        if exc.http_status == 404:
            raise
        if isinstance(exc, forms.FormInvalidError):
            errors, status = _errors_by_field(exc), 422
        else:
            errors, status = {"": [exc.message_nl()]}, exc.http_status
        ctx = await detail_context(request, end_values=values, end_errors=errors)
        return aiohttp_jinja2.render_template("requests/detail.html", request, ctx, status=status)
    raise web.HTTPSeeOther(f"/requests/{reference}")


def setup(app: web.Application) -> None:
    app.router.add_post(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/answer",
        post_answer,
        name="request_answer",
    )
    app.router.add_post(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/beeindigen",
        post_end,
        name="request_end",
    )
