"""Adherence figures for the operator: ``securemail adherence report --month YYYY-MM``.

The same published (suppressed) figures as the coordinators' page /regio/afspraken, as a
text table, ``--csv`` or ``--json``; each run writes an ``adherence.view`` (text) or
``adherence.export`` (CSV, JSON) audit row, as the system account of this host or
``--as USERNAME`` (a coordinator or an admin). No patient data in any output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.cli import command
from securemail.cli.directory import open_home
from securemail.errors import AccessDeniedError
from securemail.region import adherence
from securemail.services import Services


def _actor(svc: Services, username: str | None) -> Actor:
    if not username:
        return dataclasses.replace(SYSTEM, access_point=f"cli@{os.uname().nodename}")
    actor = svc.store.read_sync(lambda db: auth.actor_for_cli(db, username))
    return dataclasses.replace(actor, access_point=f"cli@{os.uname().nodename}")


def _text(published: dict[str, Any]) -> str:
    lines = [f"adherence {published['month']} (counts 1-4 and figures from fewer than "
             f"{published['min_count']} items shown as <5; {published['hidden']}: hidden so "
             "that a suppressed count cannot be worked out)"]  # fmt: skip
    for table, rows in published["tables"].items():
        lines.append("")
        lines.append(f"{table}:")
        if not rows:
            lines.append("  (none)")
            continue
        keys = [k for k in adherence.COLUMNS if k in rows[0]]
        lines.append("  " + "  ".join(["code", "name", *keys]))
        for row in rows:
            lines.append("  " + "  ".join(str(row[k]) for k in ("code", "name", *keys)))
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    month = adherence.parse_month(args.month)  # a bad month fails before opening the home
    fmt = "csv" if args.csv else "json" if args.json else ""
    with open_home(args) as svc:
        actor = _actor(svc, args.as_user)
        try:
            svc.store.write_sync(lambda db: adherence.record_read(db, actor, month, export=fmt))
        except AccessDeniedError:
            svc.store.write_sync(lambda db: adherence.record_denial(db, actor, month))
            raise
        calendar = svc.settings.deadlines
        rows = svc.store.read_sync(lambda db: adherence.load_month(db, month, calendar))
        published = rows.figures(now=svc.now(), calendar=calendar)
    if args.csv:
        print(adherence.to_csv(published), end="")
    elif args.json:
        print(json.dumps(published, ensure_ascii=False, indent=2))
    else:
        print(_text(published))
    return 0


def register(sub: Any) -> None:
    p = command(sub, "adherence", cmd_report, "are the agreements kept? aggregate figures")
    asub = p.add_subparsers(dest="adherence_command", required=True)
    r = asub.add_parser(
        "report",
        help="one month's figures per team and per practice (small counts suppressed)",
        description="One month's answer and ask figures per team and per practice; counts "
        "of 1-4 and figures from fewer than 5 items are shown as <5, and x hides a cell "
        "from which one could be worked out (docs/adherence.md).",
    )
    r.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    r.add_argument("--month", required=True, help="calendar month YYYY-MM (Europe/Amsterdam)")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (as /regio/afspraken.csv)")
    fmt.add_argument("--json", action="store_true", help="JSON")
    r.add_argument(
        "--as",
        dest="as_user",
        default=None,
        help="act as this coordinator or admin (default: the system account)",
    )
    r.set_defaults(handler=cmd_report)
