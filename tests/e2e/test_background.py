"""One set of background tasks (securemail.home.background) for `serve` and `worker`: the web
app starts all four or, with ``run_worker=False``, none; `securemail worker` alone runs the
deadline watch too, so an overdue request is escalated on a host without the web app."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from securemail.exchange import send as exchange
from securemail.home import BACKGROUND_TASKS
from securemail.web import create_app
from tests.clock import Clock, real_now
from tests.gateway import (
    GP_PASSPHRASE,
    Gateway,
    build_gateway,
    close_gateway,
    deliver_all,
    env_for_cli,
    example,
    relay_settings,
)
from tests.loop_fixtures import audit_codes, notices


def running_background() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if not t.done()} & set(BACKGROUND_TASKS)


async def test_an_app_without_worker_starts_no_background_task(
    gw: Gateway, aiohttp_client: Any
) -> None:
    # Before issue 17 the deadline watch ran even with run_worker=False (a plain-string key).
    await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))
    await asyncio.sleep(0.1)
    assert running_background() == set()


async def test_an_app_with_its_worker_starts_every_background_task_and_stops_them(
    gw: Gateway, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=True))
    await asyncio.sleep(0.1)
    assert running_background() == set(BACKGROUND_TASKS)
    await client.close()
    assert running_background() == set()


@pytest.fixture
async def three_hours_ago(
    tmp_path: Path, team_member_keys: dict[str, str], smtp_server: Any, relay_cafile: str
) -> AsyncIterator[Gateway]:
    """A gateway whose clock stands three hours behind the real one: what it sends now is
    overdue (an urgent request's two hours) for a process on the real clock."""
    clock = Clock(real_now() - timedelta(hours=3))
    smtp = relay_settings(smtp_server, relay_cafile)
    g = await build_gateway(team_keys=team_member_keys, smtp=smtp, clock=clock)
    yield g
    close_gateway(g)


async def test_the_worker_alone_escalates_an_overdue_request(
    three_hours_ago: Gateway,
) -> None:
    gw = three_hours_ago
    svc = gw.svc
    # Given an urgent request the team's relay took three hours ago (due an hour ago)
    data = example()
    data["urgency"] = "spoed"
    sent = await exchange.send(svc, gw.gp, data, GP_PASSPHRASE)
    await deliver_all(svc)  # the relay takes it now; the gateway dates its 250 at its clock
    assert audit_codes(svc, sent.reference).count("request.overdue") == 0
    # When `securemail worker` runs (the real clock), it is escalated, once, to the practice
    with subprocess.Popen(
        [sys.executable, "-m", "securemail", "worker", "--home", str(gw.home)],
        env=env_for_cli(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while "request.overdue" not in audit_codes(svc, sent.reference):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the worker did not watch the deadlines"
                await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert audit_codes(svc, sent.reference).count("request.overdue") == 1
    [raw] = notices(svc, "overdue")
    assert sent.reference.encode() in raw
