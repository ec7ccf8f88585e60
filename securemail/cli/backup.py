"""Backup commands: backup (online, encrypted to the offline backup key) and restore.

Both are run by the operator or a timer as the system actor (``cli@host`` in the audit
row); docs/backup.md explains the backup key, the schedule and the restore drill.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM, Actor
from securemail.audit import integrity as audit_integrity
from securemail.cli import command, home_of
from securemail.config import load
from securemail.errors import InputError
from securemail.home import MIGRATIONS
from securemail.ops import backup, restore


def _system() -> Actor:
    return dataclasses.replace(SYSTEM, access_point=f"cli@{os.uname().nodename}")


def cmd_backup(args: argparse.Namespace) -> int:
    settings = load(home_of(args))
    result = backup.make_backup(settings, Path(args.to), _system())
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    seq, _ = result.audit_head
    print(
        f"backup written to {result.path} ({result.size} bytes, sha256 {result.sha256}); "
        f"{result.files} files, audit head row {seq}, encrypted to {result.key.fingerprint}"
    )
    if result.excluded:
        print(f"not in the backup: {', '.join(result.excluded)}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if args.home is None:  # never the default home: that may be the live one
        raise InputError("restore needs --home NEW (a new, empty home)", field="home")
    target = Path(args.home)
    result = restore.restore(
        Path(args.archive),
        target,
        _system(),
        gnupg_home=Path(args.gnupg_home) if args.gnupg_home else None,
        passphrase_file=Path(args.passphrase_file) if args.passphrase_file else None,
        binary=args.gpg,
        audit_public_key=(
            audit_integrity.load_public_key(Path(args.audit_public_key))
            if args.audit_public_key
            else None
        ),
        migrations=MIGRATIONS,
    )
    seq, head = result.audit_head
    print(
        f"restored {result.home} from the backup of {result.source_id} made "
        f"{result.created_at}: {result.files} files; audit chain verified ({result.audit_rows} "
        f"rows, head row {seq} {head[:16]}); {len(result.migrations_applied)} migrations "
        f"applied; {result.queued} messages to deliver ({result.leases_released} leases "
        "released)"
    )
    if result.origin_checked:
        print(f"archive signed by this gateway's audit key {result.signed_by}")
    else:
        print(
            f"archive signed by audit key {result.signed_by}: compare it with the key id "
            "`securemail audit key` printed (operations log), or pass --audit-public-key"
        )
    print(f"next: securemail check --home {result.home}; then start the gateway on it")
    return 0


def register(sub: Any) -> None:
    p = command(
        sub,
        "backup",
        cmd_backup,
        "copy the home (database online, keyring, keys, config) into a file encrypted to "
        "the offline backup key",
    )
    p.add_argument("--to", required=True, metavar="FILE", help="the archive to write (new file)")
    p = command(
        sub,
        "restore",
        cmd_restore,
        "restore a backup into a new, empty home (--home NEW); verifies every file and the "
        "audit chain",
    )
    p.add_argument("archive", metavar="FILE", help="the archive made by securemail backup")
    p.add_argument(
        "--gnupg-home",
        default=None,
        metavar="DIR",
        help="the offline keyring with the backup secret key (default: gpg's own)",
    )
    p.add_argument(
        "--passphrase-file",
        default=None,
        metavar="FILE",
        help="read the backup key's passphrase from FILE (default: gpg asks via pinentry)",
    )
    p.add_argument(
        "--audit-public-key",
        default=None,
        metavar="PEM",
        help="the gateway's audit key (from `securemail audit key`, kept apart): refuse an "
        "archive not signed by it",
    )
    p.add_argument("--gpg", default="gpg", help="the gpg program (default: gpg)")
