"""A practice system's batch: ``securemail request send --batch`` against the JSON API, per
request, in the same run (issue 24's target: within 1.2 times the API's time per request).

- Batch: one CLI process (its Python start-up included) sends N requests from an NDJSON
  file, the passphrase read once; wall time / N.
- API: ``securemail serve`` on the same home, N requests posted by as many clients as there
  are signing homes (what the batch keeps in flight), wall time / N.

Both run on ``[gpg] signers = 2`` with the same key, so the ratio is the cost of the path,
not of the machine. Segments alternate (API, batch, API, batch). Benchmark output only,
never a test assertion.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import _gateway
from benchmarks.bench_e2e import _env, _free_port, _start_server, _stop_server
from benchmarks.bench_seal import SIGNERS

TITLE = "CLI batch vs API: seconds per request (request send --batch / POST /api/requests)"


def _batch(home: Path, n: int, work: Path) -> float:
    """Seconds per request for one ``request send --batch`` of n requests."""
    lines = "".join(json.dumps(_gateway.example(), ensure_ascii=False) + "\n" for _ in range(n))
    batch, secret = work / "batch.ndjson", work / "passphrase"
    batch.write_text(lines, encoding="utf-8")
    secret.write_text(_gateway.GP_PASSPHRASE + "\n", encoding="utf-8")
    argv = [sys.executable, "-m", "securemail", "request", "send", "--home", str(home)]
    argv += ["--as", "huisarts", "--batch", str(batch), "--passphrase-file", str(secret)]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, env=_env(), timeout=3600, check=False)
    seconds = time.monotonic() - start
    sent = sum('"reference"' in line for line in done.stdout.decode().splitlines())
    if done.returncode != 0 or sent != n:
        raise RuntimeError(
            f"batch: exit {done.returncode}, {sent}/{n} sent: {done.stderr[-300:]!r}"
        )
    return seconds / n


async def _api(url: str, token: str, n: int) -> float:
    """Seconds per request for n posts by SIGNERS clients back to back."""
    body = json.dumps(
        {"request": _gateway.example(), "passphrase": _gateway.GP_PASSPHRASE},
        ensure_ascii=False,
    ).encode()
    left = n
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=600), headers=headers
    ) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body) as r:
                    if r.status != 201:
                        raise RuntimeError(f"api: HTTP {r.status}: {(await r.text())[:200]}")

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(SIGNERS)))
        return (time.monotonic() - start) / n


async def _measure(n: int, rounds: int, gpg: dict[str, Any] | None) -> dict[str, Any]:
    gw = await _gateway.build(_gateway.team_keys(), gpg={**(gpg or {}), "signers": SIGNERS})
    home, relay, token = gw.home, gw.relay, gw.extra["api_token"]
    gw.svc.close()  # the server process and the CLI own the home from here
    await gw.svc.keyring.close()
    work = home.parent / (home.name + "-batch")
    work.mkdir()
    api_s: list[float] = []
    batch_s: list[float] = []
    port = _free_port()
    server = await _start_server(home, port)
    try:
        url = f"http://127.0.0.1:{port}/api/requests"
        await _api(url, token, 2)  # warm up: agents, caches
        for _ in range(rounds):
            api_s.append(await _api(url, token, n))
            batch_s.append(await asyncio.to_thread(_batch, home, n, work))
    finally:
        _stop_server(server)
        _gateway.kill_agent(home / "gnupg")
        relay.stop()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    api, batch = min(api_s), min(batch_s)  # the least disturbed round of each
    return {
        "requests": n,
        "rounds": rounds,
        "api_s_per_request": [round(x, 3) for x in api_s],
        "batch_s_per_request": [round(x, 3) for x in batch_s],
        "batch_over_api": round(batch / api, 2),
    }


def run(quick: bool) -> dict[str, Any]:
    n, rounds = (10, 1) if quick else (100, 2)
    label, gpg = ("s2k_20ms", {"s2k_calibration_ms": 20}) if quick else ("s2k_default", None)
    r = asyncio.run(_measure(n, rounds, gpg))
    best_api, best_batch = min(r["api_s_per_request"]), min(r["batch_s_per_request"])
    r["table"] = [
        {
            "metric": f"seconds per request, {n} requests, {SIGNERS} signing homes ({label})",
            "value": f"batch {best_batch} / API {best_api}",
            "ratio": r["batch_over_api"],
            "target": "<= 1.2",
            "met": r["batch_over_api"] <= 1.2,
        }
    ]
    r["title"] = TITLE
    return r
