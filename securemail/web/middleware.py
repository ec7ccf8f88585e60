"""Middleware: security headers, errors as Dutch pages or JSON, login (deny by default), CSRF.

Invariants: no route is reachable without a full session unless listed in OPEN_ROUTES;
every POST from a browser session carries the session's CSRF token; an unexpected
error shows an incident reference, never a traceback, and the log line carries no
patient data.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail import auth, session
from securemail.errors import SecuremailError
from securemail.web.keys import ACTOR, SESSION, services_key

log = logging.getLogger("securemail.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes reachable without a session (SecureDrop's _insecure_views): by route name.
OPEN_ROUTES = frozenset({"login", "login_post", "static", "health"})
#: Routes reachable with a password-only session (second factor pending).
SECOND_FACTOR_ROUTES = frozenset({"totp", "totp_post", "totp_enrol", "totp_enrol_post", "logout"})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get(
        "Accept", ""
    )


def access_point(request: web.Request) -> str:
    return request.remote or "unknown"


@web.middleware
async def headers_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _apply_headers(response)
        raise
    _apply_headers(response)
    return response


def _apply_headers(response: web.StreamResponse) -> None:
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)


def error_response(request: web.Request, status: int, message_nl: str, body: dict[str, Any]
                   ) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response(body, status=status)
    return aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message_nl, "body": body},
        status=status,
    )


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (404, 405) and not wants_json(request):
            message = "Deze pagina bestaat niet." if exc.status == 404 else "Niet toegestaan."
            return error_response(request, exc.status, message, {"error": "not_found"})
        raise
    except SecuremailError as exc:
        return error_response(request, exc.http_status, exc.message_nl(), exc.as_json())
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error on %s %s, incident %s",
                      request.method, request.match_info.route.name, incident)
        return error_response(
            request, 500,
            f"Er ging iets mis aan onze kant. Noem dit kenmerk als u contact opneemt: {incident}",
            {"error": "internal", "incident": incident},
        )


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = request.match_info.route.name
    if name in OPEN_ROUTES or request.match_info.http_exception is not None:
        return await handler(request)
    svc = request.app[services_key]
    s = svc.settings.web
    if request.path.startswith("/api/") and "Authorization" in request.headers:
        from securemail.web import api

        request[ACTOR] = await api.actor_from_token(request)
        return await handler(request)
    sid = request.cookies.get(session.COOKIE, "")
    now = svc.now()

    def load(db: Any) -> tuple[session.Session, Any] | None:
        sess = session.load(db, sid, now=now, idle=timedelta(minutes=s.session_idle_minutes),
                            absolute=timedelta(hours=s.session_max_hours))
        if sess is None:
            return None
        session.touch(db, sess, now)
        user = auth.user_by_id(db, sess.user_id)
        if not user.active:
            return None
        return sess, auth.actor_for(db, user, access_point(request))

    found = await svc.store.write(load) if sid else None
    if found is None:
        if wants_json(request):
            return web.json_response({"error": "auth.required"}, status=401)
        raise web.HTTPSeeOther("/login")
    sess, actor = found
    if sess.stage != "full" and name not in SECOND_FACTOR_ROUTES:
        raise web.HTTPSeeOther("/login/totp")
    request[SESSION] = sess
    request[ACTOR] = actor
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        token = request.headers.get("X-CSRF-Token")
        if token is None:
            form = await request.post()
            value = form.get("csrf_token")
            token = value if isinstance(value, str) else None
        if not session.csrf_ok(sess, token):
            log.warning("CSRF check failed on %s for user %s", name, actor.user_id)
            return error_response(
                request, 403,
                "Dit formulier is verlopen of niet van deze site afkomstig. Laad de pagina opnieuw.",
                {"error": "csrf.invalid"},
            )
    return await handler(request)


def stack() -> list[Any]:
    return [headers_mw, errors_mw, auth_mw]


async def template_context(request: web.Request) -> dict[str, Any]:
    sess = request.get(SESSION)
    return {
        "actor": request.get(ACTOR),
        "csrf_token": sess.csrf_token if sess else "",
        "gateway_name": request.app[services_key].settings.gateway.name
        if services_key in request.app else "securemail",
    }
