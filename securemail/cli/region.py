"""Region commands: the regional map for the operator (teams keep their own entry in the web
app; this is for setting up a region and for teams without a web account yet).

    securemail region show [--json]
    securemail region team ADDRESS [--phone ...] [--areas 1011-1018,1020] [--capacity ja]
                                   [--service wondzorg ...] [--reach kantoor,avond]
                                   [--part-phone nacht=0201234567] [--part-address ...]
                                   [--level5 | --no-level5]
    securemail region confirm ADDRESS
    securemail region practice CODE --role poh --name NAME --phone PHONE
    securemail region contact --team ADDRESS --practice CODE --name NAME [--phone] [--address]

English errors naming the option; changes are audited as the operator (system) actor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import sqlite_utils

from securemail.access import SYSTEM as _SYSTEM
from securemail.cli import command
from securemail.cli.directory import open_home
from securemail.errors import InputError
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from securemail.region.map import RegionInputError
from securemail.services import Services

#: The operator at this server's command line (typed 'cli' in the audit trail).
SYSTEM = dataclasses.replace(_SYSTEM, access_point=f"cli@{os.uname().nodename}")

T = TypeVar("T")

#: form field -> command-line option, so an error names what the operator typed
OPTION_OF = {
    "phone": "--phone",
    "areas": "--areas",
    "capacity": "--capacity",
    "working_hours": "--working-hours",
    "services": "--service",
    "name": "--name",
    "role": "--role",
    "address": "--address",
    "practice": "--practice",
}


def _write(svc: Services, fn: Callable[[sqlite_utils.Database], T]) -> T:
    """One write; the map's field errors come back naming the CLI options, in English."""
    try:
        return svc.store.write_sync(fn)
    except RegionInputError as exc:
        named = {
            OPTION_OF.get(f, f"--part-{f.replace('_', '=', 1)}"): e for f, e in exc.errors.items()
        }
        raise InputError(
            "; ".join(f"{opt}: {en}" for opt, (en, _) in named.items()), field=", ".join(named)
        ) from None


