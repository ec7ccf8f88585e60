"""End to end and delivery: from accepting a request to the relay's 250.

The gateway runs as it does in production: ``securemail serve`` in its own process (the
web app and its delivery worker), a recording STARTTLS relay on 127.0.0.1 (trustme CA)
in this process. Two ways in:

- HTTP: a practice system posts to the JSON API (``POST /api/requests`` with a bearer
  token and the GP's signing passphrase: validate, consent, sign, seal, one durable
  write) and gets its 201: that is *accepted*.
- CLI: ``securemail request send`` as one process per request, as a practice system
  without the web app would call it.

Open-loop offered load: requests start on a fixed schedule (10, 50, 100 per second) for a
bounded time, whatever the gateway's pace; latency counts from the scheduled start, so a
gateway that falls behind is charged for the wait (no coordinated omission). At most
``MAX_OUTSTANDING`` requests are open at once (a server's connection limit); a request
due while that many are open is counted as shed, not sent. After the window the open
requests finish, then the run waits (bounded) for every accepted request's 250.

Reported per load: accepted, shed, accept latency p50/p99, accept-to-250 p50/p99 and
delivered messages per second (250s over the time from the first start to the last 250).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

import securemail
from benchmarks import _gateway

TITLE = "End to end: accept (HTTP, CLI) to the relay's 250"
MAX_OUTSTANDING = 32
CLI_MAX_OUTSTANDING = 4  # processes at once: the machine is shared
LOADS = (10, 50, 100)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    """The environment for gateway processes: the securemail this benchmark imported."""
    env = dict(os.environ)
    source = Path(securemail.__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(source) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def _start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    # The server's log goes to a file: a pipe nobody reads fills up and blocks the server.
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "securemail", "serve", "--home", str(home), "--port", str(port)],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (home / "serve.log").read_bytes()[-500:]
                raise RuntimeError(f"server exited: {tail!r}")
            try:
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ApiClient:
    """A practice system on the JSON API: ``POST /api/requests`` with a bearer token."""

    def __init__(self, base: str, token: str) -> None:
        self.url = f"{base}/api/requests"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_OUTSTANDING),
            timeout=aiohttp.ClientTimeout(total=300),
            headers={"Authorization": f"Bearer {token}"},
        )

    async def send(self, body: bytes) -> str:
        async with self.session.post(
            self.url, data=body, headers={"Content-Type": "application/json"}
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"api: HTTP {r.status}: {(await r.text())[:200]}")
            return str((await r.json())["reference"])

    async def close(self) -> None:
        await self.session.close()


def _cli_sender(home: Path, workdir: Path) -> Callable[[], Awaitable[str]]:
    request_file = workdir / "request.json"
    request_file.write_text(json.dumps(_gateway.example()), encoding="utf-8")
    passphrase_file = workdir / "passphrase"
    passphrase_file.write_text(_gateway.GP_PASSPHRASE + "\n", encoding="utf-8")
    passphrase_file.chmod(0o600)
    cmd = [
        sys.executable,
        "-m",
        "securemail",
        "request",
        "send",
        "--home",
        str(home),
        "--as",
        "huisarts",
        "--file",
        str(request_file),
        "--passphrase-file",
        str(passphrase_file),
    ]

    async def send() -> str:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"cli: exit {proc.returncode}: {err[-300:]!r}")
        return out.decode().split()[0]

    return send


async def offered_load(
    send: Callable[[], Awaitable[str]],
    relay: _gateway.Relay,
    *,
    rate: float,
    duration: float,
    max_outstanding: int,
    deliver_timeout: float = 60.0,
) -> dict[str, Any]:
    """Start ``send`` ``rate`` times a second for ``duration`` seconds (open loop)."""
    results: list[tuple[float, float, str]] = []  # (scheduled start, accepted, reference)
    errors: list[str] = []
    open_tasks: set[asyncio.Task[None]] = set()
    shed = 0

    async def one(scheduled: float) -> None:
        try:
            reference = await send()
        except Exception as exc:  # a refused request is a result, not a crash of the run
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        results.append((scheduled, time.monotonic(), reference))

    start = time.monotonic()
    n = int(rate * duration)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(open_tasks) >= max_outstanding:
            shed += 1
            continue
        task = asyncio.create_task(one(scheduled))
        open_tasks.add(task)
        task.add_done_callback(open_tasks.discard)
    if open_tasks:
        await asyncio.wait(set(open_tasks))
    last_accept = time.monotonic()
    wanted = {ref for _, _, ref in results}
    deadline = time.monotonic() + deliver_timeout
    while time.monotonic() < deadline:
        with relay.handler.lock:
            if wanted <= relay.handler.accepted.keys():
                break
        await asyncio.sleep(0.05)
    with relay.handler.lock:
        delivered = {
            ref: relay.handler.accepted[ref] for ref in wanted if ref in relay.handler.accepted
        }
    accept = [(done - sched) * 1000 for sched, done, _ in results]
    to_250 = [(delivered[ref] - sched) * 1000 for sched, _, ref in results if ref in delivered]
    end = max(delivered.values(), default=last_accept)
    p = _gateway.percentile
    return {
        "offered_per_s": rate,
        "seconds": duration,
        "offered": n,
        "accepted": len(results),
        "refused": len(errors),
        "shed": shed,
        "accepted_per_s": round(len(results) / (last_accept - start), 2),
        "delivered": len(delivered),
        "delivered_per_s": round(len(delivered) / (end - start), 2) if delivered else 0.0,
        "accept_ms_p50": _r(p(accept, 0.5)),
        "accept_ms_p99": _r(p(accept, 0.99)),
        "to_250_ms_p50": _r(p(to_250, 0.5)),
        "to_250_ms_p99": _r(p(to_250, 0.99)),
        "errors": errors[:3],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


async def _measure(
    team: str,
    gpg: dict[str, Any] | None,
    *,
    duration: float,
    loads: tuple[int, ...],
    cli_loads: tuple[int, ...],
    max_outstanding: int,
    cli_max_outstanding: int,
) -> dict[str, Any]:
    gw = await _gateway.build(team, gpg=gpg)
    home, relay = gw.home, gw.relay
    gw.svc.close()  # the server process owns the home from here
    await gw.svc.keyring.close()
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="smb-"))
    server = await _start_server(home, port)
    out: dict[str, Any] = {"http": {}, "cli": {}}
    try:
        client = ApiClient(f"http://127.0.0.1:{port}", gw.extra["api_token"])
        try:
            body = json.dumps(
                {"request": _gateway.example(), "passphrase": _gateway.GP_PASSPHRASE},
                ensure_ascii=False,
            ).encode()
            await client.send(body)  # warm up: agent, caches, templates
            for rate in loads:
                out["http"][str(rate)] = await offered_load(
                    lambda: client.send(body),
                    relay,
                    rate=rate,
                    duration=duration,
                    max_outstanding=max_outstanding,
                )
        finally:
            await client.close()
        cli = _cli_sender(home, workdir)
        for rate in cli_loads:
            out["cli"][str(rate)] = await offered_load(
                cli, relay, rate=rate, duration=duration, max_outstanding=cli_max_outstanding
            )
    finally:
        _stop_server(server)
        _gateway.kill_agent(home / "gnupg")
        relay.stop()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def settings_under_test(quick: bool) -> list[tuple[str, dict[str, Any] | None]]:
    low = ("s2k_20ms", {"s2k_calibration_ms": 20})
    return [low] if quick else [("s2k_default", None), low]


def run(quick: bool) -> dict[str, Any]:
    duration = 2.0 if quick else 10.0
    outstanding = 8 if quick else MAX_OUTSTANDING
    cli_outstanding = 2 if quick else CLI_MAX_OUTSTANDING
    team = _gateway.team_keys()
    results: dict[str, Any] = {
        "seconds_per_load": duration,
        "max_outstanding": outstanding,
        "cli_max_outstanding": cli_outstanding,
    }
    table: list[dict[str, Any]] = []
    for label, gpg in settings_under_test(quick):
        r = asyncio.run(
            _measure(
                team,
                gpg,
                duration=duration,
                loads=LOADS,
                cli_loads=(10,),
                max_outstanding=outstanding,
                cli_max_outstanding=cli_outstanding,
            )
        )
        results[label] = r
        for way in ("http", "cli"):
            for rate, x in r[way].items():
                row = {
                    "metric": f"{way} at {rate}/s offered ({label}): accept p50/p99 ms",
                    "value": f"{x['accept_ms_p50']} / {x['accept_ms_p99']}; "
                    f"250 p50/p99 {x['to_250_ms_p50']} / {x['to_250_ms_p99']}; "
                    f"{x['delivered_per_s']} msg/s; shed {x['shed']}",
                }
                if way == "http" and rate == "50":
                    p99 = x["accept_ms_p99"]
                    row.update(
                        target="p99 < 100 ms", met=p99 is not None and p99 < 100 and x["shed"] == 0
                    )
                if way == "http" and rate == "100":
                    row.update(target=">= 100 msg/s", met=x["delivered_per_s"] >= 100)
                table.append(row)
    results["table"] = table
    results["title"] = TITLE
    return results
