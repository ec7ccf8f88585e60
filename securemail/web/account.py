"""A person's own account: second factor, recovery codes, sessions, and (GPs) API tokens.

Invariants: each page acts only on the signed-in person's own account (policy action
``account.self``) or, for tokens, on their own practice's tokens (``token.manage``);
re-pairing an authenticator needs the current password, and new recovery codes the password
and a current code, as well as the session (a hijacked session alone cannot make itself
permanent); each wrong password or code there counts toward the account's lock like a
failed login (audited ``auth.fail``), and while locked nothing is checked, so a session is
no password oracle; new recovery codes and a new API token are shown on one response only
and stored only hashed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail.access import Resource, require
from securemail.accounts import apitoken, auth, totp
from securemail.errors import InputError
from securemail.web.keys import ACTOR, services_key
from securemail.web.login import locked_message, lockout_policy
from securemail.web.middleware import requires
from securemail.web.totp import recovery_context


def _own(request: web.Request) -> None:
    actor = request[ACTOR]
    require(actor, "account.self", Resource("account", ref=str(actor.user_id)))


async def _context(request: web.Request, **extra: Any) -> dict[str, Any]:
    svc = request.app[services_key]
    actor = request[ACTOR]

    def read(db: sqlite_utils.Database) -> dict[str, Any]:
        row = db.execute(
            "SELECT totp_enrolled_at FROM user_security WHERE user_id = ?", [actor.user_id]
        ).fetchone()
        tokens = apitoken.list_tokens(db, actor) if actor.role == "gp" else []
        return {
            "enrolled_at": row[0] if row else "",
            "recovery_left": totp.recovery_codes_left(db, actor.user_id),
            "tokens": tokens,
            "scopes": list(apitoken.SCOPES),
        }

    ctx = await svc.store.read(read)
    ctx.update({"error": None, "notice": None})
    ctx.update(extra)
    return ctx


@requires("account.self")
async def account_page(request: web.Request) -> web.StreamResponse:
    _own(request)
    return aiohttp_jinja2.render_template("account/account.html", request, await _context(request))


async def _reauthenticate(request: web.Request, password: str, code: str | None) -> str | None:
    """None when the signed-in person's password (and, when ``code`` is given, a current
    second-factor code) is right; otherwise the Dutch refusal. Wrong ones count toward the
    account's lock, as at login; while it is locked nothing is checked."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    now, policy = svc.now(), lockout_policy(request)
    locked = await svc.store.read(lambda db: totp.locked_until(db, actor.user_id, now))
    if locked is not None:
        return locked_message(locked)
    found = await svc.store.read(lambda db: auth.find_user(db, actor.username))
    password_ok = found is not None and await asyncio.to_thread(
        auth.check_password, password, found[1]
    )
    if not password_ok:
        verdict = await svc.store.write(
            lambda db: totp.register_failure(db, actor, "bad_password", now=now, policy=policy)
        )
        if verdict.locked_until is not None:
            return locked_message(verdict.locked_until)
        return "Uw wachtwoord klopt niet."
    if code is None:
        return None
    verdict = await svc.store.write(
        lambda db: totp.verify_second_factor(db, actor, code[:40], now=now, policy=policy)
    )
    if verdict.ok:
        return None
    if verdict.locked_until is not None:
        return locked_message(verdict.locked_until)
    return "De code klopt niet."


@requires("account.self")
async def renew_codes(request: web.Request) -> web.StreamResponse:
    _own(request)
    svc = request.app[services_key]
    form = await request.post()
    refusal = await _reauthenticate(
        request, str(form.get("password", "")), str(form.get("code", ""))
    )
    if refusal is not None:
        return aiohttp_jinja2.render_template(
            "account/account.html", request, await _context(request, error=refusal), status=422
        )
    codes = await svc.store.write(
        lambda db: totp.renew_recovery_codes(db, request[ACTOR], now=svc.now())
    )
    return aiohttp_jinja2.render_template(
        "totp/recovery_codes.html", request, recovery_context(codes, first=False)
    )


@requires("account.self")
async def repair_page(request: web.Request) -> web.StreamResponse:
    _own(request)
    svc = request.app[services_key]
    actor = request[ACTOR]
    enrolment = await svc.store.write(
        lambda db: totp.begin_enrolment(
            db, actor.user_id, actor.username, issuer=svc.settings.gateway.name, now=svc.now()
        )
    )
    return aiohttp_jinja2.render_template(
        "totp/enrol.html",
        request,
        {"enrolment": enrolment, "error": None, "action": "/account/totp"},
    )


@requires("account.self")
async def repair_post(request: web.Request) -> web.StreamResponse:
    _own(request)
    svc = request.app[services_key]
    actor = request[ACTOR]
    form = await request.post()
    refusal = await _reauthenticate(request, str(form.get("password", "")), None)
    try:
        if refusal is not None:
            raise totp.SecondFactorError("password does not match")
        codes = await svc.store.write(
            lambda db: totp.confirm_enrolment(
                db,
                actor,
                str(form.get("code", ""))[:40],
                now=svc.now(),
            )
        )
    except (totp.SecondFactorError, totp.EnrolmentExpiredError) as exc:
        message = refusal or exc.message_nl()
        return aiohttp_jinja2.render_template(
            "totp/enrol.html",
            request,
            {"enrolment": None, "error": message, "action": "/account/totp"},
            status=exc.http_status,
        )
    return aiohttp_jinja2.render_template(
        "totp/recovery_codes.html", request, recovery_context(codes, first=False)
    )


@requires("token.manage")
async def token_create(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    form = await request.post()
    scopes = [str(v) for v in form.getall("scopes", [])]
    try:
        token, row = await svc.store.write(
            lambda db: apitoken.create(
                db,
                request[ACTOR],
                name=str(form.get("name", "")),
                scopes=scopes,
                now=svc.now(),
                source_id=svc.settings.gateway.source_id,
            )
        )
    except InputError as exc:
        return aiohttp_jinja2.render_template(
            "account/account.html",
            request,
            await _context(request, error=exc.message_nl()),
            status=422,
        )
    return aiohttp_jinja2.render_template(
        "account/token_created.html", request, {"token": token, "row": row}
    )


@requires("token.manage")
async def token_revoke(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    token_id = int(request.match_info["token_id"])
    await svc.store.write(
        lambda db: apitoken.revoke(
            db, request[ACTOR], token_id, now=svc.now(), source_id=svc.settings.gateway.source_id
        )
    )
    raise web.HTTPSeeOther("/account")


def setup(app: web.Application) -> None:
    app.router.add_get("/account", account_page, name="account")
    app.router.add_post("/account/recovery-codes", renew_codes, name="account_recovery_codes")
    app.router.add_get("/account/totp", repair_page, name="account_totp")
    app.router.add_post("/account/totp", repair_post, name="account_totp_post")
    app.router.add_post("/account/tokens", token_create, name="token_create")
    app.router.add_post(
        r"/account/tokens/{token_id:[0-9]{1,12}}/revoke", token_revoke, name="token_revoke"
    )
