"""Outbox commands for the operator: outbox list | retry REF | cancel REF (audited)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from securemail import config
from securemail.accounts import auth
from securemail.cli import command, home_of
from securemail.delivery import outbox
from securemail.home import open_store


def _run(args: argparse.Namespace, fn: Any) -> Any:
    settings = config.load(home_of(args))
    store = open_store(settings.db_path)
    try:
        return store.write_sync(lambda db: fn(db, auth.actor_for_cli(db, args.as_user)))
    finally:
        store.close()


def cmd_list(args: argparse.Namespace) -> int:
    def fn(db: Any, actor: Any) -> list[dict[str, Any]]:
        from securemail.access import Resource, require

        require(actor, "outbox.manage", Resource("outbox"))
        return outbox.list_rows(db, status=args.status)

    rows = _run(args, fn)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        print(
            f"{r['reference']:<18} {r['kind']:<7} {r['status']:<9} attempts={r['attempts']:<3}"
            f" to={r['recipient']}  {r.get('last_error') or r.get('relay_reply') or ''}"
        )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    ids = _run(args, lambda db, actor: outbox.retry(db, args.reference, actor, now=time.time()))
    print(f"re-queued {len(ids)} deliveries of {args.reference}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    ids = _run(args, lambda db, actor: outbox.cancel(db, args.reference, actor, now=time.time()))
    print(f"cancelled {len(ids)} deliveries of {args.reference}")
    return 0


def register(sub: Any) -> None:
    p = command(sub, "outbox", cmd_list, "inspect and manage the delivery queue (admins)")
    osub = p.add_subparsers(dest="outbox_command", required=True)
    for name, handler, text in (
        ("list", cmd_list, "deliveries and their states"),
        ("retry", cmd_retry, "re-queue failed or stopped deliveries of a request"),
        ("cancel", cmd_cancel, "cancel queued deliveries of a request"),
    ):
        s = osub.add_parser(name, help=text, description=text)
        s.add_argument("--home", type=Path, default=argparse.SUPPRESS)
        s.add_argument("--as", dest="as_user", required=True, help="the admin's username")
        s.set_defaults(handler=handler)
        if name == "list":
            s.add_argument("--status", choices=outbox.STATUSES)
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("reference")
