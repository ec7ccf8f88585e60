"""Gateway commands: init, check, serve, worker, demo, settings."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from securemail import config, logsetup
from securemail.cli import command, home_of
from securemail.home import check_home, init_home
from securemail.store import Store


def cmd_init(args: argparse.Namespace) -> int:
    report = asyncio.run(init_home(home_of(args)))
    if report.changed:
        print(f"initialised {report.home}:")
        for item in report.created:
            print(f"  created {item}")
    else:
        print(f"{report.home} is already initialised; nothing changed")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = config.load(home_of(args))
    store = Store(settings.db_path)
    try:
        report = check_home(settings, store)
    finally:
        store.close()
    for fact in report.facts:
        print(f"ok: {fact}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from securemail.web.server import serve

    settings = config.load(home_of(args))
    overrides: dict[str, Any] = {}
    if args.port:
        overrides["port"] = args.port
    if args.host:
        overrides["host"] = args.host
    if overrides:
        settings = settings.replace(web=overrides)
    logsetup.configure(settings.gateway.log_format, verbose=args.verbose)
    serve(settings)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from securemail.web.server import run_worker_only

    settings = config.load(home_of(args))
    logsetup.configure(settings.gateway.log_format, verbose=args.verbose)
    run_worker_only(settings)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from securemail.demo import run_demo

    run_demo(home_of(args), port=args.port, smtp_port=args.smtp_port, setup_only=args.setup_only)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    print(config.render_markdown() if args.markdown else config.render_toml())
    return 0


def register(sub: Any) -> None:
    command(sub, "init", cmd_init, "create a gateway home (config, database, keyring)")
    command(sub, "check", cmd_check, "startup checks; non-zero when sending must stay off")
    p = command(sub, "serve", cmd_serve, "run the web app and the delivery worker")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--host", default=None)
    command(sub, "worker", cmd_worker, "run only the delivery worker")
    p = command(sub, "demo", cmd_demo, "demo home with users, keys and a local SMTP server; serve")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--smtp-port", type=int, default=8025)
    p.add_argument("--setup-only", action="store_true", help="set up the demo home and exit")
    p = command(sub, "settings", cmd_settings, "print every setting with its default")
    p.add_argument("--markdown", action="store_true")
