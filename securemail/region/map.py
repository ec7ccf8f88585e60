"""The regional map of district nursing: which team serves which 4-digit postcode area, how
to reach it in each part of the week, what it offers, and whether it takes new clients;
each practice's one entry and the fixed contact nurse per preferred provider.

Invariants: no patient data is stored or shown here (postcode *areas* of teams, names and
phones of professionals only); every change is validated whole before anything is written
and is written with its audit row in the caller's transaction; the map entry a team keeps
is the team's own (a nurse edits only the teams she is a member of: access.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.config import parse_hours, parse_hours_map
from securemail.errors import InputError, NotFoundError
from securemail.form.fields import CHECKS, clean_text
from securemail.region import directory
from securemail.region.directory import Team

MIGRATIONS = Migrations("securemail.regionmap")

#: Parts of the week, in display order, with their Dutch labels.
PARTS: dict[str, str] = {
    "kantoor": "kantooruren",
    "avond": "avond",
    "nacht": "nacht",
    "weekend": "weekend en feestdagen",
}
#: The fixed vocabulary of specialised services.
SERVICES: dict[str, str] = {
    "wondzorg": "wondzorg",
    "longzorg": "longzorg",
    "casemanagement_dementie": "casemanagement dementie",
    "gespecialiseerd_team": "gespecialiseerd verpleegkundig team",
    "palliatief_24_7": "palliatieve zorg 24/7",
    "nachtzorg": "nachtzorg",
}
CAPACITY: dict[str, str] = {"ja": "ja", "beperkt": "beperkt", "nee": "nee"}
ENTRY_ROLES: dict[str, str] = {
    "poh": "praktijkondersteuner (POH)",
    "praktijkverpleegkundige": "praktijkverpleegkundige",
    "huisarts": "huisarts",
}
PC4_MIN, PC4_MAX = 1000, 9999
#: Longest phone number, address and list of postcode areas typed into the map.
MAX_PHONE, MAX_EMAIL, MAX_AREAS = 40, 254, 2000
_RANGE_RE = re.compile(r"^([0-9]{4})(?:\s*-\s*([0-9]{4}))?$")


@MIGRATIONS(name="0001_regionmap")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE team_map (
            team_id INTEGER PRIMARY KEY REFERENCES teams(id),
            phone TEXT NOT NULL DEFAULT '',
            areas TEXT NOT NULL DEFAULT '',       -- "1011-1018,1020": PC4 areas, never a patient's
            reach TEXT NOT NULL DEFAULT '{}',     -- JSON: part -> {reachable, phone, address}
            services TEXT NOT NULL DEFAULT '',    -- comma-separated SERVICES keys
            level5 INTEGER NOT NULL DEFAULT 0,
            capacity TEXT NOT NULL DEFAULT 'ja',
            confirmed_at TEXT NOT NULL DEFAULT '',
            confirmed_by TEXT NOT NULL DEFAULT '',
            updated_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE practice_entry (
            practice_org_id INTEGER PRIMARY KEY REFERENCES organisations(id),
            role TEXT NOT NULL,
            name TEXT NOT NULL,
            phone TEXT NOT NULL,
            updated_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE contact_nurses (
            practice_org_id INTEGER NOT NULL REFERENCES organisations(id),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            name TEXT NOT NULL,
            phone TEXT NOT NULL DEFAULT '',
            address TEXT NOT NULL DEFAULT '',
            updated_at TEXT NOT NULL,
            PRIMARY KEY (practice_org_id, team_id))"""
    )


@MIGRATIONS(name="0002_working_hours")
def _m2(db: sqlite_utils.Database) -> None:
    # The team's own working hours ("22:00-08:00" for a night team; "" = the settings'):
    # shown on the map, and the privacy officer's exception report counts by them.
    db.execute("ALTER TABLE team_map ADD COLUMN working_hours TEXT NOT NULL DEFAULT ''")


