"""Audit commands: verify, patient, export, checkpoint, purge, key.

Every command that reads the trail writes its own audit row (audit.verify, audit.view,
audit.export); the acting person is ``--as USERNAME`` (a privacy officer for reports and
exports), or the system account for verify/checkpoint/purge run by the operator or cron.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM, Actor, Resource, require
from securemail.audit import export as audit_export
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import retention as audit_retention
from securemail.audit import review as audit_review
from securemail.audit import trail as audit
from securemail.audit.trail import EVENT_CODES
from securemail.cli import command, home_of
from securemail.config import Settings, load
from securemail.errors import AccessDeniedError, InputError, NotInitialisedError
from securemail.home import MIGRATIONS
from securemail.store import Store


def _open(args: argparse.Namespace) -> tuple[Settings, Store]:
    settings = load(home_of(args))
    if not settings.db_path.exists():
        raise NotInitialisedError(
            f"{settings.home} has no database; run: securemail init --home {settings.home}",
            home=str(settings.home),
        )
    store = Store(settings.db_path)
    try:
        store.migrate(MIGRATIONS)
        audit_integrity.install(store, settings.home, settings.audit.checkpoint_every)
    except BaseException:
        store.close()
        raise
    return settings, store


def _actor(store: Store, username: str | None) -> Actor:
    if not username:
        return dataclasses.replace(SYSTEM, access_point=f"cli@{os.uname().nodename}")
    from securemail.accounts import auth

    return store.read_sync(lambda db: auth.actor_for_cli(db, username))


def _period(
    settings: Settings, args: argparse.Namespace, default_days: int = 30
) -> tuple[str, str]:
    return audit_report.parse_period(
        args.date_from, args.date_to, tz=settings.deadlines.timezone, default_days=default_days
    )


def cmd_verify(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    try:
        actor = _actor(store, args.as_user)
        if not actor.is_system:
            try:
                require(actor, "audit.verify", Resource("audit", org_id=actor.org_id))
            except AccessDeniedError as exc:
                denied: Exception = exc
                store.write_sync(
                    lambda db: audit_report.record_denial(
                        db, actor, "audit.verify", denied, what="chain"
                    )
                )
                raise
        keys = audit_integrity.trusted_keys(settings.home)
        for p in args.public_key or []:
            k = audit_integrity.load_public_key(Path(p))
            keys[audit_integrity.key_id(k)] = k
        try:
            report = store.read_sync(
                lambda db: audit_integrity.verify(db, keys, workers=args.workers)
            )
        except audit.ChainBrokenError as exc:
            broken = exc
            store.write_sync(
                lambda db: audit_review.record_verification(
                    db, actor, ok=False, detail=broken.reason
                )
            )
            raise
        store.write_sync(
            lambda db: audit_review.record_verification(db, actor, ok=True, detail=report.summary())
        )
    finally:
        store.close()
    print(report.summary())
    cp = report.last_checkpoint
    if cp is not None:
        print(f"last checkpoint: row {cp.seq} signed {cp.signed_at} ({cp.kind}, key {cp.key_id})")
    else:
        print("no checkpoint yet: run `securemail audit checkpoint`")
    if report.anchor_seq:
        print(f"chain starts after purged row {report.anchor_seq}")
    print(
        f"head: row {report.last_seq} {report.head_hash}; {report.unsigned_rows} rows after "
        "the last checkpoint"
    )
    return 0


def cmd_patient(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    try:
        actor = _actor(store, args.as_user)
        start, end = _period(settings, args, default_days=365)
        report = audit_report.run_sync(
            store,
            actor,
            "audit.view",
            lambda db: audit_report.disclosure_report(db, actor, args.bsn, start, end),
            what="disclosure",
        )
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "bsn": report.bsn,
                    "from": start,
                    "to": end,
                    "organisation": report.organisation,
                    "events": report.rows,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print(f"{len(report.rows)} events, {start} .. {end}, scope {report.organisation}")
    for cells in audit_export.disclosure_table(report, settings.deadlines.timezone):
        print("  " + " | ".join(c for c in cells if c))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    out = None
    try:
        actor = _actor(store, args.as_user)
        start, end = _period(settings, args, default_days=30)
        scope = audit_report.run_sync(
            store,
            actor,
            "audit.export",
            lambda db: audit_export.begin_export(db, actor, args.format, start, end),
            what=f"trail.{args.format}",
        )
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115

        def write(db: Any) -> int:
            rows = audit_export.export_rows(db, scope, start, end)
            if args.format == "csv":
                return audit_export.write_csv(rows, out)
            return audit_export.write_fhir(rows, out, audit_export.org_kinds(db))

        n = store.read_sync(write)
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
        store.close()
    print(f"exported {n} rows ({args.format}, {start} .. {end})", file=sys.stderr)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    try:
        actor = _actor(store, args.as_user)
        key = audit_integrity.load_or_create_checkpoint_key(settings.home)

        def sign(db: Any) -> audit_integrity.Checkpoint | None:
            cp = audit_integrity.checkpoint(db, key, kind="manual")
            if cp is not None:
                audit.record(
                    db,
                    audit.AuditEvent.of(
                        actor,
                        "audit.checkpoint",
                        object_type="audit",
                        object_id=str(cp.seq),
                        nature="technical",
                        outcome_detail=f"checkpoint {cp.id}",
                    ),
                )
            return cp

        cp = store.write_sync(sign)
    finally:
        store.close()
    if cp is None:
        print("the trail is empty; nothing to sign")
    else:
        print(f"signed row {cp.seq} ({cp.head_hash[:16]}…) with key {cp.key_id}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    years = settings.audit.retention_years
    now = datetime.now(UTC)
    try:
        actor = _actor(store, args.as_user)
        if not actor.is_system and actor.role != "admin":
            raise InputError("a purge is run by the system or an admin", field="as")
        cutoff = audit_retention.retention_cutoff(now, years)
        if args.dry_run:
            first, upto = store.read_sync(lambda db: audit_retention.purgeable(db, cutoff))
            count = max(0, upto - first + 1)
            print(f"{count} rows recorded before {cutoff} are past retention ({years} years)")
            return 0
        key = audit_integrity.load_or_create_checkpoint_key(settings.home)
        result = store.write_sync(
            lambda db: audit_retention.purge(
                db, actor, key, now=now, retention_years=years, source_id=settings.gateway.source_id
            )
        )
    finally:
        store.close()
    if result is None:
        print(f"nothing recorded before {audit_retention.retention_cutoff(now, years)}")
    else:
        print(
            f"purged rows {result.first_seq}..{result.last_seq} ({result.rows}) recorded "
            f"before {result.cutoff}; anchor signed, audit.purge is row {result.event_seq}"
        )
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    settings = load(home_of(args))
    public = audit_integrity.load_or_create_checkpoint_key(settings.home).public_key()
    print(f"# audit checkpoint key {audit_integrity.key_id(public)}")
    print(audit_integrity.public_pem(public), end="")
    return 0


def render_actions_markdown() -> str:
    """Every event code with its NEN 7513 action and meaning, in docs/audit-actions.md's form."""
    lines = [
        "# Audit actions",
        "",
        "Every event code the gateway writes (`securemail/audit/trail.py` `EVENT_CODES`), with its",
        "NEN 7513 action (C create, R read, U update, D delete, E execute). A test keeps this list",
        "complete.",
        "",
        "| event code | action | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{code}` | {action} | {meaning} |" for code, (action, meaning) in EVENT_CODES.items()
    ]
    return "\n".join(lines) + "\n"


