"""The GP's wait at the JSON API: p50/p95/p99 of ``POST /api/requests`` under concurrent
clients, as ratios against raw gpg doing the signature of the same bytes, in the same run.

- API: ``securemail serve`` in its own process (web app and delivery worker, ``[gpg]
  signers = 2``: two signing homes, one gpg-agent each) and a recording STARTTLS relay.
  C clients (closed loop: each sends its next request when the last was answered) post the
  example request with the GP's passphrase for a segment; a request's latency is from its
  POST to the 201 (the request durably stored, sealed, queued).
- Baseline: C threads each running the raw gpg sign+encrypt of the request's inner entity
  (benchmarks.bench_seal.RawGpg: the same key, passphrase and three recipients, one gpg
  process per message), thread i in signing home i mod 2, i.e. on the same two agents.
  What the GP could not wait less than, with the machine as busy as it is in that minute.

Segments alternate (raw, API, raw, API) so that other load on the shared machine falls on
both alike. Reported per concurrency: p50/p95/p99 of each, and API / raw per percentile.
Benchmark output only, never a test assertion.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import aiohttp

from benchmarks import _gateway
from benchmarks.bench_e2e import _free_port, _start_server, _stop_server
from benchmarks.bench_seal import SIGNERS, RawGpg, raw_gpg

TITLE = "API latency: POST /api/requests p50/p95/p99 vs raw gpg sign+encrypt (same run)"
PERCENTILES = (0.5, 0.95, 0.99)


def _summary(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        v = _gateway.percentile(values, q)
        out[f"p{round(q * 100)}_ms"] = None if v is None else round(v, 1)
    out["n"] = len(values)
    return out


async def _raw_segment(raw: RawGpg, clients: int, seconds: float) -> list[float]:
    """``clients`` threads doing raw sign+encrypt back to back; each one's latency in ms."""
    deadline = time.monotonic() + seconds

    def loop(i: int) -> list[float]:
        home = raw.homes[i % len(raw.homes)]
        times: list[float] = []
        while time.monotonic() < deadline:
            start = time.monotonic()
            raw.sign_encrypt(home)
            times.append((time.monotonic() - start) * 1000)
        return times

    parts = await asyncio.gather(*(asyncio.to_thread(loop, i) for i in range(clients)))
    return [t for part in parts for t in part]


async def _api_segment(
    session: aiohttp.ClientSession, url: str, body: bytes, clients: int, seconds: float
) -> list[float]:
    """``clients`` API clients posting back to back; each request's latency in ms."""
    deadline = time.monotonic() + seconds

    async def loop() -> list[float]:
        times: list[float] = []
        while time.monotonic() < deadline:
            start = time.monotonic()
            async with session.post(url, data=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"api: HTTP {r.status}: {(await r.text())[:200]}")
                await r.read()
            times.append((time.monotonic() - start) * 1000)
        return times

    parts = await asyncio.gather(*(loop() for _ in range(clients)))
    return [t for part in parts for t in part]


async def _measure(
    team: str, gpg: dict[str, Any] | None, *, concurrency: tuple[int, ...], segment: float
) -> dict[str, Any]:
    gw = await _gateway.build(team, gpg={**(gpg or {}), "signers": SIGNERS})
    raw = await raw_gpg(gw)
    home, relay = gw.home, gw.relay
    gw.svc.close()  # the server process owns the home from here
    await gw.svc.keyring.close()
    port = _free_port()
    server = await _start_server(home, port)
    url = f"http://127.0.0.1:{port}/api/requests"
    body = json.dumps(
        {"request": _gateway.example(), "passphrase": _gateway.GP_PASSPHRASE},
        ensure_ascii=False,
    ).encode()
    out: dict[str, Any] = {"signers": SIGNERS, "inner_bytes": len(raw.inner)}
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=300),
            headers={
                "Authorization": f"Bearer {gw.extra['api_token']}",
                "Content-Type": "application/json",
            },
        ) as session:
            await _api_segment(session, url, body, 1, 0.1)  # warm up: agents, caches
            for clients in concurrency:
                raw_ms: list[float] = []
                api_ms: list[float] = []
                for _ in range(2):  # raw, API, raw, API
                    raw_ms += await _raw_segment(raw, clients, segment / 2)
                    api_ms += await _api_segment(session, url, body, clients, segment / 2)
                out[f"clients_{clients}"] = _compare(_summary(api_ms), _summary(raw_ms))
    finally:
        _stop_server(server)
        _gateway.kill_agent(home / "gnupg")
        relay.stop()
        shutil.rmtree(home, ignore_errors=True)
    return out


def _compare(api: dict[str, float | None], raw: dict[str, float | None]) -> dict[str, Any]:
    ratios: dict[str, float | None] = {}
    for q in PERCENTILES:
        key = f"p{round(q * 100)}_ms"
        a, r = api[key], raw[key]
        ratios[key.removesuffix("_ms")] = round(a / r, 2) if a and r else None
    return {"api": api, "raw_gpg": raw, "api_over_raw": ratios}


def settings_under_test(quick: bool) -> list[tuple[str, dict[str, Any] | None]]:
    low = ("s2k_20ms", {"s2k_calibration_ms": 20})
    return [low] if quick else [("s2k_default", None), low]


def run(quick: bool) -> dict[str, Any]:
    concurrency = (1, 2) if quick else (1, 2, 4, 8)
    segment = 4.0 if quick else 20.0
    team = _gateway.team_keys()
    results: dict[str, Any] = {"segment_seconds": segment, "concurrency": list(concurrency)}
    table: list[dict[str, Any]] = []
    for label, gpg in settings_under_test(quick):
        r = asyncio.run(_measure(team, gpg, concurrency=concurrency, segment=segment))
        results[label] = r
        for clients in concurrency:
            x = r[f"clients_{clients}"]
            a, w, q = x["api"], x["raw_gpg"], x["api_over_raw"]
            table.append(
                {
                    "metric": f"API p50/p95/p99 ms, {clients} client(s) ({label})",
                    "value": f"{a['p50_ms']} / {a['p95_ms']} / {a['p99_ms']} (n {a['n']});"
                    f" raw gpg {w['p50_ms']} / {w['p95_ms']} / {w['p99_ms']} (n {w['n']})",
                    "ratio": f"{q['p50']} / {q['p95']} / {q['p99']}",
                }
            )
    results["table"] = table
    results["title"] = TITLE
    return results
