"""Account commands for the gateway operator: reset a password (forces a new second factor),
lift a temporary lock.

Run on the gateway host by the operator, who has checked who is asking (in person or by a
call-back to a known number) before resetting; every change is audited as user.update.
The new password is read from a file or the terminal, never from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM as _SYSTEM
from securemail.accounts import auth
from securemail.cli import command
from securemail.cli.directory import open_home, read_secret

#: The operator at this server's command line (typed 'cli' in the audit trail).
SYSTEM = dataclasses.replace(_SYSTEM, access_point=f"cli@{os.uname().nodename}")


def cmd_account(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        src = svc.settings.gateway.source_id
        if args.action == "reset-password":
            password = read_secret(args.password_file, "new password: ")
            ended = svc.store.write_sync(
                lambda db: auth.reset_password(db, SYSTEM, args.username, password, source_id=src)
            )
            print(
                f"password of {args.username} reset; {ended} session(s) ended; the next login "
                "pairs a new authenticator app and issues new recovery codes"
            )
        else:
            svc.store.write_sync(lambda db: auth.unlock(db, SYSTEM, args.username, source_id=src))
            print(f"{args.username} unlocked")
    return 0


def register(sub: Any) -> None:
    p = command(
        sub,
        "account",
        cmd_account,
        "reset a password (forces a new second factor) or unlock an account",
    )
    p.add_argument("action", choices=["reset-password", "unlock"])
    p.add_argument("--username", required=True)
    p.add_argument(
        "--password-file",
        type=Path,
        help="read the new password from this file's first line (default: ask)",
    )
