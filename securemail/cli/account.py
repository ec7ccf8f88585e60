"""Account commands for the gateway operator: reset a password (forces a new second factor,
ends sessions and API tokens), lift a temporary lock, deactivate an account, list and
revoke any practice's API tokens.

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
from securemail.accounts import apitoken, auth
from securemail.cli import command
from securemail.cli.directory import open_home, read_secret

#: The operator at this server's command line (typed 'cli' in the audit trail).
SYSTEM = dataclasses.replace(_SYSTEM, access_point=f"cli@{os.uname().nodename}")


def cmd_account(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        src = svc.settings.gateway.source_id
        if args.action == "reset-password":
            _username(args)
            password = read_secret(args.password_file, "new password: ")
            ended = svc.store.write_sync(
                lambda db: auth.reset_password(
                    db,
                    SYSTEM,
                    args.username,
                    password,
                    source_id=src,
                    now=svc.now(),
                    settings=svc.settings,
                )
            )
            print(
                f"password of {args.username} reset; {ended} session(s) ended and API tokens "
                "revoked; the next login pairs a new authenticator app and issues new "
                "recovery codes"
            )
        elif args.action == "deactivate":
            ended, tokens = svc.store.write_sync(
                lambda db: auth.deactivate(db, SYSTEM, _username(args), now=svc.now())
            )
            print(
                f"{args.username} deactivated; {ended} session(s) ended; {tokens} token(s) revoked"
            )
        elif args.action == "tokens":
            for t in svc.store.read_sync(apitoken.list_every):
                state = "revoked" if t.revoked_at else "live"
                print(f"{t.id}\t{t.prefix}\torg {t.org_id}\tuser {t.user_id}\t{state}")
        elif args.action == "revoke-token":
            if args.token_id is None:
                raise SystemExit("revoke-token needs --token-id")
            svc.store.write_sync(
                lambda db: apitoken.revoke(db, SYSTEM, args.token_id, now=svc.now(), source_id=src)
            )
            print(f"api token {args.token_id} revoked")
        else:
            name = _username(args)
            svc.store.write_sync(lambda db: auth.unlock(db, SYSTEM, name, source_id=src))
            print(f"{args.username} unlocked")
    return 0


def _username(args: argparse.Namespace) -> str:
    if not args.username:
        raise SystemExit(f"{args.action} needs --username")
    return str(args.username)


def register(sub: Any) -> None:
    p = command(
        sub,
        "account",
        cmd_account,
        "reset a password (forces a new second factor) or unlock an account",
    )
    p.add_argument(
        "action", choices=["reset-password", "unlock", "deactivate", "tokens", "revoke-token"]
    )
    p.add_argument("--username", help="the account (reset-password, unlock, deactivate)")
    p.add_argument("--token-id", type=int, help="the token to revoke (see `account tokens`)")
    p.add_argument(
        "--password-file",
        type=Path,
        help="read the new password from this file's first line (default: ask)",
    )
