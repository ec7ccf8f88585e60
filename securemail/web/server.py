"""Running the gateway: the web app with its delivery worker, or the worker alone.

SIGTERM and SIGINT stop gracefully: the worker finishes or releases what it holds
(aiohttp's run_app runs the cleanup contexts on both signals).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from securemail.config import Settings
from securemail.delivery import worker as delivery
from securemail.home import autocrypt_headers, open_services

log = logging.getLogger("securemail.server")


def serve(settings: Settings, *, print_fn=print) -> None:
    from securemail import contentbox
    from securemail.web import create_app

    # Before listening: without the key that opens the stored content there is nothing to
    # serve, and a new key would hide the loss (ContentKeyMissingError, one line, exit 1).
    contentbox.load(settings)
    app = create_app(settings)
    print_fn(f"securemail listening on http://{settings.web.host}:{settings.web.port}")
    web.run_app(
        app,
        host=settings.web.host,
        port=settings.web.port,
        print=None,
        access_log=None,
        handle_signals=True,
    )


async def _worker_main(settings: Settings) -> None:
    from securemail.exchange.send import Hooks

    svc = open_services(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hooks = Hooks(svc)
    worker = delivery.Worker(
        settings,
        svc.store,
        owner_id=delivery.process_owner("worker"),
        on_final=hooks.on_final,
        before_send=hooks.before_send,
        autocrypt=await autocrypt_headers(svc),
    )
    # A host that runs only the worker still purges what is past its retention and records
    # its health checks for the availability figures, as `serve` does.
    from securemail.ops import health, retention

    background = [
        asyncio.create_task(
            retention.run(svc.store, settings, svc.now, stop), name="retention-purge"
        ),
        asyncio.create_task(health.run(health.Monitor(svc), stop), name="health-recorder"),
    ]
    try:
        await worker.run(stop)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        svc.close()


def run_worker_only(settings: Settings) -> None:
    asyncio.run(_worker_main(settings))
