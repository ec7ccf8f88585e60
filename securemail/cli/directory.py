"""Directory commands: org add, team add, user add, preferred (keys: cli/keys.py)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from securemail import config
from securemail.access import ROLES, SYSTEM
from securemail.accounts import auth
from securemail.cli import command, home_of
from securemail.errors import InputError
from securemail.home import open_services
from securemail.keys import gp as gpkeys
from securemail.region import directory
from securemail.services import Services


@contextmanager
def open_home(args: argparse.Namespace) -> Iterator[Services]:
    """The services of the command's home, closed however the command ends (closing also
    stops the keyring's gpg-agent)."""
    svc = open_services(config.load(home_of(args)))
    try:
        yield svc
    finally:
        svc.close()


def read_secret(path: Path | None, prompt: str) -> str:
    """A secret from a file (first line) or the terminal, never from argv."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            raise InputError(f"cannot read a secret from {path}", field=str(path)) from None
    return getpass.getpass(prompt)


def cmd_org_add(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        org = svc.store.write_sync(
            lambda db: directory.add_org(
                db,
                SYSTEM,
                code=args.code,
                kind=args.kind,
                name=args.name,
                notify_address=args.notify or "",
                now=svc.now_iso(),
            )
        )
    print(f"organisation {org.code} ({org.kind}) {org.name} added")
    return 0


def cmd_team_add(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        team = svc.store.write_sync(
            lambda db: directory.add_team(
                db,
                SYSTEM,
                org_code=args.org,
                name=args.name,
                address=args.address,
                now=svc.now_iso(),
            )
        )
    print(f"team {team.address} ({team.name}) added")
    return 0


def cmd_preferred(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        svc.store.write_sync(
            lambda db: directory.set_preferred(
                db, practice_code=args.practice, team_addresses=args.team
            )
        )
    print(f"preferred providers of {args.practice}: {', '.join(args.team)}")
    return 0


async def enrol_gp_key(svc: Services, user: auth.User, passphrase: str) -> str:
    """Create the GP's personal signing key, protected by a passphrase only the GP knows."""
    return await gpkeys.enrol(svc, SYSTEM, user, passphrase)


def cmd_user_add(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        password = read_secret(args.password_file, "password: ")
        # A GP's signing passphrase is read and checked before the account is written, so a
        # refused one leaves no GP without a key (nothing half-written).
        passphrase = ""
        if args.role == "gp":
            passphrase = read_secret(args.signing_passphrase_file, "signing passphrase: ")
            gpkeys.require_passphrase(passphrase)
        keys = ("big", "agb", "function", "phone", "out_of_hours_phone")
        profile = {k: getattr(args, k) or "" for k in keys}
        user = svc.store.write_sync(
            lambda db: auth.add_user(
                db,
                SYSTEM,
                username=args.username,
                name=args.name,
                role=args.role,
                org_code=args.org,
                password=password,
                email=args.email or "",
                teams=args.team or [],
                profile=profile,
                responsible=args.responsible or "",
                now=svc.now_iso(),
            )
        )
        print(f"user {user.username} ({user.role}) added")
        if user.role == "gp":
            fpr = asyncio.run(enrol_gp_key(svc, user, passphrase))
            print(f"signing key {fpr} created; the passphrase is not stored")
    return 0


def register(sub: Any) -> None:
    p = command(sub, "org", cmd_org_add, "add an organisation: org add --code --kind --name")
    p.add_argument("action", choices=["add"])
    p.add_argument("--code", required=True, help="AGB or URA code (8 digits)")
    p.add_argument("--kind", required=True, choices=directory.ORG_KINDS)
    p.add_argument("--name", required=True)
    p.add_argument("--notify", help="the organisation's own address for notices")
    p = command(sub, "team", cmd_team_add, "add a team: team add --org --name --address")
    p.add_argument("action", choices=["add"])
    p.add_argument("--org", required=True, help="code of the nursing organisation")
    p.add_argument("--name", required=True)
    p.add_argument("--address", required=True, help="the team's one entry address")
    p = command(sub, "preferred", cmd_preferred, "set a practice's 1-3 preferred teams")
    p.add_argument("--practice", required=True)
    p.add_argument("--team", action="append", required=True)
    p = command(sub, "user", cmd_user_add, "add a personal account: user add ...")
    p.add_argument("action", choices=["add"])
    p.add_argument("--username", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--org", help="organisation code")
    p.add_argument("--email")
    p.add_argument("--team", action="append", help="team address (nurses; repeatable)")
    p.add_argument("--big", help="BIG number, 11 digits (GPs; nurses optionally)")
    p.add_argument(
        "--responsible",
        help="a practice assistant's (--role assistant) responsible GP: that GP's username",
    )
    p.add_argument("--agb")
    p.add_argument(
        "--function",
        choices=auth.PRINCIPAL_FUNCTIONS,
        help="a GP account's function, signed as the order's principal (default: huisarts)",
    )
    p.add_argument("--phone")
    p.add_argument("--out-of-hours-phone", dest="out_of_hours_phone")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--signing-passphrase-file", type=Path)
