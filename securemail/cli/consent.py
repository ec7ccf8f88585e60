"""``securemail consent grant|withdraw|list|export``: the consent register from a shell.

Thin: parse, resolve the user (``auth.actor_for_cli``) and the recipient
(``directory.resolve_recipient``) inside one write, call ``securemail.consent``, print.
The change and its audit row commit together. The holder organisation is always the
acting user's own; dates are calendar days in the gateway's time zone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlite_utils

from securemail import config
from securemail import consent as register_
from securemail.access import Actor
from securemail.cli import command, home_of
from securemail.consent import fhir
from securemail.errors import InputError, NotInitialisedError
from securemail.form.fields import relative_date
from securemail.home import open_store

T = TypeVar("T")


def register(subparsers: Any) -> None:
    """Add ``consent`` and its actions to the top-level parser."""
    parent: argparse.ArgumentParser = subparsers.add_parser(
        "consent",
        help="consent register: grant, withdraw, list, export",
        description="The consent register of your practice (FHIR R4 export included).",
    )

    def usage(_args: argparse.Namespace) -> int:
        parent.print_help()
        return 2

    parent.set_defaults(handler=usage)
    sub = parent.add_subparsers(dest="consent_command", metavar="ACTION")

    g = command(sub, "grant", _grant, "record a consent, or with --decision deny an objection")
    _who(g, patient_required=True)
    g.add_argument("--recipient", required=True, help="team address, organisation code or category")
    g.add_argument("--decision", choices=register_.DECISIONS, help="default: from --basis")
    g.add_argument("--basis", choices=register_.BASES, help="default: explicit / objection")
    dates = "YYYY-MM-DD or relative: today, today+12m, today-2d"
    g.add_argument(
        "--from", dest="valid_from", metavar="DATE", help=f"first day (default: now; {dates})"
    )
    g.add_argument("--until", metavar="DATE", help=f"last day it counts, inclusive ({dates})")
    g.add_argument("--given", metavar="DATE", help=f"when it was given (default: now; {dates})")
    g.add_argument("--channel", choices=register_.CHANNELS, default="in_person")
    g.add_argument("--representative", metavar="NAME", help="given by this representative")
    g.add_argument(
        "--data-category",
        dest="data_categories",
        action="append",
        choices=register_.DATA_CATEGORIES,
        help="repeatable; default: every category (an objection covers all that is sent)",
    )
    g.add_argument("--evidence", type=Path, metavar="FILE", help="proof; its SHA-256 is kept")
    g.add_argument("--evidence-ref", metavar="REF", help="where the proof is (default: file name)")

    w = command(sub, "withdraw", _withdraw, "withdraw consent (or objection) at once")
    _who(w, patient_required=True)
    w.add_argument("--recipient", required=True, help="team address, organisation code or category")
    w.add_argument("--channel", choices=register_.CHANNELS, required=True)
    w.add_argument("--reason", default=None, help="optional; a patient need not give one")

    ls = command(sub, "list", _list, "list the register (current versions)")
    _who(ls, patient_required=False)
    ls.add_argument("--status", choices=register_.STATUSES)
    ls.add_argument("--history", action="store_true", help="every version, not only the current")
    ls.add_argument("--json", action="store_true", help="JSON instead of lines")

    ex = command(sub, "export", _export, "FHIR R4 Bundle of Consent resources to stdout")
    _who(ex, patient_required=False)


def _who(p: argparse.ArgumentParser, *, patient_required: bool) -> None:
    p.add_argument("--patient", metavar="BSN", required=patient_required)
    p.add_argument("--as", dest="as_user", metavar="USERNAME", required=True)


# -- plumbing --------------------------------------------------------------------------------
def _run(
    settings: config.Settings, username: str, fn: Callable[[sqlite_utils.Database, Actor], T]
) -> T:
    """Open the gateway's store and run fn(db, actor) in one write transaction."""
    if not settings.db_path.exists():
        raise NotInitialisedError(f"no database in {settings.home}; run securemail init")
    store = open_store(settings.db_path, migrate=False)
    try:
        if "consents" not in store.read_sync(lambda db: db.table_names()):
            raise NotInitialisedError("the consent register is not set up; run the migrations")

        def tx(db: sqlite_utils.Database) -> T:
            from securemail.accounts import (
                auth,  # the lead's module; late import keeps this CLI loadable
            )

            return fn(db, auth.actor_for_cli(db, username))

        return store.write_sync(tx)
    finally:
        store.close()


def _recipient(db: sqlite_utils.Database, text: str) -> register_.Recipient:
    from securemail.region import (
        directory,  # the lead's module; late import keeps this CLI loadable
    )

    return register_.Recipient.of(directory.resolve_recipient(db, text))


