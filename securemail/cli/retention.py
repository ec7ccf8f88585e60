"""``securemail purge``: apply the retention periods now (the web app also does it daily).

Prints what went per category, counts only (never content); ``--dry-run`` counts what is
due without changing anything; ``--json`` for scripts and monitoring.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from securemail.cli import command
from securemail.cli.directory import open_home
from securemail.ops import retention


def cmd_purge(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        counts = retention.purge(
            svc.store, svc.settings, now=datetime.now(UTC), dry_run=args.dry_run
        )
        r = svc.settings.retention
    values = asdict(counts)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **values, "total": counts.total}))
        return 0
    verb = "due" if args.dry_run else "purged"
    print(
        f"retention: content {r.content_days} days, metadata {r.metadata_days} days, "
        f"audit {svc.settings.audit.retention_years} years"
    )
    for name, value in values.items():
        print(f"  {name.replace('_', ' ')}: {value} {verb}")
    if not counts.total:
        print("nothing is past its retention period")
    return 0


def register(sub: Any) -> None:
    p = command(
        sub, "purge", cmd_purge,
        "remove content and metadata past their retention periods (docs/retention.md)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="count what is due; change nothing")
    p.add_argument("--json", action="store_true", help="one JSON object with the counts")
