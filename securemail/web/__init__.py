"""The web app: create_app(settings) wires services, middleware, routes and the background
tasks (securemail.home.background: delivery worker, deadline watch, retention purge, health
recorder; none with ``run_worker=False``).

Handlers stay thin: parse, call a domain function, render. Deny by default: every route
needs a full session unless it is in middleware.OPEN_ROUTES.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from securemail.config import Settings, parse_trusted
from securemail.delivery.worker import process_owner
from securemail.home import background, open_services
from securemail.services import Services
from securemail.web import clock, middleware
from securemail.web.keys import monitor_key, run_worker_key, services_key, settings_key

log = logging.getLogger("securemail.web")
HERE = Path(__file__).parent


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    svc: Services = app[services_key] if services_key in app else open_services(app[settings_key])
    app[services_key] = svc
    yield
    svc.close()


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every background task (securemail.home.background), unless ``run_worker=False``."""
    if not app[run_worker_key]:
        yield
        return
    svc = app[services_key]
    owner = process_owner("web")  # host:pid, so the trail names the process
    async with background(svc, asyncio.Event(), owner_id=owner, monitor=app[monitor_key]):
        yield


def create_app(
    settings: Settings, *, services: Services | None = None, run_worker: bool = True
) -> web.Application:
    trusted = parse_trusted(settings.web.trusted_proxies)
    app = web.Application(middlewares=middleware.stack(trusted), client_max_size=2 * 1024**2)
    app.on_response_prepare.append(middleware.hide_server)
    app[settings_key] = settings
    if services is not None:
        app[services_key] = services
    app[run_worker_key] = run_worker
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        context_processors=[middleware.template_context],
    )
    clock.install(env, settings.deadlines.timezone)
    app.cleanup_ctx.append(_services_ctx)
    from securemail.web import routes

    routes.setup(app)  # its monitoring context sets monitor_key, which the background shares
    app.cleanup_ctx.append(_background_ctx)
    app.router.add_static("/static/", HERE / "static", name="static")
    return app
