"""Middleware: security headers, errors as Dutch pages or JSON, login (deny by default), CSRF,
and the route-level access gate.

Invariants: no route is reachable without a full session (password and second factor)
unless listed in OPEN_ROUTES (no session) or SECOND_FACTOR_ROUTES (password only); every
other route declares its policy action with ``@requires(action)`` and a route that
declares none is refused for everyone; every refusal by the access policy answers 403
(or 404 where existence would leak) and writes an ``access.denied`` audit row; every
state-changing request from a browser session carries the session's CSRF token (API
calls with a bearer token and no cookie need none); an unexpected error shows an
incident reference, never a traceback, and the log line carries no patient data.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail import access
from securemail.access import Actor, HiddenDeniedError, Person
from securemail.accounts import apitoken, auth, session
from securemail.audit import trail as audit
from securemail.config import Network
from securemail.errors import (
    AccessDeniedError,
    NotFoundError,
    SecuremailError,
    StorageFullError,
)
from securemail.store import StoreFullError
from securemail.web import forwarded
from securemail.web.keys import ACTOR, SESSION, services_key
from securemail.web.throttle import throttle_key

log = logging.getLogger("securemail.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes reachable without a session (SecureDrop's _insecure_views): by route name.
#: /healthz and /metrics carry no patient data; /metrics checks its own bearer token
#: ([monitoring] metrics_token, securemail.web.monitoring) because a scraper has no session.
OPEN_ROUTES = frozenset({"login", "login_post", "static", "health", "healthz", "metrics"})
#: Routes open without a session only while a setting says so (route name -> the test): the
#: region page, with [region] public_page. With a session they are gated as any other route.
OPEN_IF_SETTING: dict[str, Callable[[Any], bool]] = {
    name: (lambda s: bool(s.region.public_page)) for name in ("region", "region_json", "region_csv")
}
#: Routes reachable with a password-only session (second factor pending). They are the
#: login itself, so they declare no policy action; every other route must (see requires()).
SECOND_FACTOR_ROUTES = frozenset({"totp", "totp_post", "totp_enrol", "totp_enrol_post", "logout"})
#: A password-only session must finish the second factor within this time.
PASSWORD_STAGE = timedelta(minutes=5)
#: The attribute requires() sets on a handler: the access.POLICY action the route performs.
ACTION_ATTR = "securemail_action"

H = TypeVar("H", bound=Callable[..., Any])


def requires(action: str) -> Callable[[H], H]:
    """Declare the policy action a route performs; the auth middleware checks the actor's role
    (and token scopes) against access.POLICY before the handler runs. Object-level scope
    (which practice, which team) is checked again by the domain function."""
    if action not in access.POLICY:
        raise ValueError(f"unknown policy action {action!r}")

    def mark(handler: H) -> H:
        setattr(handler, ACTION_ATTR, action)
        return handler

    return mark


def route_action(request: web.Request) -> str | None:
    return getattr(request.match_info.handler, ACTION_ATTR, None)


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
    """The audit trail's "from where": the client's address, as the forwarded middleware
    resolved it (the TCP peer unless that is a trusted proxy)."""
    return request.remote or "unknown"


def forwarded_mw(trusted: tuple[Network, ...]) -> Any:
    """The first middleware: every later one sees the client's address and scheme, read from
    X-Forwarded-For/-Proto only when the TCP peer is a trusted proxy (securemail.forwarded)."""

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not trusted:
            return await handler(request)
        # First in the stack: remote and scheme are still the transport's own.
        origin = forwarded.resolve(
            request.remote,
            request.scheme,
            request.headers.get("X-Forwarded-For"),
            request.headers.get("X-Forwarded-Proto"),
            trusted,
        )
        if origin.address != request.remote or origin.scheme != request.scheme:
            request = request.clone(remote=origin.address, scheme=origin.scheme)
        return await handler(request)

    return mw


async def audit_refusal(request: web.Request, exc: SecuremailError, status: int) -> None:
    """The access.denied row for a policy refusal; a failure to write it is logged, and the
    refusal stands either way (fail closed)."""
    actor: Actor | None = request.get(ACTOR)
    if actor is None or services_key not in request.app:
        return
    svc = request.app[services_key]
    if isinstance(exc, HiddenDeniedError):
        action, kind, ref = exc.action, exc.kind, exc.ref
    else:
        action = str(exc.context.get("action", ""))
        kind = str(exc.context.get("object_type") or "")
        ref = str(exc.context.get("object_id") or "")
    ref = ref or request.match_info.get("reference", "")
    event = audit.AuditEvent.of(
        actor,
        "access.denied",
        outcome="refused",
        object_type=kind,
        object_id=ref,
        check_authz=f"deny:{action}",
        outcome_detail=f"{action} on {request.match_info.route.name} -> {status}",
    )
    try:
        await svc.store.write(lambda db: audit.record(db, event))
    except Exception:
        log.exception("could not record access.denied for route %s", request.match_info.route.name)


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


def error_response(
    request: web.Request, status: int, message_nl: str, body: dict[str, Any]
) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response(body, status=status)
    # The base context is given here too: a refusal raised in auth_mw never reaches
    # aiohttp-jinja2's context-processor middleware, which sits inside it.
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {**base_context(request), "status": status, "message": message_nl, "body": body},
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
    except (AccessDeniedError, HiddenDeniedError) as exc:
        await audit_refusal(request, exc, exc.http_status)
        if isinstance(exc, NotFoundError):
            return _not_found(request)
        return error_response(request, exc.http_status, exc.message_nl(), exc.as_json())
    except NotFoundError:
        return _not_found(request)
    except SecuremailError as exc:
        return _with_retry_after(
            error_response(request, exc.http_status, exc.message_nl(), exc.as_json()), exc
        )
    except StoreFullError as exc:  # the disk is full: a clear 503, not an incident
        full = StorageFullError(str(exc))
        log.error("refused %s: %s", request.match_info.route.name, exc)
        return _with_retry_after(
            error_response(request, full.http_status, full.message_nl(), full.as_json()), full
        )
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception(
            "unexpected error on %s %s, incident %s",
            request.method,
            request.match_info.route.name,
            incident,
            extra={"incident": incident},
        )
        return error_response(
            request,
            500,
            f"Er ging iets mis aan onze kant. Noem dit kenmerk als u contact opneemt: {incident}",
            {"error": "internal", "incident": incident},
        )


def _with_retry_after(response: web.StreamResponse, exc: SecuremailError) -> web.StreamResponse:
    if exc.retry_after:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _not_found(request: web.Request) -> web.StreamResponse:
    # One body for every 404: a hidden refusal and a missing object must look the same.
    return error_response(
        request,
        404,
        NotFoundError.nl,
        {"error": NotFoundError.code, "message_nl": NotFoundError.nl},
    )


def _gate(request: web.Request, actor: Actor, name: str | None) -> None:
    """The route-level policy check: every route outside the login flow declares an action."""
    if name in SECOND_FACTOR_ROUTES:
        return
    action = route_action(request)
    if action is None:
        # Deny by default: a route nobody classified is nobody's.
        log.error("route %s declares no policy action; refused", name)
        raise AccessDeniedError(f"route {name} declares no policy action", action="undeclared")
    access.require_role(actor, action)


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = request.match_info.route.name
    if name in OPEN_ROUTES or request.match_info.http_exception is not None:
        return await handler(request)
    svc = request.app[services_key]
    s = svc.settings.web
    if request.path.startswith("/api/") and "Authorization" in request.headers:
        # A bearer token is the whole credential: no cookie session, so no CSRF to check
        # (a browser never attaches an Authorization header to a cross-site request).
        request[ACTOR] = await actor_from_token(request)
        _gate(request, request[ACTOR], name)
        return await handler(request)
    sid = request.cookies.get(session.COOKIE, "")
    now = svc.now()

    def load(db: Any) -> tuple[session.Session, Person] | None:
        sess = session.load(
            db,
            sid,
            now=now,
            idle=timedelta(minutes=s.session_idle_minutes),
            absolute=timedelta(hours=s.session_max_hours),
        )
        if sess is None:
            return None
        if sess.stage != "full" and now - sess.created_at > PASSWORD_STAGE:
            session.end(db, sess)
            return None
        session.touch(db, sess, now)
        user = auth.user_by_id(db, sess.user_id)
        if not user.active:
            return None
        return sess, auth.actor_for(db, user, access_point(request))

    found = await svc.store.write(load) if sid else None
    if found is None and name in OPEN_IF_SETTING and OPEN_IF_SETTING[name](svc.settings):
        return await handler(request)
    if found is None:
        if wants_json(request):
            return web.json_response({"error": "auth.required"}, status=401)
        response = web.HTTPSeeOther("/login")
        if sid:
            response.del_cookie(session.COOKIE, path="/")
        raise response
    sess, actor = found
    if sess.stage != "full" and name not in SECOND_FACTOR_ROUTES:
        if wants_json(request):
            return web.json_response({"error": "auth.second_factor_required"}, status=401)
        raise web.HTTPSeeOther("/login/totp")
    request[SESSION] = sess
    request[ACTOR] = actor
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        token = request.headers.get("X-CSRF-Token")
        if token is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get("csrf_token")
            token = value if isinstance(value, str) else None
        if not session.csrf_ok(sess, token):
            log.warning("CSRF check failed on %s for user %s", name, actor.user_id)
            return error_response(
                request,
                403,
                "Dit formulier is verlopen of niet van deze site afkomstig. "
                "Laad de pagina opnieuw.",
                {"error": "csrf.invalid"},
            )
    _gate(request, actor, name)
    return await handler(request)


def stack(trusted_proxies: tuple[Network, ...] = ()) -> list[Any]:
    from securemail.web.inputs import input_mw
    from securemail.web.monitoring import request_id_mw

    return [request_id_mw, forwarded_mw(trusted_proxies), headers_mw, errors_mw, input_mw, auth_mw]


#: What the Server header says: not aiohttp's "Python/3.x aiohttp/3.x" (no version hints).
SERVER_NAME = "securemail"


async def hide_server(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, error pages and aiohttp's own included."""
    response.headers["Server"] = SERVER_NAME


