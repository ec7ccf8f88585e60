"""Monitoring commands: the health checks once (for cron or systemd), availability, and the
NTA 7516 provider declaration."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from securemail import config
from securemail.cli import command, home_of
from securemail.errors import InputError
from securemail.home import open_services
from securemail.ops import health


def cmd_health(args: argparse.Namespace) -> int:
    settings = config.load(home_of(args))
    svc = open_services(settings)
    try:
        report = asyncio.run(health.Monitor(svc).report())
        if args.record:
            svc.store.write_sync(
                lambda db: health.record(db, report, settings.monitoring.health_check_seconds)
            )
    finally:
        svc.close()
    for c in report.checks:
        print(f"{c.name}: {c.status}: {c.reason}")
    return 0 if report.ok else 1


def cmd_availability(args: argparse.Namespace) -> int:
    settings = config.load(home_of(args))
    svc = open_services(settings)
    try:
        now = time.time()
        windows = svc.store.read_sync(
            lambda db: [health.availability(db, now, d) for d in health.WINDOWS_DAYS]
        )
    finally:
        svc.close()
    for a in windows:
        pct = "no recorded checks" if a.percent is None else f"{a.percent:.3f} %"
        print(
            f"{a.days:>3} days: {pct} ({a.checks} checks, {a.failed_checks} failed, "
            f"{a.unmonitored_seconds / 3600:.1f} h unmonitored, longest outage "
            f"{a.longest_outage_seconds / 60:.0f} min)"
        )
    return 0


def cmd_nta_declaration(args: argparse.Namespace) -> int:
    from securemail.ops import nta

    if args.format == "pdf" and args.out is None and sys.stdout.isatty():
        raise InputError("a PDF needs --out FILE (or redirect stdout)", field="--out")
    settings = config.load(home_of(args))
    svc = open_services(settings)
    try:
        declaration = asyncio.run(nta.build(svc))
    finally:
        svc.close()
    data = (
        nta.pdf(declaration) if args.format == "pdf" else nta.markdown(declaration).encode("utf-8")
    )
    if args.out is not None:
        Path(args.out).write_bytes(data)
        print(f"wrote {args.out}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    p = command(
        sub,
        "health",
        cmd_health,
        "run the health checks (database, gpg, relay) once; non-zero when one fails",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="also record the result for availability (when no server runs)",
    )
    command(
        sub,
        "availability",
        cmd_availability,
        "availability over 30, 90 and 365 days from the recorded health checks",
    )
    p = command(
        sub,
        "nta-declaration",
        cmd_nta_declaration,
        "the NTA 7516 provider declaration with the values this installation achieves",
    )
    p.add_argument("--format", choices=("markdown", "pdf"), default="markdown")
    p.add_argument("--out", type=Path, default=None, help="write to FILE instead of stdout")