class RegionInputError(InputError):
    """A map entry with one or more bad fields; ``errors`` maps field -> (English, Dutch)."""

    code = "region.invalid"
    nl = "De gegevens voor de regiokaart zijn niet juist: {fields}."

    def __init__(self, errors: Mapping[str, tuple[str, str]]) -> None:
        reason = "; ".join(f"{f}: {en}" for f, (en, _) in errors.items())
        super().__init__(reason, fields=", ".join(errors))
        self.errors = dict(errors)

    def errors_nl(self) -> dict[str, list[str]]:
        return {f: [nl] for f, (_, nl) in self.errors.items()}


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reach:
    reachable: bool
    phone: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class TeamEntry:
    """A team as it appears on the map (a team without a map row has an empty entry)."""

    team: Team
    org_name: str = ""
    phone: str = ""
    areas: tuple[tuple[int, int], ...] = ()
    reach: Mapping[str, Reach] = field(default_factory=dict)
    services: tuple[str, ...] = ()
    level5: bool = False
    capacity: str = "ja"
    confirmed_at: str = ""
    #: "HH:MM-HH:MM" (past midnight for a night team), or "" when the team set none.
    working_hours: str = ""

    def serves(self, pc4: int) -> bool:
        return any(lo <= pc4 <= hi for lo, hi in self.areas)

    def reachable(self, part: str) -> bool:
        r = self.reach.get(part)
        return bool(r and r.reachable)

    def contact(self, part: str) -> tuple[str, str]:
        """(phone, address) to use in this part of the week: the override, else the entry."""
        r = self.reach.get(part) or Reach(False)
        return (r.phone or self.phone, r.address or self.team.address)

    def is_stale(self, now: datetime, stale_days: int) -> bool:
        if not self.confirmed_at:
            return True
        return now - datetime.fromisoformat(self.confirmed_at) > timedelta(days=stale_days)

    @property
    def areas_text(self) -> str:
        return format_areas(self.areas)


@dataclass(frozen=True, slots=True)
class PracticeEntry:
    role: str
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class ContactNurse:
    practice_org_id: int
    team_id: int
    name: str
    phone: str
    address: str


# -- validation ------------------------------------------------------------------------------


def parse_areas(text: str) -> tuple[tuple[int, int], ...]:
    """ "1011-1018, 1020" -> ((1011, 1018), (1020, 1020)); raises RegionInputError('areas')."""
    out: list[tuple[int, int]] = []
    for part in re.split(r"[,;\s]+", re.sub(r"\s*-\s*", "-", text.strip())):
        if not part:
            continue
        m = _RANGE_RE.match(part)
        if not m:
            raise RegionInputError(
                {
                    "areas": (
                        f"{part!r} is not a 4-digit postcode area or range such as 1011-1018",
                        f"'{part}' is geen postcodegebied van 4 cijfers of reeks zoals 1011-1018.",
                    )
                }
            )
        lo = int(m.group(1))
        hi = int(m.group(2) or m.group(1))
        if not (PC4_MIN <= lo <= PC4_MAX and PC4_MIN <= hi <= PC4_MAX):
            raise RegionInputError(
                {"areas": (f"{part} is outside 1000-9999", f"{part} valt buiten 1000–9999.")}
            )
        if hi < lo:
            raise RegionInputError(
                {
                    "areas": (
                        f"{part}: the range ends before it starts",
                        f"{part}: de reeks eindigt voor het begin.",
                    )
                }
            )
        out.append((lo, hi))
    return tuple(sorted(set(out)))


def format_areas(areas: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in areas)


def pc4_of(postcode: str) -> int | None:
    """The 4-digit area of a postcode ("1012 AB" -> 1012), None when it is not one."""
    m = re.match(r"^\s*([1-9][0-9]{3})", postcode or "")
    return int(m.group(1)) if m else None


def _phone_error(field_name: str, value: str) -> tuple[str, str] | None:
    if value and CHECKS["phone"](value):
        return (
            f"{value!r} is not a phone number",
            "Vul een Nederlands telefoonnummer (10 cijfers) of een internationaal nummer "
            "(+31…) in.",
        )
    return None


def _email_error(value: str) -> tuple[str, str] | None:
    if value and not directory.EMAIL_RE.match(value):
        return (f"{value!r} is not an e-mail address", "Vul een geldig e-mailadres in.")
    return None


def _clean(
    values: Mapping[str, Any],
    key: str,
    errors: dict[str, tuple[str, str]],
    limit: int = 100,
    *,
    multiline: bool = False,
) -> str:
    """The one text policy (form.fields.clean_text) for a typed value of the map: the one gate
    every free text here passes, from the web and the CLI; a problem is recorded as the
    field's error (English, Dutch) and the value becomes ''."""
    text, problem = clean_text(
        str(values.get(key, "") or ""), multiline=multiline, max_length=limit
    )
    if problem == "text.too_long":
        errors[key] = (f"at most {limit} characters", f"Hoogstens {limit} tekens.")
    elif problem:
        errors[key] = (
            "contains a control character, a bidi override"
            + ("" if multiline else " or a line break"),
            "Bevat tekens die hier niet zijn toegestaan (stuur- of richtingstekens).",
        )
    return "" if problem else text


