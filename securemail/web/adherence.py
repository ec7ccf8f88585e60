"""The region's coordinators: are the agreements kept? /regio/afspraken (page), .csv and
.json for one calendar month (``?maand=YYYY-MM``; the default is the last complete month).

Invariants: every route declares ``adherence.view`` (coordinators and admins; everyone
else is refused by the middleware with an ``access.denied`` row); every read first commits its
``adherence.view``/``adherence.export`` row (adherence.record_read), then reads; the
page, the CSV and the JSON show the same published cells, small counts suppressed; the
URL carries a month, never patient data.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail.errors import InputError
from securemail.region import adherence
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

TABLE_KEYS = {table: adherence.table_columns(table) for table in adherence.TABLES}


def _month(request: web.Request) -> str:
    svc = request.app[services_key]
    raw = request.query.get("maand", "")
    if not raw:
        return adherence.previous_month(svc.now(), svc.settings.deadlines.timezone)
    return adherence.parse_month(raw)


async def _read(request: web.Request, month: str, export: str = "") -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]
    calendar = svc.settings.deadlines
    await svc.store.write(lambda db: adherence.record_read(db, actor, month, export=export))
    rows = await svc.store.read(lambda db: adherence.load_month(db, month, calendar))
    now = svc.now()
    return await asyncio.to_thread(rows.figures, now=now, calendar=calendar)


@requires("adherence.view")
async def page(request: web.Request) -> web.StreamResponse:
    try:
        month = _month(request)
    except InputError:
        return aiohttp_jinja2.render_template(
            "adherence/page.html",
            request,
            {"month": request.query.get("maand", "")[:20], "report": None,
             "error": "Maand: gebruik de vorm JJJJ-MM, bijvoorbeeld 2026-11.",
             "columns": adherence.COLUMNS, "tables": adherence.TABLES,
             "table_keys": TABLE_KEYS, "row_subjects": adherence.ROW_SUBJECTS},
            status=422,
        )  # fmt: skip
    report = await _read(request, month)
    return aiohttp_jinja2.render_template(
        "adherence/page.html",
        request,
        {"month": month, "report": report, "error": None, "columns": adherence.COLUMNS,
         "tables": adherence.TABLES, "table_keys": TABLE_KEYS,
         "row_subjects": adherence.ROW_SUBJECTS},
    )  # fmt: skip


def _bad_month() -> web.Response:
    return web.json_response(
        {"error": "input.invalid", "field": "maand",
         "message_nl": "Maand: gebruik de vorm JJJJ-MM, bijvoorbeeld 2026-11."},
        status=422,
    )  # fmt: skip


@requires("adherence.view")
async def csv_export(request: web.Request) -> web.StreamResponse:
    try:
        month = _month(request)
    except InputError:
        return _bad_month()
    report = await _read(request, month, export="csv")
    return web.Response(
        body=adherence.to_csv(report).encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="afspraken-{month}.csv"',
        },
    )


@requires("adherence.view")
async def json_export(request: web.Request) -> web.StreamResponse:
    try:
        month = _month(request)
    except InputError:
        return _bad_month()
    report = await _read(request, month, export="json")
    return web.Response(
        text=json.dumps(report, ensure_ascii=False), content_type="application/json"
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/regio/afspraken", page, name="adherence")
    app.router.add_get("/regio/afspraken.csv", csv_export, name="adherence_csv")
    app.router.add_get("/regio/afspraken.json", json_export, name="adherence_json")
