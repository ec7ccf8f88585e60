"""Running the gateway: the web app with its background tasks, or the background tasks alone.

SIGTERM and SIGINT stop gracefully: the worker finishes or releases what it holds
(aiohttp's run_app runs the cleanup contexts on both signals).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from securemail.config import Settings
from securemail.delivery.worker import process_owner
from securemail.home import background, open_services

log = logging.getLogger("securemail.server")


def serve(settings: Settings, *, print_fn: Callable[[str], object] = print) -> None:
    from securemail import contentbox
    from securemail.web import create_app

    # Before listening: without the key that opens the stored content there is nothing to
    # serve, and a new key would hide the loss (ContentKeyMissingError, one line, exit 1).
    contentbox.load(settings)
    app = create_app(settings)
    app.on_startup.append(freeze_startup_heap)  # after the services and tasks are set up
    print_fn(f"securemail listening on http://{settings.web.host}:{settings.web.port}")
    web.run_app(
        app,
        host=settings.web.host,
        port=settings.web.port,
        print=None,
        access_log=None,
        handle_signals=True,
    )


async def freeze_startup_heap(app: web.Application) -> None:
    """Move what start-up made (modules, templates, settings, the directory's objects) out of
    the collector's reach. Without it every full collection, which the garbage of requests
    triggers about once a second under load, walks that whole heap: 80 to 150 ms in the
    middle of a request (measured on the nurse's request page: the p99 against a 20 ms p50;
    docs/performance.md). Objects made later are collected as before."""
    del app
    gc.collect()
    gc.freeze()


async def _worker_main(settings: Settings) -> None:
    """Every background task ``serve`` runs, without the web app: a host that runs only the
    worker still watches deadlines, purges what is past its retention and records its health
    checks for the availability figures."""
    svc = open_services(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        owner = process_owner("worker")  # host:pid, so the trail names the process
        async with background(svc, stop, owner_id=owner) as running:
            await running.delivery  # until SIGTERM or SIGINT sets stop
    finally:
        svc.close()


def run_worker_only(settings: Settings) -> None:
    asyncio.run(_worker_main(settings))
