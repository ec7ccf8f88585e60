"""The command line: parse, call a domain function, print. English output, one line per error.

Each domain registers its subcommands from its own module (securemail/cli/<domain>.py)
through ``register(subparsers)``; every subcommand takes ``--home``. ``main()`` is the
boundary that turns any SecuremailError into one line on stderr and exit status 1,
and anything unexpected into an incident id (never a traceback with patient data).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from securemail import logsetup
from securemail.config import default_home
from securemail.errors import SecuremailError

log = logging.getLogger("securemail.cli")

#: Modules under securemail.cli that register subcommands, in help order.
COMMAND_MODULES = (
    "gateway", "directory", "account", "keys", "request", "consent", "audit", "outbox",
    "deadlines", "retention", "region", "adherence", "backup", "monitor", "privacy",
)  # fmt: skip

#: Commands a practice system runs once per request, mapped to the one module that registers
#: them: main() imports only that module for them (every module costs about a second of
#: imports on a busy machine: aiohttp, jinja2, holidays...). Any other command gets the full
#: parser. tests/test_gateway.py checks the map against the modules.
FAST_COMMANDS = {"request": "request"}

Handler = Callable[[argparse.Namespace], int | None]


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="gateway home (default: $SECUREMAIL_HOME or ./var)",
    )


def command(
    subparsers: Any, name: str, handler: Handler, help_text: str
) -> argparse.ArgumentParser:
    """Add a subcommand with --home and its handler."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_home(p)
    p.set_defaults(handler=handler)
    return p


def home_of(args: argparse.Namespace) -> Path:
    return Path(args.home) if args.home is not None else default_home()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command module, or with only the module ``only``."""
    parser = argparse.ArgumentParser(
        prog="securemail",
        description="Secure gateway for execution requests between GP practices and nursing teams.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only else COMMAND_MODULES:
        try:
            module = import_module(f"securemail.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"securemail.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _fast_module(argv: Sequence[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return FAST_COMMANDS.get(first or "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_fast_module(argv))
    args = parser.parse_args(argv)
    # The format can come only from the environment here (the home's securemail.toml is read
    # by each command); serve and worker apply the loaded [gateway] log_format again.
    fmt = os.environ.get("SECUREMAIL_GATEWAY_LOG_FORMAT", "text")
    logsetup.configure(fmt if fmt in logsetup.FORMATS else "text", verbose=args.verbose)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except SecuremailError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        incident = uuid.uuid4().hex[:12]
        # The traceback goes to the log with an incident id; messages carry ids, not patient data.
        log.error(
            "unexpected failure, incident %s",
            incident,
            exc_info=args.verbose,
            extra={"incident": incident},
        )
        print(f"error: internal error (incident {incident}); see the log", file=sys.stderr)
        return 1
