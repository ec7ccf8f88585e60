"""The privacy officer's consent register: counts and lists of the organisation's register,
and the FHIR R4 export.

Routes:

- ``GET /privacy/consents`` (audit.view: the officer's page, not the GP's): the counts
  (active, withdrawn, expired, expiring within 30 days, without evidence, entered in
  error) and one list per category, each capped at ``CAP`` rows; ``?list=<category>&page=n``
  shows one whole category, ``PAGE`` rows a page. Audited ``consent.view``.
- ``POST /privacy/consents/export`` (audit.export): a FHIR R4 Bundle of the organisation's
  consents as a download (``application/fhir+json``), audited ``consent.export``.

Invariants: scoped to the actor's own organisation (the register functions check
``consent.view`` on it); the query string names a category and a page number, never a
patient; the lists show register fields only (no clinical content): the BSN, because an
audit row about the register names the patient.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail import consent
from securemail.access import org_of
from securemail.consent import ConsentRecord
from securemail.web.consents import LABELS, day_formatters, recipient_names, recipient_value
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

CAP = 25
PAGE = 100
EXPIRING_DAYS = 30
LISTS = {
    "active": "Actief",
    "expiring": f"Verloopt binnen {EXPIRING_DAYS} dagen",
    "without_evidence": "Actief zonder bewijs",
    "withdrawn": "Ingetrokken",
    "expired": "Verlopen",
    "entered_in_error": "Foutief ingevoerd",
}


def categorise(rows: list[ConsentRecord], now: datetime) -> dict[str, list[ConsentRecord]]:
    """Current versions per list; the same rules as consent.register_overview."""
    soon = now + timedelta(days=EXPIRING_DAYS)
    out: dict[str, list[ConsentRecord]] = {k: [] for k in LISTS}
    for r in rows:
        state = r.status_at(now)
        out[state.replace("-", "_")].append(r)
        if state != "active":
            continue
        if r.valid_until is not None and r.valid_until <= soon:
            out["expiring"].append(r)
        if not r.evidence_ref and not r.evidence_sha256:
            out["without_evidence"].append(r)
    return out


def _page_number(text: str) -> int:
    return int(text) if text.isdigit() and 0 < len(text) <= 6 and int(text) > 0 else 1


@requires("audit.view")
async def register_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    now = svc.now()
    chosen = request.query.get("list", "")
    chosen = chosen if chosen in LISTS else ""
    page = _page_number(request.query.get("page", "1"))

    def load(db: sqlite_utils.Database) -> dict[str, Any]:
        org = org_of(actor)
        counts = consent.register_overview(db, org, now, expiring_days=EXPIRING_DAYS)
        names = recipient_names(db)
        # The audited read goes last: the page's own consent.view row.
        rows = consent.view_records(db, actor, source_org_id=org, now=now)
        return {"counts": counts, "names": names, "lists": categorise(rows, now)}

    data = await svc.store.write(load)
    lists: dict[str, list[ConsentRecord]] = data["lists"]
    if chosen:
        total = len(lists[chosen])
        pages = max(1, -(-total // PAGE))
        page = min(page, pages)
        shown = {chosen: lists[chosen][(page - 1) * PAGE : page * PAGE]}
    else:
        pages = 1
        shown = {k: v[:CAP] for k, v in lists.items()}
    return aiohttp_jinja2.render_template(
        "consents/register.html",
        request,
        {
            "counts": data["counts"],
            "names": data["names"],
            "titles": LISTS,
            "shown": shown,
            "totals": {k: len(v) for k, v in lists.items()},
            "chosen": chosen,
            "page": page,
            "pages": pages,
            "cap": CAP,
            "now": now,
            "labels": LABELS,
            "value_of": recipient_value,
            **day_formatters(ZoneInfo(svc.settings.deadlines.timezone)),
        },
    )


@requires("audit.export")
async def export(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    now = svc.now()
    bundle = await svc.store.write(
        lambda db: consent.export_fhir(db, actor, source_org_id=org_of(actor), now=now)
    )
    body = json.dumps(bundle, ensure_ascii=False, indent=2).encode()
    name = f"toestemmingen-{now.date().isoformat()}.fhir.json"
    return web.Response(
        body=body,
        content_type="application/fhir+json",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def setup(app: web.Application) -> None:
    # Names of our own: /privacy/* else belongs to the audit console (securemail.web.privacy).
    app.router.add_get("/privacy/consents", register_page, name="consent_register")
    app.router.add_post("/privacy/consents/export", export, name="consent_register_export")
