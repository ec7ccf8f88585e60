"""Deadline commands: ``securemail deadlines check`` marks and escalates what is overdue
(for cron, next to or instead of the web app's background watch). Idempotent."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from securemail.cli import command
from securemail.cli.directory import open_home
from securemail.exchange import escalation


def cmd_check(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        report = asyncio.run(escalation.check(svc))
    if args.json:
        print(
            json.dumps(
                {
                    "requests": list(report.requests),
                    "asks": list(report.asks),
                    "orders": [{"reference": r, "signal": k} for r, k in report.orders],
                }
            )
        )
    else:
        for reference in (*report.requests, *report.asks):
            print(f"overdue, escalated: {reference}")
    return 0


def register(sub: Any) -> None:
    p = command(sub, "deadlines", cmd_check, "watch answer and ask deadlines")
    dsub = p.add_subparsers(dest="deadlines_command", required=True)
    c = dsub.add_parser("check", help="mark overdue requests and asks and escalate each once")
    c.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=cmd_check)
