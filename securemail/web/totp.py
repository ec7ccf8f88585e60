"""The second login step: a TOTP or recovery code, or (first login, after an admin reset)
pairing an authenticator app.

Invariants: these pages serve only a password-only session (a full one is sent home);
pairing is offered only while the account has no confirmed authenticator, so a stolen
password cannot re-pair someone's account; the QR code and the secret are shown on one
response only (each visit makes a new secret), the recovery codes on one response
only; on success the password-only session ends and a new full session id is issued.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail.accounts import session, totp
from securemail.audit import trail as audit
from securemail.web.keys import ACTOR, SESSION, services_key
from securemail.web.login import (
    locked_message,
    lockout_policy,
    render_login,
    set_session_cookie,
)
from securemail.web.middleware import access_point
from securemail.web.throttle import AccountSources, sources_key


def _password_stage(request: web.Request) -> None:
    if request[SESSION].stage == "full":
        raise web.HTTPSeeOther("/")


def _step_up(db: sqlite_utils.Database, request: web.Request) -> str:
    """End the password-only session and open a full one with a new id (rotation). The page
    rendered next uses the new session's CSRF token."""
    sess = request[SESSION]
    session.end(db, sess)
    sid, full = session.create(
        db,
        sess.user_id,
        now=request.app[services_key].now(),
        stage="full",
        access_point=access_point(request),
    )
    request[SESSION] = full
    return sid


async def totp_page(request: web.Request) -> web.StreamResponse:
    _password_stage(request)
    svc = request.app[services_key]
    if await svc.store.read(lambda db: totp.needs_enrolment(db, request[SESSION].user_id)):
        raise web.HTTPSeeOther("/login/enrol")
    return aiohttp_jinja2.render_template("totp/code.html", request, {"error": None})


async def totp_post(request: web.Request) -> web.StreamResponse:
    _password_stage(request)
    svc = request.app[services_key]
    actor = request[ACTOR]
    code = str((await request.post()).get("code", ""))[:40]
    now = svc.now()
    policy = lockout_policy(request)

    sources = request.app[sources_key]
    here = AccountSources.key(actor.user_id, access_point(request))
    lock_applies = sources.blocked(here, now)

    def check(db: sqlite_utils.Database) -> tuple[totp.Verdict, str | None]:
        verdict = totp.verify_second_factor(
            db, actor, code, now=now, policy=policy, lock_applies=lock_applies
        )
        if verdict.ok:
            return verdict, _step_up(db, request)
        if verdict.reason == "locked":
            session.end(db, request[SESSION])
        return verdict, None

    verdict, sid = await svc.store.write(check)
    if not verdict.ok and verdict.reason != "not_enrolled":
        sources.fail(here, now)
    if verdict.reason == "not_enrolled":
        raise web.HTTPSeeOther("/login/enrol")
    if verdict.reason == "locked" and verdict.locked_until is not None:
        locked = render_login(request, status=429, error=locked_message(verdict.locked_until))
        locked.del_cookie(session.COOKIE, path="/")
        return locked
    if sid is None:
        return aiohttp_jinja2.render_template(
            "totp/code.html",
            request,
            {
                "error": "Deze code klopt niet of is al gebruikt. Wacht op de volgende code van uw "
                "app, of gebruik een herstelcode."
            },
            status=401,
        )
    if verdict.method == "recovery_code":
        response: web.StreamResponse = aiohttp_jinja2.render_template(
            "totp/recovered.html", request, {"left": verdict.recovery_left}
        )
    else:
        response = web.HTTPSeeOther("/")
    set_session_cookie(request, response, sid)
    if isinstance(response, web.HTTPException):
        raise response
    return response


async def _may_enrol(request: web.Request) -> None:
    _password_stage(request)
    svc = request.app[services_key]
    if not await svc.store.read(lambda db: totp.needs_enrolment(db, request[SESSION].user_id)):
        # Already paired: re-pairing needs a full session (the account page), never a password.
        raise web.HTTPSeeOther("/login/totp")


async def enrol_page(request: web.Request) -> web.StreamResponse:
    await _may_enrol(request)
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
        {"enrolment": enrolment, "error": None, "action": "/login/enrol"},
    )


async def enrol_post(request: web.Request) -> web.StreamResponse:
    await _may_enrol(request)
    svc = request.app[services_key]
    actor = request[ACTOR]
    code = str((await request.post()).get("code", ""))[:40]
    now = svc.now()

    def confirm(db: sqlite_utils.Database) -> tuple[list[str], str]:
        codes = totp.confirm_enrolment(db, actor, code, now=now)
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "auth.login",
                object_type="user",
                object_id=actor.username,
                outcome_detail="password + new authenticator",
            ),
        )
        return codes, _step_up(db, request)

    try:
        codes, sid = await svc.store.write(confirm)
    except (totp.SecondFactorError, totp.EnrolmentExpiredError) as exc:
        # The secret is not shown again: retry the code, or ask for a new QR code.
        return aiohttp_jinja2.render_template(
            "totp/enrol.html",
            request,
            {"enrolment": None, "error": exc.message_nl(), "action": "/login/enrol"},
            status=exc.http_status,
        )
    response = aiohttp_jinja2.render_template(
        "totp/recovery_codes.html", request, recovery_context(codes, first=True)
    )
    set_session_cookie(request, response, sid)
    return response


def recovery_context(codes: list[str], *, first: bool) -> dict[str, Any]:
    return {"codes": codes, "first": first}


def setup(app: web.Application) -> None:
    app.router.add_get("/login/totp", totp_page, name="totp")
    app.router.add_post("/login/totp", totp_post, name="totp_post")
    app.router.add_get("/login/enrol", enrol_page, name="totp_enrol")
    app.router.add_post("/login/enrol", enrol_post, name="totp_enrol_post")
