"""The work list page (``/requests``): GET for a page (``?page=N``), POST for a search whose
text stays in the body, never in the URL. Thin: parse, call ``exchange.worklist.work_list``
(scoping, sealed names, one audit row per shown row, in one write), render.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.exchange import orders
from securemail.exchange import worklist as queries
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires


def _page_number(value: object) -> int:
    """A page number of at most six digits; anything else is page 1 (the query clamps)."""
    text = str(value or "1")
    return int(text) if text.isdigit() and len(text) <= 6 else 1


@requires("request.list")
async def list_page(request: web.Request) -> web.StreamResponse:
    """The work list or a search in it; each shown row is audited (exchange/worklist.py)."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    query, page = "", _page_number(request.query.get("page"))
    if request.method == "POST":
        post = await request.post()
        query, page = str(post.get("q", "")), _page_number(post.get("page"))
    source_id = svc.settings.gateway.source_id
    result = await svc.store.write(
        lambda db: queries.work_list(db, actor, query=query, page=page, source_id=source_id)
    )
    work: list[dict[str, Any]] = []
    if actor.role == "gp" and actor.org_id is not None:
        # The GP's work: orders to evaluate, to extend, or that ran out (references only)
        org = actor.org_id
        work = await svc.store.read(lambda db: orders.practice_work(db, org))
    return aiohttp_jinja2.render_template(
        "requests/list.html", request, {"wl": result, "rows": result.rows, "order_work": work}
    )
