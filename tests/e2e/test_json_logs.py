"""JSON logs on a whole send and failure path: every line is one JSON object with the fixed
fields, and no BSN, patient name, birth date or indication appears anywhere in the log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from securemail import logsetup
from securemail.delivery import worker as delivery
from securemail.errors import SecuremailError
from securemail.exchange import send as exchange
from securemail.exchange.send import Hooks
from securemail.web import create_app
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    OTHER_TEAM,
    Gateway,
    deliver_all,
    example,
    grant_consent,
)
from tests.smtp_fixtures import free_port

PATIENT = EXAMPLE["patient"]
MARKERS = [
    PATIENT["bsn"],
    PATIENT["name"],
    PATIENT["birth_date"],
    "-".join(reversed(PATIENT["birth_date"].split("-"))),
    PATIENT["postcode"],
    PATIENT["address"],
    *(p["indication"] for p in EXAMPLE["procedures"]),
    *(p["indication"][:30] for p in EXAMPLE["procedures"]),
]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    logsetup.configure("json", verbose=True, stream=buf, force=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the test relay, not the gateway
    yield buf
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)


async def run_worker_for(gw: Gateway, seconds: float) -> None:
    hooks = Hooks(gw.svc)
    worker = delivery.Worker(
        gw.svc.settings,
        gw.svc.store,
        owner_id="log-test",
        on_final=hooks.on_final,
        before_send=hooks.before_send,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


async def test_json_logs_of_send_and_failures_are_json_and_patient_free(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any, json_log: io.StringIO
) -> None:
    # a request sealed, queued, delivered; the practice's notice too
    await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    # refused: a team without a usable key, and a wrong signing passphrase
    grant_consent(gw.svc, gw.gp, PATIENT["bsn"], OTHER_TEAM)
    other = example()
    other["receiver"]["team_address"] = OTHER_TEAM
    for data, passphrase in ((other, GP_PASSPHRASE), (example(), "wrong passphrase")):
        with pytest.raises(SecuremailError):
            await exchange.send(gw.svc, gw.gp, data, passphrase)
    # the relay goes away: the next request is retried, not lost
    gw.svc.settings = gw.svc.settings.replace(smtp={"port": free_port()})
    await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await run_worker_for(gw, 1.5)
    # the web app: health (relay down), a page that does not exist, a bad login
    client = await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))
    assert (await client.get("/healthz")).status == 503
    assert (await client.get("/no-such-page")).status == 404
    login = await client.get("/login")
    assert login.status == 200

    text = json_log.getvalue()
    lines = text.splitlines()
    assert len(lines) >= 5
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r)
        assert set(r) <= {
            "time",
            "level",
            "logger",
            "message",
            "incident",
            "request_id",
            "exception",
        }
    messages = " ".join(r["message"] for r in records)
    assert "sealed and queued" in messages
    assert "refused: seal.key_unusable" in messages
    assert "refused: seal.bad_passphrase" in messages
    assert any(r["level"] == "warning" or "retrying" in r["message"] for r in records)
    for marker in MARKERS:
        assert marker not in text, f"patient data in the log: {marker[:12]}..."