def _part_pairs(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        part, sep, value = item.partition("=")
        if not sep or part not in regionmap.PARTS:
            raise InputError(
                f"{option} takes PART=VALUE with PART one of {', '.join(regionmap.PARTS)}",
                field=option,
            )
        out[part] = value
    return out


def cmd_show(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        teams = svc.store.read_sync(regionmap.entries)
        now, s = svc.now(), svc.settings
        data = regionview.region_json(teams, s.gateway.passing_on_address, now, s.region.stale_days)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    for t in data["teams"]:
        stale = " STALE" if t["stale"] else ""
        print(
            f"{t['address']:<40} {t['areas']:<24} capacity={t['capacity']:<8} "
            f"confirmed={t['confirmed_at'][:10] or 'never'}{stale}"
        )
    for a in data["areas"]:
        parts = "; ".join(f"{p}: {', '.join(v) or '-'}" for p, v in a["approach"].items())
        print(f"  {a['from']}-{a['to']}: {parts}")
    if data["passing_on"]:
        print(f"passing-on: {data['passing_on']['address']}")
    return 0


def cmd_team(args: argparse.Namespace) -> int:
    with open_home(args) as svc:

        def write(db: Any) -> regionmap.TeamEntry:
            team = directory.team_by_address(db, args.address)
            cur = regionmap.entry(db, team.id)
            values: dict[str, Any] = {
                "phone": cur.phone if args.phone is None else args.phone,
                "areas": cur.areas_text if args.areas is None else args.areas,
                "capacity": cur.capacity if args.capacity is None else args.capacity,
                "services": list(cur.services) if args.service is None else args.service,
                "level5": cur.level5 if args.level5 is None else args.level5,
                "working_hours": (
                    cur.working_hours if args.working_hours is None else args.working_hours
                ),
            }
            reach = (
                {p for p in regionmap.PARTS if cur.reachable(p)}
                if args.reach is None
                else {p.strip() for p in args.reach.split(",") if p.strip()}
            )
            if reach - set(regionmap.PARTS):
                raise InputError(
                    f"--reach takes parts from {', '.join(regionmap.PARTS)}", field="--reach"
                )
            phones = _part_pairs(args.part_phone or [], "--part-phone")
            addresses = _part_pairs(args.part_address or [], "--part-address")
            for p in regionmap.PARTS:
                r = cur.reach.get(p) or regionmap.Reach(False)
                values[f"reach_{p}"] = p in reach
                values[f"phone_{p}"] = phones.get(p, r.phone)
                values[f"address_{p}"] = addresses.get(p, r.address)
            return regionmap.save_entry(db, SYSTEM, team.id, values, now=svc.now())

        e = _write(svc, write)
    print(f"team {e.team.address}: areas {e.areas_text}, capacity {e.capacity}, confirmed")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        e = svc.store.write_sync(
            lambda db: regionmap.confirm_entry(
                db, SYSTEM, directory.team_by_address(db, args.address).id, now=svc.now()
            )
        )
    print(f"team {e.team.address}: confirmed {e.confirmed_at[:10]}")
    return 0


def cmd_practice(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        _write(
            svc,
            lambda db: regionmap.set_practice_entry(
                db,
                SYSTEM,
                directory.org_by_code(db, args.code).id,
                {"role": args.role, "name": args.name, "phone": args.phone},
                now=svc.now(),
            ),
        )
    print(f"practice {args.code}: entry {args.role} {args.name}")
    return 0


def cmd_contact(args: argparse.Namespace) -> int:
    with open_home(args) as svc:
        _write(
            svc,
            lambda db: regionmap.set_contact_nurse(
                db,
                SYSTEM,
                directory.team_by_address(db, args.team).id,
                directory.org_by_code(db, args.practice).id,
                {"name": args.name, "phone": args.phone or "", "address": args.address or ""},
                now=svc.now(),
            ),
        )
    print(f"team {args.team}: contact nurse for practice {args.practice} is {args.name}")
    return 0


def register(sub: Any) -> None:
    region = sub.add_parser(
        "region",
        help="the regional map of district nursing",
        description="The regional map of district nursing (docs/region.md).",
    )
    rsub = region.add_subparsers(dest="region_command", metavar="ACTION", required=True)
    p = command(rsub, "show", cmd_show, "print the map: teams, areas, who to approach when")
    p.add_argument("--json", action="store_true", help="the /regio.json document")
    p = command(rsub, "team", cmd_team, "set a team's map entry (and confirm it)")
    p.add_argument("address", help="the team's entry address")
    p.add_argument("--phone", help="phone of the team's one entry")
    p.add_argument("--areas", help="4-digit postcode areas and ranges: 1011-1018,1020")
    p.add_argument("--capacity", help="accepting new clients: ja, beperkt or nee")
    p.add_argument(
        "--working-hours",
        help="the team's working hours, HH:MM-HH:MM (a night team 22:00-08:00); '' = the settings'",
    )
    p.add_argument(
        "--service",
        action="append",
        help=f"specialised service (repeatable): {', '.join(regionmap.SERVICES)}",
    )
    p.add_argument("--reach", help=f"parts of the week reachable: {','.join(regionmap.PARTS)}")
    p.add_argument("--part-phone", action="append", help="PART=PHONE override (repeatable)")
    p.add_argument("--part-address", action="append", help="PART=ADDRESS override (repeatable)")
    p.add_argument(
        "--level5",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a level-5 district nurse is available",
    )
    p = command(rsub, "confirm", cmd_confirm, "confirm a team's map entry is current")
    p.add_argument("address", help="the team's entry address")
    p = command(rsub, "practice", cmd_practice, "set a practice's one entry for providers")
    p.add_argument("code", help="the practice's AGB code")
    p.add_argument("--role", required=True, choices=list(regionmap.ENTRY_ROLES))
    p.add_argument("--name", required=True)
    p.add_argument("--phone", required=True)
    p = command(rsub, "contact", cmd_contact, "set a team's fixed contact nurse for a practice")
    p.add_argument("--team", required=True, help="the team's entry address")
    p.add_argument("--practice", required=True, help="the practice's AGB code")
    p.add_argument("--name", required=True)
    p.add_argument("--phone")
    p.add_argument("--address")
