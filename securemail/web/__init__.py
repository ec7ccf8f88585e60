"""The web app: create_app(settings) wires services, middleware, routes and the delivery worker.

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

from securemail import forwarded
from securemail.config import Settings
from securemail.delivery import worker as delivery
from securemail.home import open_services
from securemail.services import Services
from securemail.web import clock, middleware
from securemail.web.keys import run_worker_key, services_key, settings_key

log = logging.getLogger("securemail.web")
HERE = Path(__file__).parent


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    svc: Services = app[services_key] if services_key in app else open_services(app[settings_key])
    app[services_key] = svc
    yield
    svc.close()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    if not app[run_worker_key]:
        yield
        return
    svc = app[services_key]
    hooks = outbox_hooks(svc)
    worker = delivery.Worker(
        svc.settings,
        svc.store,
        owner_id=delivery.process_owner("web"),
        on_final=hooks.on_final,
        before_send=hooks.before_send,
    )
    stop = asyncio.Event()
    svc.on_queued = worker.wake  # a send wakes an idle worker instead of its next poll
    task = asyncio.create_task(worker.run(stop), name="delivery-worker")
    yield
    svc.on_queued = None
    stop.set()
    await task


async def _deadlines_ctx(app: web.Application) -> AsyncIterator[None]:
    """The deadline watch (securemail.exchange.escalation) next to the delivery worker."""
    if not app.get("run_worker", True):
        yield
        return
    from securemail.exchange import escalation

    svc = app[services_key]
    stop = asyncio.Event()
    task = asyncio.create_task(
        escalation.run(svc, stop, svc.settings.deadlines.check_seconds), name="deadline-watch"
    )
    yield
    stop.set()
    await task


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """The daily retention purge (securemail.ops.retention), next to the deadline watch."""
    if not app[run_worker_key]:
        yield
        return
    from securemail.ops import retention

    svc = app[services_key]
    stop = asyncio.Event()
    task = asyncio.create_task(
        retention.run(svc.store, svc.settings, svc.now, stop), name="retention-purge"
    )
    yield
    stop.set()
    await task


def outbox_hooks(svc: Services):
    from securemail.exchange.send import Hooks

    return Hooks(svc)


def create_app(
    settings: Settings, *, services: Services | None = None, run_worker: bool = True
) -> web.Application:
    trusted = forwarded.parse_trusted(settings.web.trusted_proxies)
    app = web.Application(middlewares=middleware.stack(trusted), client_max_size=2 * 1024**2)
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
    app.cleanup_ctx.append(_worker_ctx)
    app.cleanup_ctx.append(_deadlines_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    from securemail.web import routes

    routes.setup(app)
    app.router.add_static("/static/", HERE / "static", name="static")
    return app
