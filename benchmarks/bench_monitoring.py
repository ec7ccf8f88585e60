"""Monitoring at scale: what a scrape, a /healthz poll and the NTA declaration cost.

A throw-away home (gateway key, one team with a key) gets an outbox of many rows in every
status (inserted directly: only the metrics' GROUP BY queries read them), a year of
recorded health checks at one a minute, and some audit rows; then times:

- ``Monitor.report()`` from its caches (what a load balancer's /healthz poll costs);
- ``metrics.collect`` + ``render`` (one Prometheus scrape, 30-day availability included);
- ``health.availability`` over 30 and 365 days;
- ``nta.build`` (a full chain verification, key listings, a live relay check: none here).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._gateway import percentile
from securemail import config
from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.home import init_home, open_services
from securemail.ops import health, metrics, nta

TITLE = "Monitoring: /healthz, /metrics, availability, NTA declaration"


def _fill(db: Any, messages: int, checks: int, now: float, rng: random.Random) -> None:
    rows = []
    for i in range(messages):
        status = rng.choice(outbox.STATUSES)
        t = now - rng.uniform(0, 30 * 86400)
        rows.append(
            (
                f"UVZ-2026-{i:06d}",
                "request",
                f"<{i}@bench>",
                "a@b",
                "c@d",
                b"x",
                status,
                1,
                t,
                t,
                t,
                t,
            )
        )
    db.conn.executemany(
        "INSERT INTO outbox (reference, kind, message_id, sender, recipient, mime, status, "
        "attempts, next_attempt_at, created_at, queued_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.conn.executemany(
        "INSERT INTO health_checks (checked_at, ok, failed, interval_seconds) VALUES (?, ?, ?, 60)",
        [(now - (checks - i) * 60, int(rng.random() > 0.001), "") for i in range(checks)],
    )


def _times(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def _measure(home: Path, quick: bool) -> dict[str, Any]:
    messages, checks, audit_rows = (10_000, 50_000, 2_000) if quick else (200_000, 525_600, 20_000)
    svc = open_services(config.load(home))
    try:
        now = time.time()
        rng = random.Random(7)
        svc.store.write_sync(lambda db: _fill(db, messages, checks, now, rng))
        svc.store.write_sync(
            lambda db: [
                audit.record(
                    db,
                    audit.AuditEvent.of(
                        SYSTEM, "audit.view", object_type="audit", object_id="bench"
                    ),
                )
                for _ in range(audit_rows)
            ]
        )
        monitor = health.Monitor(svc)
        await monitor.report()  # fill the caches
        polls = []
        for _ in range(200):
            start = time.perf_counter()
            await monitor.report()
            polls.append((time.perf_counter() - start) * 1000)
        scrapes = []
        for _ in range(20 if quick else 50):
            start = time.perf_counter()
            metrics.render(await metrics.collect(svc, monitor))
            scrapes.append((time.perf_counter() - start) * 1000)
        a30 = svc.store.read_sync(lambda db: _times(lambda: health.availability(db, now, 30), 5))
        a365 = svc.store.read_sync(lambda db: _times(lambda: health.availability(db, now, 365), 3))
        start = time.perf_counter()
        await nta.build(svc)
        declaration_s = time.perf_counter() - start
    finally:
        svc.close()
    p = {
        k: (percentile(v, 0.5), percentile(v, 0.99))
        for k, v in {"poll": polls, "scrape": scrapes, "a30": a30, "a365": a365}.items()
    }
    return {
        "title": TITLE,
        "outbox_rows": messages, "health_check_rows": checks, "audit_rows": audit_rows,
        "healthz_cached_ms_p50_p99": p["poll"], "scrape_ms_p50_p99": p["scrape"],
        "availability_30d_ms_p50": p["a30"][0], "availability_365d_ms_p50": p["a365"][0],
        "nta_declaration_seconds": round(declaration_s, 2),
        "table": [
            {"metric": "/healthz from cache p50/p99 ms (database read each time)",
             "value": f"{p['poll'][0]:.2f} / {p['poll'][1]:.2f}"},
            {"metric": f"/metrics scrape p50/p99 ms ({messages:,} outbox rows, "
                       f"{checks:,} recorded checks)",
             "value": f"{p['scrape'][0]:.1f} / {p['scrape'][1]:.1f}"},
            {"metric": "availability 30 d / 365 d p50 ms",
             "value": f"{p['a30'][0]:.1f} / {p['a365'][0]:.1f}"},
            {"metric": "nta-declaration build s (full chain verify, relay down)",
             "value": f"{declaration_s:.2f}"},
        ],
    }  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="smb-"))
    home = tmp / "h"
    try:
        asyncio.run(init_home(home, overrides={"smtp": {"port": 9, "timeout_seconds": 2}}))
        return asyncio.run(_measure(home, quick))
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "all"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