def validate_entry(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check a whole map entry (form or CLI values) and return it normalised; every bad field
    is reported at once. Keys: phone, areas, services (list), level5, capacity,
    working_hours ("HH:MM-HH:MM" or empty), and per part
    ``reach_<part>`` (bool), ``phone_<part>``, ``address_<part>``."""
    errors: dict[str, tuple[str, str]] = {}
    phone = _clean(values, "phone", errors, MAX_PHONE)
    if not phone and "phone" not in errors:
        errors["phone"] = ("phone is required", "Vul het telefoonnummer van de ingang in.")
    elif e := _phone_error("phone", phone):
        errors["phone"] = e
    areas: tuple[tuple[int, int], ...] = ()
    try:
        areas = parse_areas(_clean(values, "areas", errors, MAX_AREAS, multiline=True))
        if not areas and "areas" not in errors:
            errors["areas"] = (
                "at least one postcode area is required",
                "Vul minstens één postcodegebied in, bijvoorbeeld 1011-1018.",
            )
    except RegionInputError as exc:
        errors.update(exc.errors)
    services = [str(s) for s in values.get("services", []) or []]
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        errors["services"] = (
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}",
            "Kies specialismen uit de lijst.",
        )
    capacity = str(values.get("capacity", "") or "")
    if capacity not in CAPACITY:
        errors["capacity"] = (
            "capacity must be ja, beperkt or nee",
            "Kies of het team nieuwe cliënten aanneemt: ja, beperkt of nee.",
        )
    working_hours = str(values.get("working_hours", "") or "").replace(" ", "")
    if working_hours:
        try:
            start, end = parse_hours(working_hours)
            working_hours = f"{start:%H:%M}-{end:%H:%M}"
        except ValueError:
            errors["working_hours"] = (
                "working_hours must look like 07:00-17:00 (a night team: 22:00-08:00)",
                "Vul de werktijden in als 07:00-17:00 (een nachtteam: 22:00-08:00).",
            )
    reach: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        p_phone = _clean(values, f"phone_{part}", errors, MAX_PHONE)
        p_addr = _clean(values, f"address_{part}", errors, MAX_EMAIL).lower()
        if e := _phone_error(f"phone_{part}", p_phone):
            errors[f"phone_{part}"] = e
        if e := _email_error(p_addr):
            errors[f"address_{part}"] = e
        reach[part] = {
            "reachable": _truthy(values.get(f"reach_{part}")),
            "phone": p_phone,
            "address": p_addr,
        }
    if errors:
        raise RegionInputError(errors)
    return {
        "phone": phone,
        "areas": areas,
        "services": sorted(set(services)),
        "level5": _truthy(values.get("level5")),
        "capacity": capacity,
        "reach": reach,
        "working_hours": working_hours,
    }


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in {"1", "true", "on", "yes", "ja"}


# -- reading ---------------------------------------------------------------------------------


def _entry(team: Team, org_name: str, row: dict[str, Any] | None) -> TeamEntry:
    if row is None:
        return TeamEntry(team, org_name)
    reach = {
        k: Reach(bool(v.get("reachable")), v.get("phone", ""), v.get("address", ""))
        for k, v in json.loads(row["reach"] or "{}").items()
    }
    return TeamEntry(
        team,
        org_name,
        row["phone"],
        parse_areas(row["areas"]),
        reach,
        tuple(s for s in row["services"].split(",") if s),
        bool(row["level5"]),
        row["capacity"],
        row["confirmed_at"],
        row.get("working_hours", ""),
    )


def entries(db: sqlite_utils.Database) -> list[TeamEntry]:
    """Every active team with its map entry (empty when it has none yet), by name."""
    rows = {r["team_id"]: r for r in db.table("team_map").rows}
    orgs = {o.id: o.name for o in directory.list_orgs(db)}
    return [_entry(t, orgs.get(t.org_id, ""), rows.get(t.id)) for t in directory.list_teams(db)]


def hours_by_team(db: sqlite_utils.Database, settings_by_team: str = "") -> str:
    """``[audit] working_hours_by_team`` with the map's hours merged in: a team's own entry
    on the map wins (the team keeps it current), the settings cover teams that set none."""
    merged = parse_hours_map(settings_by_team)
    if "team_map" not in db.table_names():  # an installation without the region room yet
        return settings_by_team
    for e in entries(db):
        if e.working_hours:
            merged[e.team.address] = parse_hours(e.working_hours)
    return ", ".join(f"{a}={w[0]:%H:%M}-{w[1]:%H:%M}" for a, w in sorted(merged.items()))


def entry(db: sqlite_utils.Database, team_id: int) -> TeamEntry:
    team = directory.team_by_id(db, team_id)
    rows = list(db.table("team_map").rows_where("team_id = ?", [team_id]))
    return _entry(team, directory.org_by_id(db, team.org_id).name, rows[0] if rows else None)


def practice_entry(db: sqlite_utils.Database, practice_org_id: int) -> PracticeEntry | None:
    rows = list(db.table("practice_entry").rows_where("practice_org_id = ?", [practice_org_id]))
    return PracticeEntry(rows[0]["role"], rows[0]["name"], rows[0]["phone"]) if rows else None


def contact_nurses(
    db: sqlite_utils.Database, *, practice_org_id: int | None = None, team_id: int | None = None
) -> list[ContactNurse]:
    where, params = [], []
    if practice_org_id is not None:
        where.append("practice_org_id = ?")
        params.append(practice_org_id)
    if team_id is not None:
        where.append("team_id = ?")
        params.append(team_id)
    return [
        ContactNurse(r["practice_org_id"], r["team_id"], r["name"], r["phone"], r["address"])
        for r in db.table("contact_nurses").rows_where(" AND ".join(where) or None, params)
    ]


def partner_practices(db: sqlite_utils.Database, team_id: int) -> list[directory.Organisation]:
    """The practices that chose this team as a preferred provider."""
    rows = db.execute(
        "SELECT practice_org_id FROM preferred_providers WHERE team_id = ? "
        "ORDER BY practice_org_id",
        [team_id],
    ).fetchall()
    return [directory.org_by_id(db, r[0]) for r in rows]


# -- writing (each with its audit row, in the caller's transaction) ---------------------------


def _team_resource(team: Team) -> Resource:
    return Resource(
        "team_entry", org_id=team.org_id, team_ids=frozenset({team.id}), ref=team.address
    )


def save_entry(
    db: sqlite_utils.Database,
    actor: Actor,
    team_id: int,
    values: Mapping[str, Any],
    *,
    now: datetime,
) -> TeamEntry:
    """Validate and store a team's map entry; saving is also confirming it (the nurse has just
    looked at every field)."""
    team = directory.team_by_id(db, team_id)
    require(actor, "region.team_edit", _team_resource(team))
    clean = validate_entry(values)
    db.table("team_map").upsert(
        {
            "team_id": team.id,
            "phone": clean["phone"],
            "areas": format_areas(clean["areas"]),
            "reach": json.dumps(clean["reach"], sort_keys=True),
            "services": ",".join(clean["services"]),
            "level5": int(clean["level5"]),
            "capacity": clean["capacity"],
            "working_hours": clean["working_hours"],
            "confirmed_at": now.isoformat(),
            "confirmed_by": actor.username,
            "updated_at": now.isoformat(),
        },
        pk="team_id",
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "team.map_update",
            object_type="team",
            object_id=team.address,
            nature="technical",
            outcome_detail=f"capacity={clean['capacity']}",
        ),
    )
    return entry(db, team.id)


def confirm_entry(
    db: sqlite_utils.Database, actor: Actor, team_id: int, *, now: datetime
) -> TeamEntry:
    """ "Bevestig dat dit klopt": the entry is current as it stands."""
    team = directory.team_by_id(db, team_id)
    require(actor, "region.team_edit", _team_resource(team))
    if not db.execute("SELECT 1 FROM team_map WHERE team_id = ?", [team.id]).fetchone():
        raise NotFoundError(
            f"team {team.address} has no map entry to confirm yet", address=team.address
        )
    db.execute(
        "UPDATE team_map SET confirmed_at = ?, confirmed_by = ? WHERE team_id = ?",
        [now.isoformat(), actor.username, team.id],
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "team.map_confirm",
            object_type="team",
            object_id=team.address,
            nature="technical",
        ),
    )
    return entry(db, team.id)


def set_practice_entry(
    db: sqlite_utils.Database,
    actor: Actor,
    practice_org_id: int,
    values: Mapping[str, Any],
    *,
    now: datetime,
) -> PracticeEntry:
    practice = directory.org_by_id(db, practice_org_id)
    require(
        actor, "region.practice_edit", Resource("practice", org_id=practice.id, ref=practice.code)
    )
    role = str(values.get("role", "") or "")
    errors: dict[str, tuple[str, str]] = {}
    name = _clean(values, "name", errors)
    phone = _clean(values, "phone", errors, MAX_PHONE)
    if role not in ENTRY_ROLES:
        errors["role"] = (
            "role must be poh, praktijkverpleegkundige or huisarts",
            "Kies wie de ingang van de praktijk is.",
        )
    if not name and "name" not in errors:
        errors["name"] = (
            "name is required (at most 100 characters)",
            "Vul de naam in (hoogstens 100 tekens).",
        )
    if not phone and "phone" not in errors:
        errors["phone"] = ("phone is required", "Vul het telefoonnummer in.")
    elif e := _phone_error("phone", phone):
        errors["phone"] = e
    if errors:
        raise RegionInputError(errors)
    db.table("practice_entry").upsert(
        {
            "practice_org_id": practice.id,
            "role": role,
            "name": name,
            "phone": phone,
            "updated_at": now.isoformat(),
        },
        pk="practice_org_id",
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "practice.entry_update",
            object_type="organisation",
            object_id=practice.code,
            nature="technical",
        ),
    )
    return PracticeEntry(role, name, phone)


def set_preferred(
    db: sqlite_utils.Database, actor: Actor, practice_org_id: int, team_addresses: list[str]
) -> None:
    """The practice's 1 to 3 preferred providers, in order (directory.set_preferred keeps the
    rule), audited."""
    practice = directory.org_by_id(db, practice_org_id)
    require(
        actor, "region.practice_edit", Resource("practice", org_id=practice.id, ref=practice.code)
    )
    addresses = [a for a in (s.strip().lower() for s in team_addresses) if a]
    if len(set(addresses)) != len(addresses):
        raise RegionInputError(
            {"preferred": ("a team is chosen twice", "Kies elk wijkteam maar één keer.")}
        )
    if not 1 <= len(addresses) <= 3:
        raise RegionInputError(
            {
                "preferred": (
                    "a practice has 1 to 3 preferred providers",
                    "Kies één tot drie voorkeursaanbieders.",
                )
            }
        )
    unknown = [a for a in addresses if (t := directory.find_team(db, a)) is None or not t.active]
    if unknown:
        raise RegionInputError(
            {"preferred": (f"unknown team {', '.join(unknown)}", "Kies wijkteams uit de lijst.")}
        )
    directory.set_preferred(db, practice_code=practice.code, team_addresses=addresses)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "practice.preferred_update",
            object_type="organisation",
            object_id=practice.code,
            nature="technical",
            outcome_detail=",".join(addresses),
        ),
    )


def set_contact_nurse(
    db: sqlite_utils.Database,
    actor: Actor,
    team_id: int,
    practice_org_id: int,
    values: Mapping[str, Any],
    *,
    now: datetime,
) -> ContactNurse:
    """The team's fixed contact nurse for one partner practice; set by the team (it knows its
    own roster), shown to the practice."""
    team = directory.team_by_id(db, team_id)
    require(actor, "region.team_edit", _team_resource(team))
    if practice_org_id not in {p.id for p in partner_practices(db, team.id)}:
        raise RegionInputError(
            {
                "practice": (
                    "this practice has not chosen the team as a preferred provider",
                    "Deze praktijk heeft dit team niet als voorkeursaanbieder.",
                )
            }
        )
    errors: dict[str, tuple[str, str]] = {}
    name = _clean(values, "name", errors)
    phone = _clean(values, "phone", errors, MAX_PHONE)
    address = _clean(values, "address", errors, MAX_EMAIL).lower()
    if not name and "name" not in errors:
        errors["name"] = (
            "name is required (at most 100 characters)",
            "Vul de naam van de contactverpleegkundige in.",
        )
    if not phone and not address and not errors.keys() & {"phone", "address"}:
        errors["phone"] = (
            "give a phone number or an address",
            "Vul een telefoonnummer of e-mailadres in.",
        )
    if e := _phone_error("phone", phone):
        errors["phone"] = e
    if e := _email_error(address):
        errors["address"] = e
    if errors:
        raise RegionInputError(errors)
    db.table("contact_nurses").upsert(
        {
            "practice_org_id": practice_org_id,
            "team_id": team.id,
            "name": name,
            "phone": phone,
            "address": address,
            "updated_at": now.isoformat(),
        },
        pk=("practice_org_id", "team_id"),
    )
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "team.contact_nurse",
            object_type="team",
            object_id=team.address,
            nature="technical",
        ),
    )
    return ContactNurse(practice_org_id, team.id, name, phone, address)