async def template_context(request: web.Request) -> dict[str, Any]:
    return base_context(request)


def base_context(request: web.Request) -> dict[str, Any]:
    """What every page's base.html needs: who is signed in, the CSRF token, the gateway name."""
    sess = request.get(SESSION)
    return {
        "actor": request.get(ACTOR),
        "csrf_token": sess.csrf_token if sess else "",
        # Menus only once both factors are done; the password step shows just "log out".
        "full_session": sess is not None and sess.stage == "full",
        # static/session.js warns this long after the page loaded, before the session ends
        "idle_seconds": request.app[services_key].settings.web.session_idle_minutes * 60
        if services_key in request.app
        else 0,
        "gateway_name": request.app[services_key].settings.gateway.name
        if services_key in request.app
        else "securemail",
    }


# -- API bearer tokens (used by auth_mw; securemail.web.api serves the routes) ------------


def _unauthorised(error: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=f'{{"error": "{error}"}}',
        content_type="application/json",
        headers={"WWW-Authenticate": f'Bearer realm="securemail", error="{error}"'},
    )


async def actor_from_token(request: web.Request) -> Person:
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

    def check(db: sqlite_utils.Database) -> Person | str:
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
    if isinstance(found, Person):
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
        )
    )
    raise _unauthorised("invalid_token")
