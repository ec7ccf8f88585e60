"""Monitoring endpoints: /health (liveness), /healthz (readiness), /metrics (Prometheus)
and the request id every log line of a request carries.

Invariants: none of these answers carries patient data, a reference, a path, a host or a
library version; /health and /healthz need no login (a load balancer has none); /metrics
answers only to ``Authorization: Bearer <[monitoring] metrics_token>`` (compared in
constant time) and is refused to everyone while no token is configured - behind the
reverse proxy every client looks like loopback, so "loopback only" would protect nothing.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from securemail import logsetup
from securemail.ops import health, metrics
from securemail.web.keys import monitor_key, services_key

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


@web.middleware
async def request_id_mw(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request gets an id (the proxy's X-Request-ID when it looks like one, else a new
    one): it is in every log line of the request and in the response's X-Request-ID."""
    given = request.headers.get("X-Request-ID", "")
    rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
    token = logsetup.request_id.set(rid)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-ID"] = rid
            raise
        response.headers["X-Request-ID"] = rid
        return response
    finally:
        logsetup.request_id.reset(token)


def _monitor(app: web.Application) -> health.Monitor:
    return app[monitor_key]


async def health_live(request: web.Request) -> web.StreamResponse:
    """Liveness: the process answers HTTP. Says nothing about the database, gpg or relay."""
    return web.json_response({"status": "ok"})


async def healthz(request: web.Request) -> web.StreamResponse:
    """Readiness: database, gpg and relay; 200 when all are ok, else 503."""
    report = await _monitor(request.app).report()
    return web.json_response(report.as_json(), status=200 if report.ok else 503)


def _bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    token = svc.settings.monitoring.metrics_token
    if not token:
        return web.json_response(
            {
                "error": "metrics.disabled",
                "reason": "set [monitoring] metrics_token to enable /metrics",
            },
            status=403,
        )
    if not _bearer_ok(request, token):
        return web.json_response(
            {"error": "metrics.token_required", "reason": "send the metrics bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = metrics.render(await metrics.collect(svc, _monitor(request.app)))
    return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def _monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's cached checks; the health recorder (securemail.home.background) shares
    them when the app runs its background tasks."""
    app[monitor_key] = health.Monitor(app[services_key])
    yield


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health_live, name="health")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    app.cleanup_ctx.append(_monitor_ctx)
