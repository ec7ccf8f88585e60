"""Key commands: securemail keys import|practice|sync|check|confirm|code|discover|
gp-passphrase|gp-revoke|export-gp. Each handler parses, calls one domain function (keydir,
keycheck, gpkeys, wkd)
and prints; secrets come from files or the terminal, never from argv."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from securemail import config
from securemail.access import SYSTEM, Actor
from securemail.accounts import auth
from securemail.cli import command, home_of
from securemail.cli.directory import open_home, read_secret
from securemail.keys import foresight as keycheck
from securemail.keys import gp as gpkeys
from securemail.keys import pinning as keydir
from securemail.keys import practice as practicekeys
from securemail.keys import wkd
from securemail.keys.manifest import public_key_data
from securemail.openpgp.keyinfo import phone_code
from securemail.openpgp.keyring import REVOCATION_REASONS
from securemail.region import directory
from securemail.services import Services
from securemail.store import get_meta


def _actor(svc: Services, username: str | None) -> Actor:
    if not username:
        return SYSTEM
    return svc.store.read_sync(lambda db: auth.actor_for_cli(db, username))


def _user(svc: Services, username: str) -> auth.User:
    return svc.store.read_sync(lambda db: auth.user_by_name(db, username))


def cmd_import(args: argparse.Namespace) -> int:
    """Pin the keys of one armored file for a team, by the same change-of-key rule as sync."""
    with open_home(args) as svc:
        text = Path(args.file).read_text(encoding="ascii")
        public_key_data(text, args.file)  # public keys only, checked on the packets
        actor = _actor(svc, args.as_user)
        team = svc.store.read_sync(lambda db: directory.team_by_address(db, args.team))
        pinned = asyncio.run(
            keydir.import_and_pin(
                svc, actor, team, text, name=args.name, verified_how=args.verified_how
            )
        )
        for fpr, email, outcome in pinned:
            print(f"{outcome}: {fpr} ({email}) for {team.address}")
            if outcome == keydir.QUARANTINED:
                print(f"  confirm by phone: securemail keys confirm {email} {fpr} --code ...")
    return 0


def cmd_practice(args: argparse.Namespace) -> int:
    """Pin a GP practice's own public key: the team's signed answers are sealed to it."""
    with open_home(args) as svc:
        text = Path(args.file).read_text(encoding="ascii")
        public_key_data(text, args.file)  # public keys only, checked on the packets
        actor = _actor(svc, args.as_user)
        fpr = asyncio.run(practicekeys.pin(svc, actor, args.org, text))
    print(f"pinned: {fpr} as the key of practice {args.org}; answers are sealed to it")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        folder = Path(args.folder) if args.folder else svc.settings.keys_path
        report = asyncio.run(keydir.sync(svc, folder, _actor(svc, args.as_user)))
    print(f"synced {folder}: {len(report.imported)} pinned key(s) in the keyring")
    for outcome, team, email, fpr in report.changes:
        if outcome != keydir.UNCHANGED:
            print(f"  {outcome}: {team} {email} {fpr}")
            if outcome == keydir.QUARANTINED:
                print(f"    confirm by phone: securemail keys confirm {email} {fpr} --code ...")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _when(state: keycheck.KeyState) -> str:
    return state.usable_until.strftime("%Y-%m-%d %H:%M UTC") if state.usable_until else "-"


def print_foresight(f: keycheck.Foresight) -> None:
    print(f"keys check at {f.checked_at:%Y-%m-%d %H:%M} UTC")
    for days in keycheck.BUCKETS:
        found = f.expiring(days)
        print(f"expiring within {days} day{'s' if days > 1 else ''}: {len(found)}")
        for k in found:
            print(f"  {k.kind} {k.owner}: {k.holder} <{k.email}> {k.fingerprint} until {_when(k)}")
    for k in f.unusable:
        print(f"unusable: {k.kind} {k.owner}: {k.holder} <{k.email}> {k.fingerprint} ({k.why})")
    for address in f.at_risk:
        print(
            f"AT RISK: team {address} has no key usable {keycheck.RISK_DAYS} days from now",
            file=sys.stderr,
        )


def cmd_check(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        foresight = asyncio.run(keycheck.foresee(svc))
        sent = asyncio.run(keycheck.notify_admin(svc, foresight)) if args.notify else None
    if args.json:
        print(json.dumps(foresight.as_json(), indent=2))
    else:
        print_foresight(foresight)
    if sent:
        print(f"notice {sent} queued for {svc.settings.gateway.admin_address}")
    return 0 if foresight.ok else 1


def cmd_confirm(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        actor = _actor(svc, args.as_user)
        outcome = svc.store.write_sync(
            lambda db: keydir.confirm(
                db,
                actor,
                email=args.address,
                fingerprint=args.fingerprint,
                code=args.code,
                now=svc.now_iso(),
                source_id=svc.settings.gateway.source_id,
            )
        )
    outcome.raise_if_refused()
    for m in outcome.confirmed:
        print(f"confirmed: {m.email} {m.fingerprint} is now active")
    return 0


def cmd_code(args: argparse.Namespace) -> int:
    print(phone_code(args.fingerprint))
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    settings = config.load(home_of(args))
    proposal = asyncio.run(wkd.discover(args.address, ssl_context=context, gpg=settings.gpg.binary))
    print(f"proposed (NOT pinned): {proposal.fingerprint} for {proposal.address}")
    print(f"  found by the {proposal.method} method at {proposal.url}")
    print(f"  phone code: {proposal.phone_code} (the key holder reads it from their own key)")
    print(f"  user ids: {', '.join(proposal.uids)}")
    if args.output:
        Path(args.output).write_text(proposal.armored, encoding="ascii")
        print(f"  public key written to {args.output}; pin it by a reviewed change to keys/")
    return 0


def cmd_gp_passphrase(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        user = _user(svc, args.as_user)
        old = read_secret(args.old_file, "current signing passphrase: ")
        new = read_secret(args.new_file, "new signing passphrase: ")
        actor = _actor(svc, args.as_user)
        fpr = asyncio.run(gpkeys.change_passphrase(svc, actor, user, old, new))
    print(f"passphrase of {fpr} changed")
    return 0


def cmd_gp_revoke(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        user = _user(svc, args.user)
        passphrase = read_secret(args.passphrase_file, "") if args.passphrase_file else None
        new = None
        if not args.no_replacement:
            new = read_secret(args.new_passphrase_file, "new signing passphrase: ")
        result = asyncio.run(
            gpkeys.revoke(
                svc,
                _actor(svc, args.as_user),
                user,
                reason=args.reason,
                comment=args.comment,
                passphrase=passphrase,
                new_passphrase=new,
            )
        )
    print(f"revoked {result.revoked} ({args.reason})")
    if result.replacement:
        print(f"replacement signing key {result.replacement}")
    print("publish the GP keys again (securemail keys export-gp) so nurses see the revocation")
    return 0


def cmd_export_gp(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        armored, keys = asyncio.run(gpkeys.export_gp_keys(svc))
        gateway = svc.store.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
    if args.output:
        Path(args.output).write_text(armored, encoding="ascii")
        for k in keys:
            print(f"{k.username} {k.fingerprint} {k.status}")
        if gateway:
            # Nurses compare this fingerprint out of band: it seals what is passed on.
            print(f"gateway {gateway} (seals passed-on requests and notices)")
        print(
            f"{len(keys)} GP key(s) written to {args.output}"
            + (" with the gateway's key" if gateway else "")
        )
    else:
        sys.stdout.write(armored)
    return 0


def _sub(keys: Any, name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = keys.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    p.set_defaults(handler=handler)
    return p


def register(sub: Any) -> None:
    p = command(sub, "keys", cmd_sync, "the reviewed key directory and the key lifecycle")
    keys = p.add_subparsers(dest="keys_command", required=True)
    s = _sub(keys, "import", cmd_import, "pin the public keys of an armored file for a team")
    s.add_argument("file")
    s.add_argument("--team", required=True, help="team address the keys belong to")
    s.add_argument("--name", help="member name (default: the key's user id)")
    s.add_argument("--verified-how", default="", help="how the fingerprint was verified")
    s.add_argument("--as", dest="as_user", help="the admin doing this (audit)")
    s = _sub(keys, "practice", cmd_practice, "pin a GP practice's key (answers are sealed to it)")
    s.add_argument("file", help="the practice's armored public key (its notice address as uid)")
    s.add_argument("--org", required=True, help="the practice's code")
    s.add_argument("--as", dest="as_user", help="the admin doing this (audit)")
    s = _sub(keys, "sync", cmd_sync, "import exactly what keys/directory.toml pins")
    s.add_argument("folder", nargs="?", help="the key directory (default: [gateway] keys_dir)")
    s.add_argument("--as", dest="as_user", help="the admin doing this (audit)")
    s = _sub(keys, "check", cmd_check, "keys expiring in 30/7/1 days; exit 1 if a team is at risk")
    s.add_argument("--json", action="store_true")
    s.add_argument("--notify", action="store_true", help="queue the admin notice when needed")
    s = _sub(keys, "confirm", cmd_confirm, "release a quarantined key with its phone code")
    s.add_argument("address", help="the member's e-mail address")
    s.add_argument("fingerprint")
    s.add_argument("--code", required=True, help="the code the key holder read out")
    s.add_argument("--as", dest="as_user", help="the admin doing this (audit)")
    s = _sub(keys, "code", cmd_code, "the phone code of a fingerprint")
    s.add_argument("fingerprint")
    s = _sub(keys, "discover", cmd_discover, "propose a key by WKD lookup (never pins)")
    s.add_argument("address")
    s.add_argument("--output", help="write the proposed public key here (for review)")
    s.add_argument("--cafile", help="extra CA certificates to trust for the WKD server")
    s = _sub(keys, "gp-passphrase", cmd_gp_passphrase, "change a GP's signing passphrase")
    s.add_argument("--as", dest="as_user", required=True, help="the GP's username")
    s.add_argument("--old-file", type=Path, default=None)
    s.add_argument("--new-file", type=Path, default=None)
    s = _sub(keys, "gp-revoke", cmd_gp_revoke, "revoke a GP's signing key (and replace it)")
    s.add_argument("--user", required=True, help="the GP's username")
    s.add_argument("--reason", required=True, choices=sorted(REVOCATION_REASONS))
    s.add_argument("--comment", default="", help="one line, no patient data")
    s.add_argument(
        "--passphrase-file",
        type=Path,
        default=None,
        help="the GP's current passphrase (without: the stored certificate)",
    )
    s.add_argument("--new-passphrase-file", type=Path, default=None)
    s.add_argument("--no-replacement", action="store_true", help="e.g. the GP left")
    s.add_argument("--as", dest="as_user", help="the admin doing this (audit)")
    s = _sub(keys, "export-gp", cmd_export_gp, "the GPs' public signing keys, for nurses")
    s.add_argument("--output", help="file to write (default: stdout)")