def _holder(actor: Actor) -> int:
    if actor.org_id is None:
        raise InputError(f"user {actor.username} belongs to no organisation", field="as")
    return actor.org_id


def _day(
    text: str | None, field: str, tz: ZoneInfo, now: datetime, *, end: bool = False
) -> datetime | None:
    """YYYY-MM-DD, or a day relative to today in tz as the forms take it ("today",
    "today+12m", "today-2d": a script or a README that holds no calendar date) -> the start
    of that day (end=True: of the next day) in tz; or an ISO time."""
    if text is None:
        return None
    relative = relative_date(text, now.astimezone(tz).date())
    try:
        if relative is not None or len(text) == 10:
            day = (relative or date.fromisoformat(text)) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(0), tzinfo=tz)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"--{field} must be a date YYYY-MM-DD or today[+-N(d|w|m)]", field=field
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def _stop_pending(
    db: sqlite_utils.Database, bsn: str, rcpt: register_.Recipient, /, **kw: Any
) -> list[str]:
    from securemail.exchange import send as exchange

    return exchange.stop_for_consent(db, bsn, rcpt, **kw)


# -- handlers --------------------------------------------------------------------------------
def _grant(args: argparse.Namespace) -> int:
    settings = config.load(home_of(args))
    tz = ZoneInfo(settings.deadlines.timezone)
    now = datetime.now(UTC)
    evidence = None
    if args.evidence is not None:
        try:
            evidence = args.evidence.read_bytes()
        except OSError:
            raise InputError("--evidence cannot be read", field="evidence") from None
    basis = args.basis or ("objection" if args.decision == "deny" else "explicit")
    decision = args.decision or ("deny" if basis == "objection" else "permit")

    def fn(db: sqlite_utils.Database, actor: Actor) -> register_.ConsentRecord:
        return register_.record(
            db,
            actor,
            patient_bsn=args.patient,
            source_org_id=_holder(actor),
            recipient=_recipient(db, args.recipient),
            decision=decision,
            basis=basis,
            data_categories=tuple(args.data_categories or register_.DATA_CATEGORIES),
            valid_from=_day(args.valid_from, "from", tz, now) or now,
            valid_until=_day(args.until, "until", tz, now, end=True),
            given_at=_day(args.given, "given", tz, now) or now,
            channel=args.channel,
            performer="representative" if args.representative else "patient",
            performer_name=args.representative,
            evidence=evidence,
            evidence_ref=args.evidence_ref or (args.evidence.name if args.evidence else None),
            now=now,
        )

    rec = _run(settings, args.as_user, fn)
    print(f"recorded {rec.decision} {rec.ref} for {rec.recipient.label}")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    settings = config.load(home_of(args))

    def fn(db: sqlite_utils.Database, actor: Actor) -> register_.WithdrawResult:
        return register_.withdraw(
            db,
            actor,
            patient_bsn=args.patient,
            source_org_id=_holder(actor),
            recipient=_recipient(db, args.recipient),
            channel=args.channel,
            reason=args.reason,
            now=now,
            stop_pending=_stop_pending,
            policy=settings.consent.policy,
        )

    result = _run(settings, args.as_user, fn)
    for rec in result.records:
        print(f"withdrawn {rec.ref} for {rec.recipient.label}")
    print(f"stopped requests: {', '.join(result.stopped) or 'none'}")
    return 0


def _print_json(value: Any) -> None:
    """Readable JSON on stdout; patient names keep their letters (no \\u escapes)."""
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    print()


def _list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    rows = _run(
        config.load(home_of(args)),
        args.as_user,
        lambda db, actor: register_.view_records(
            db,
            actor,
            source_org_id=_holder(actor),
            patient_bsn=args.patient,
            status=args.status,
            now=now,
            history=args.history,
        ),
    )
    if args.json:
        _print_json([r.as_json(now) for r in rows])
        return 0
    for r in rows:
        until = r.valid_until.date().isoformat() if r.valid_until else "-"
        proof = "evidence" if (r.evidence_ref or r.evidence_sha256) else "no evidence"
        print(
            f"{r.ref} {r.status_at(now)} {r.decision} ({r.basis}) patient {r.patient_bsn} "
            f"-> {r.recipient.label} {r.purpose} {','.join(r.data_categories)} "
            f"{r.valid_from.date().isoformat()}..{until} {proof}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    bundle = _run(
        config.load(home_of(args)),
        args.as_user,
        lambda db, actor: fhir.export_fhir(
            db, actor, source_org_id=_holder(actor), patient_bsn=args.patient, now=now
        ),
    )
    _print_json(bundle)
    return 0