def cmd_codes(args: argparse.Namespace) -> int:
    print(render_actions_markdown(), end="")
    return 0


def _sub(parent: Any, name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    p.set_defaults(handler=handler)
    return p


def _period_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="date_from", default=None, help="first day (YYYY-MM-DD)")
    p.add_argument("--to", dest="date_to", default=None, help="last day, inclusive (YYYY-MM-DD)")


def register(sub: Any) -> None:
    p = command(sub, "audit", cmd_verify, "verify, query and export the audit trail")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = _sub(
        asub,
        "verify",
        cmd_verify,
        "recompute the chain and check every checkpoint; non-zero when tampered",
    )
    v.add_argument("--as", dest="as_user", default=None, help="who runs it (default: system)")
    v.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="also trust this (retired or escrowed) public key",
    )
    v.add_argument("--workers", type=int, default=None, help="processes (default: by size)")
    t = _sub(asub, "patient", cmd_patient, "disclosure report for a BSN (audited)")
    t.add_argument("bsn")
    _period_args(t)
    t.add_argument("--json", action="store_true")
    t.add_argument("--as", dest="as_user", required=True, help="the privacy officer")
    e = _sub(asub, "export", cmd_export, "export the trail as CSV or FHIR R4 AuditEvent NDJSON")
    e.add_argument("--format", choices=audit_export.FORMATS, required=True)
    _period_args(e)
    e.add_argument("--as", dest="as_user", required=True, help="the privacy officer")
    e.add_argument("--output", "-o", default=None, help="file (default: stdout)")
    c = _sub(asub, "checkpoint", cmd_checkpoint, "sign the chain head now")
    c.add_argument("--as", dest="as_user", default=None)
    g = _sub(asub, "purge", cmd_purge, "remove rows past retention; the chain stays verifiable")
    g.add_argument("--as", dest="as_user", default=None, help="an admin (default: system)")
    g.add_argument("--dry-run", action="store_true")
    _sub(asub, "key", cmd_key, "print the public checkpoint key (PEM) for external verifiers")
    _sub(asub, "codes", cmd_codes, "print every audit event code as Markdown")
