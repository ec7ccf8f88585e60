"""The JSON API for a GP practice's information system (HIS): send a request, read its status.

Invariants: an API call authenticates with ``Authorization: Bearer <token>`` only (no
cookie, hence no CSRF token); it acts as the token's GP, through the same access
policy as the pages, narrowed further by the token's scopes; every send still needs
the GP's signing passphrase in the body, which is passed to gpg and never stored or
logged; a bad token answers 401 and writes an ``auth.fail`` row; a status read shows
no patient content, and another practice's request answers 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils
from aiohttp import web

from securemail.access import Resource, require
from securemail.errors import InputError, NotFoundError
from securemail.exchange import answer_copy
from securemail.exchange import send as exchange
from securemail.web import requests as requestpages
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InputError("send application/json", field="content-type")
    try:
        body = await request.json()
    except RecursionError:  # nested deeper than the parser can follow: not a request
        raise InputError("the body is nested too deeply", field="body") from None
    except ValueError:
        raise InputError("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object", field="body")
    return body


@requires("request.send")
async def send_request(request: web.Request) -> web.StreamResponse:
    """POST /api/requests {"request": {...}, "passphrase": "...", "to": "team@..."?}, with an
    optional ``Idempotency-Key`` header (docs/api.md)."""
    svc = request.app[services_key]
    body = await _json_body(request)
    data, passphrase, to = body.get("request"), body.get("passphrase"), body.get("to")
    if not isinstance(data, dict):
        raise InputError(
            "'request' must be the execution request as a JSON object", field="request"
        )
    if not isinstance(passphrase, str) or not passphrase:
        raise InputError(
            "'passphrase' (the GP's signing passphrase) is required for every send",
            field="passphrase",
        )
    if to is not None and not isinstance(to, str):
        raise InputError("'to' must be a team address", field="to")
    # A repeat under the same key (a client that timed out and retried) gets the first answer.
    key = request.headers.get("Idempotency-Key")
    result = await exchange.send(svc, request[ACTOR], data, passphrase, to=to, idempotency_key=key)
    return web.json_response(
        {
            "reference": result.reference,
            "team_address": result.team_address,
            "recipient_fingerprints": list(result.recipient_fingerprints),
            "skipped_members": list(result.skipped),
            "status_url": f"/api/requests/{result.reference}/status",
        },
        status=201,
    )


@requires("request.status")
async def request_status(request: web.Request) -> web.StreamResponse:
    """GET /api/requests/{reference}/status: state and delivery, no patient content."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]

    def read(db: sqlite_utils.Database) -> dict[str, Any]:
        row = exchange.request_row(db, reference)
        if row is None:
            raise NotFoundError("request not found")
        require(
            actor,
            "request.status",
            Resource(
                "request",
                org_id=row["practice_org_id"],
                team_ids=frozenset({row["team_id"]}),
                ref=reference,
            ),
            hide=True,
        )
        return exchange.status(db, reference)

    return web.json_response(await svc.store.read(read))


@requires("request.view")
async def request_answer(request: web.Request) -> web.StreamResponse:
    """GET /api/requests/{reference}: the status and the team's answer (nurse in charge,
    her phone, the start of care...) for the request's own practice; 404 for any other."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    return web.json_response(
        await svc.store.write(lambda db: answer_copy.answer_for_practice(db, actor, reference))
    )


@requires("request.record")
async def request_dossier(request: web.Request) -> web.StreamResponse:
    """GET /api/requests/{reference}/dossier.pdf|json|fhir: "voor het dossier" for the practice's
    HIS (a token of that practice with request:read); 404 for any other."""
    return await requestpages.dossier_response(request)


def setup(app: web.Application) -> None:
    app.router.add_get(
        r"/api/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}",
        request_answer,
        name="api_request_answer",
    )
    app.router.add_get(
        r"/api/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/dossier.{fmt:pdf|json|fhir}",
        request_dossier,
        name="api_request_dossier",
    )
    app.router.add_post("/api/requests", send_request, name="api_request_send")
    app.router.add_get(
        r"/api/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/status",
        request_status,
        name="api_request_status",
    )
