"""``securemail privacy-pack``: the AVG documents (record of processing, DPIA starting
point, processor-agreement annex) from this installation's configuration, in Dutch,
Markdown and PDF (docs/privacy-pack.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from securemail.cli import command
from securemail.cli.directory import open_home
from securemail.ops import privacy_pack


def cmd_privacy_pack(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        orgs = svc.store.read_sync(
            lambda db: [
                privacy_pack.Organisation(str(c), str(k), str(n))
                for c, k, n in db.execute(
                    "SELECT code, kind, name FROM organisations ORDER BY kind, name"
                )
            ]
        )
        out = args.out if args.out is not None else svc.settings.home / "privacy-pack"
        written = privacy_pack.write(svc.settings, orgs, out, pdf=not args.no_pdf)
    for path in written:
        print(path)
    return 0


def register(sub: Any) -> None:
    p = command(
        sub, "privacy-pack", cmd_privacy_pack,
        "write the record of processing, DPIA starting point and processor annex (Dutch)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="folder (default: HOME/privacy-pack)")
    p.add_argument("--no-pdf", action="store_true", help="Markdown only")
