"""The JSON API for a GP practice's information system (HIS): send a request, read its status.

Invariants: an API call authenticates with ``Authorization: Bearer <token>`` only (no
cookie, hence no CSRF token); it acts as the token's GP, through the same access
policy as the pages, narrowed further by the token's scopes; every send still needs
the GP's signing passphrase in the body, which is passed to gpg and never stored or
logged; a bad token answers 401 and writes an ``auth.fail`` row; a status read shows
no patient content, and another practice's request answers 404 exactly like a missing one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlite_utils
from aiohttp import web

from securemail.access import Actor, Resource, require
from securemail.accounts import apitoken, auth
from securemail.audit import trail as audit
from securemail.errors import InputError, NotFoundError
from securemail.exchange import send as exchange
from securemail.web.keys import ACTOR, services_key
from securemail.web.login import throttle_key
from securemail.web.middleware import access_point, requires


def _unauthorised(error: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=f'{{"error": "{error}"}}',
        content_type="application/json",
        headers={"WWW-Authenticate": f'Bearer realm="securemail", error="{error}"'},
    )


async def actor_from_token(request: web.Request) -> Actor:
    """The Actor a bearer token acts as (its GP, its scopes), or raise 401."""
    svc = request.app[services_key]
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    now = svc.now()
    ap = access_point(request)
    throttle = request.app[throttle_key]
    if throttle.blocked(ap, now):
        raise web.HTTPTooManyRequests(
            text='{"error": "auth.throttled"}', content_type="application/json"
        )

    def check(db: sqlite_utils.Database) -> Actor | str:
        if scheme.lower() != "bearer":
            return "unsupported authorization scheme"
        try:
            token = apitoken.authenticate(db, value.strip(), now=now)
        except apitoken.TokenInvalidError as exc:
            return exc.reason
        user = auth.user_by_id(db, token.user_id)
        if not user.active or user.role != "gp" or user.org_id != token.org_id:
            return "token owner no longer a GP of the practice"
        actor = auth.actor_for(db, user, f"api:{token.prefix}@{ap}")
        return dataclasses.replace(actor, token_actions=apitoken.scoped_actions(token.scopes))

    found = await svc.store.write(check)
    if isinstance(found, Actor):
        return found
    throttle.fail(ap, now)
    await svc.store.write(
        lambda db: audit.record(
            db,
            audit.AuditEvent(
                event_code="auth.fail",
                access_point=ap,
                outcome="refused",
                outcome_detail=f"api token: {found}",
            ),
            source_id=svc.settings.gateway.source_id,
        )
    )
    raise _unauthorised("invalid_token")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InputError("send application/json", field="content-type")
    try:
        body = await request.json()
    except ValueError:
        raise InputError("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object", field="body")
    return body


@requires("request.send")
async def send_request(request: web.Request) -> web.StreamResponse:
    """POST /api/requests {"request": {...}, "passphrase": "...", "to": "team@..."?}."""
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
    result = await exchange.send(svc, request[ACTOR], data, passphrase, to=to)
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


def setup(app: web.Application) -> None:
    app.router.add_post("/api/requests", send_request, name="api_request_send")
    app.router.add_get(
        r"/api/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}/status",
        request_status,
        name="api_request_status",
    )
