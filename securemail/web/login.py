"""Login and logout. A password opens a password-only session; the second factor completes it.

Invariants: a session id is new at every step up (password -> second factor -> full), so
an id seen before login is worthless after it; the failure count and lock live in
``securemail.accounts.totp`` and are audited there; a source address that fails too often is
throttled in memory (``LoginThrottle``) before any password is checked, which covers
unknown usernames and spraying one password over many accounts; the login form carries
its own CSRF token (a SameSite=Strict cookie and a form field must match), so another
site cannot log a browser into someone else's account.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import datetime

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail.accounts import auth, session, totp
from securemail.audit import trail as audit
from securemail.web.keys import ACTOR, SESSION, services_key
from securemail.web.middleware import access_point, error_response, requires
from securemail.web.throttle import AccountSources, LoginThrottle, sources_key, throttle_key

LOGIN_COOKIE = "securemail_login"


_dummy_hash: list[str] = []


def _check_password(password: str, stored: str | None) -> bool:
    """scrypt against the stored hash, or against a dummy one for unknown users, so the time
    taken does not tell whether a username exists."""
    if stored is None:
        if not _dummy_hash:
            _dummy_hash.append(auth.hash_password(secrets.token_urlsafe(16)))
        auth.check_password(password, _dummy_hash[0])
        return False
    return auth.check_password(password, stored)


def lockout_policy(request: web.Request) -> totp.Lockout:
    s = request.app[services_key].settings.web
    return totp.Lockout(max_failures=s.login_max_failures, minutes=s.lockout_minutes)


def cookie_secure(request: web.Request) -> bool:
    """Secure flag on our cookies: always when [web] secure_cookies says so, and whenever the
    request came over HTTPS (request.scheme honours X-Forwarded-Proto only from a trusted
    proxy, see securemail.forwarded), so a TLS-terminating proxy needs no extra setting."""
    return request.app[services_key].settings.web.secure_cookies or request.secure


def set_session_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(
        session.COOKIE,
        sid,
        httponly=True,
        samesite="Strict",
        secure=cookie_secure(request),
        path="/",
    )


def locked_message(until: datetime) -> str:
    local = until.astimezone().strftime("%H:%M")
    return (
        f"Dit account is tijdelijk geblokkeerd na te veel mislukte pogingen. Probeer het na "
        f"{local} opnieuw, of vraag de beheerder om het te deblokkeren."
    )


def render_login(
    request: web.Request, *, error: str | None = None, username: str = "", status: int = 200
) -> web.StreamResponse:
    """The login form with a fresh login token, in the form and in a SameSite=Strict cookie."""
    token = secrets.token_urlsafe(32)
    response = aiohttp_jinja2.render_template(
        "login.html",
        request,
        {"error": error, "username": username, "login_token": token},
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/login",
        secure=cookie_secure(request),
    )
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    return render_login(request)


async def login_post(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    form = await request.post()
    cookie_token = request.cookies.get(LOGIN_COOKIE, "")
    form_token = str(form.get("login_token", ""))
    if not cookie_token or not hmac.compare_digest(cookie_token, form_token):
        return error_response(
            request,
            403,
            "Dit inlogformulier is verlopen of niet van deze site afkomstig. Laad de pagina "
            "opnieuw.",
            {"error": "csrf.invalid"},
        )
    username = str(form.get("username", "")).strip().lower()[:64]
    password = str(form.get("password", ""))
    now = svc.now()
    ap = access_point(request)
    throttle = request.app[throttle_key]
    if throttle.blocked(ap, now):
        await svc.store.write(
            lambda db: audit.record(
                db,
                audit.AuditEvent(
                    event_code="auth.fail",
                    user_name=username,
                    access_point=ap,
                    outcome="refused",
                    outcome_detail="source address throttled",
                ),
            )
        )
        return render_login(
            request,
            username=username,
            status=429,
            error=(
                "Te veel mislukte pogingen vanaf dit adres. Wacht een kwartier en probeer het "
                "opnieuw."
            ),
        )
    found = await svc.store.read(lambda db: auth.find_user(db, username))
    user = found[0] if found is not None and found[0].active else None
    # scrypt takes ~0.1 s of CPU by design: off the event loop.
    stored_hash = found[1] if found is not None and user is not None else None
    ok = await asyncio.to_thread(_check_password, password, stored_hash)
    policy = lockout_policy(request)
    sources = request.app[sources_key]

    def attempt(db: sqlite_utils.Database) -> tuple[totp.Verdict, tuple[str, bool] | None]:
        if user is None:
            audit.record(
                db,
                audit.AuditEvent(
                    event_code="auth.fail",
                    user_name=username,
                    access_point=ap,
                    outcome="refused",
                    outcome_detail="unknown or inactive user",
                ),
            )
            return totp.Verdict(False, "bad_password"), None
        actor = auth.actor_for(db, user, ap)
        # The lock holds for sources that failed for this account, not for the person's own.
        failed_here = sources.blocked(AccountSources.key(user.id, ap), now)
        if totp.locked_until(db, user.id, now) is not None and failed_here:
            return totp.register_failure(db, actor, "locked", now=now, policy=policy), None
        if not ok:
            return totp.register_failure(db, actor, "bad_password", now=now, policy=policy), None
        old = request.cookies.get(session.COOKIE, "")
        if old:
            # Whatever session this browser had ends here: rotation at login.
            session.end_id(db, old)
        sid, _ = session.create(db, user.id, now=now, stage="password", access_point=ap)
        return totp.Verdict(True, "password"), (sid, totp.needs_enrolment(db, user.id))

    verdict, started = await svc.store.write(attempt)
    if started is None:
        throttle.fail(ap, now)
        if user is not None:
            sources.fail(AccountSources.key(user.id, ap), now)
        if verdict.reason == "locked" and verdict.locked_until is not None:
            return render_login(
                request, username=username, status=429, error=locked_message(verdict.locked_until)
            )
        return render_login(
            request, username=username, status=401, error="Gebruikersnaam of wachtwoord onjuist."
        )
    sid, must_enrol = started
    response = web.HTTPSeeOther("/login/enrol" if must_enrol else "/login/totp")
    set_session_cookie(request, response, sid)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    sess = request[SESSION]
    actor = request[ACTOR]

    def end(db: sqlite_utils.Database) -> None:
        session.end(db, sess)
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "auth.logout",
                object_type="user",
                object_id=actor.username,
                outcome_detail="this session",
            ),
        )

    await svc.store.write(end)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(session.COOKIE, path="/")
    raise response


@requires("account.self")
async def logout_all(request: web.Request) -> web.StreamResponse:
    """Logout everywhere: every session of this person ends, this one included."""
    svc = request.app[services_key]
    actor = request[ACTOR]

    def end(db: sqlite_utils.Database) -> None:
        n = session.end_all(db, actor.user_id)
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "auth.logout",
                object_type="user",
                object_id=actor.username,
                outcome_detail=f"all sessions ({n})",
            ),
        )

    await svc.store.write(end)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(session.COOKIE, path="/")
    raise response


def setup(app: web.Application) -> None:
    app[throttle_key] = LoginThrottle()
    app[sources_key] = AccountSources()
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_post, name="login_post")
    app.router.add_post("/logout", logout, name="logout")
    app.router.add_post("/logout/all", logout_all, name="logout_all")
