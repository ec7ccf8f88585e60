"""Request commands for integrations: request send, request status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from securemail import config
from securemail.accounts import auth
from securemail.cli import batch, command, home_of
from securemail.cli.directory import read_secret
from securemail.errors import InputError
from securemail.exchange import send as exchange
from securemail.home import open_services


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", field="file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno})", field="file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold one JSON object", field="file")
    return data


def cmd_send(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return cmd_send_batch(args)
    svc = open_services(config.load(home_of(args)))
    try:
        data = _load_json(Path(args.file))
        actor = svc.store.read_sync(lambda db: auth.actor_for_cli(db, args.as_user))
        passphrase = read_secret(args.passphrase_file, "signing passphrase: ")
        result = asyncio.run(
            exchange.send(
                svc, actor, data, passphrase, to=args.to, idempotency_key=args.idempotency_key
            )
        )
    finally:
        svc.close()
    print(result.reference)
    for s in result.skipped:
        print(f"warning: member {s['name']} left out ({s['why']}, key {s['fingerprint']})")
    return 0


def cmd_send_batch(args: argparse.Namespace) -> int:
    """``--batch``: one result line per request line (securemail.cli.batch); exit 0 only
    when every line was sent."""
    if args.idempotency_key is not None:
        raise InputError(
            "--idempotency-key names one request; in a batch give each line its own "
            '"idempotency_key"',
            field="--idempotency-key",
        )
    settings = config.load(home_of(args))
    svc = open_services(settings)
    try:
        actor = svc.store.read_sync(lambda db: auth.actor_for_cli(db, args.as_user))
        stream = batch.open_input(args.batch)
    except BaseException:
        svc.close()
        raise
    try:
        passphrase = read_secret(args.passphrase_file, "signing passphrase: ")
        lines = batch.read_lines(
            stream, settings.gateway.batch_max_lines, settings.gateway.batch_max_line_kb * 1024
        )
        job = batch.Batch(svc, actor, passphrase, to=args.to, out=sys.stdout)
        summary = asyncio.run(job.run(lines))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        svc.close()
    refused = ", ".join(str(n) for n in summary.refused[:20])
    more = " ..." if len(summary.refused) > 20 else ""
    print(
        f"batch: {summary.sent} sent, {len(summary.refused)} refused"
        + (f" (lines {refused}{more})" if refused else ""),
        file=sys.stderr,
    )
    return 0 if not summary.refused else 1


def cmd_status(args: argparse.Namespace) -> int:
    svc = open_services(config.load(home_of(args)))
    try:
        info = svc.store.read_sync(lambda db: exchange.status(db, args.reference))
    finally:
        svc.close()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"{info['reference']}  {info['state']}  to {info['team_address']}")
    for d in info["delivery"]:
        print(
            f"  delivery: {d['status']}  attempts={d['attempts']}  {d.get('last_error') or ''}"
            f"{d.get('relay_reply') or ''}"
        )
    if info.get("answer_due"):
        print(f"  answer due: {info['answer_due']}")
    return 0


def register(sub: Any) -> None:
    p = command(sub, "request", cmd_send, "send or inspect execution requests")
    rsub = p.add_subparsers(dest="request_command", required=True)
    s = rsub.add_parser("send", help="validate, sign, seal and queue a request from a JSON file")
    s.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    s.add_argument("--as", dest="as_user", required=True, help="the GP's username")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", help="the request as JSON (see examples/)")
    what.add_argument(
        "--batch",
        metavar="FILE",
        help="many requests, one JSON object per line (NDJSON; - reads stdin): one passphrase"
        " prompt, one signature and one transaction per request, signed on every core; one"
        " JSON result line per request line (docs/cli-batch.md)",
    )
    s.add_argument("--to", default=None, help="team address (overrides receiver.team_address)")
    s.add_argument("--passphrase-file", type=Path, default=None)
    s.add_argument(
        "--idempotency-key",
        default=None,
        help="a key you choose per request: run again with it (after a timeout, say), the "
        "same send gives the first one's reference instead of a second request",
    )
    s.set_defaults(handler=cmd_send)
    t = rsub.add_parser("status", help="delivery state and history of a request")
    t.add_argument("reference")
    t.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=cmd_status)
