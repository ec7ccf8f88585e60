"""Views of the regional map, all pure functions of the teams' entries and the clock: the
part of the week, the suggestions for a GP addressing a request, and the region page's rows
(HTML, JSON, CSV). Nothing here reads the database or sees a patient: a suggestion gets only
the 4-digit area of a postcode.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from securemail import deadlines
from securemail.config import RegionSettings
from securemail.region.map import PARTS, TeamEntry

# -- the part of the week --------------------------------------------------------------------


def _hm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def part_of_week(now: datetime, s: RegionSettings, timezone: str = "Europe/Amsterdam") -> str:
    """kantoor / avond / nacht / weekend for a moment, in the region's time zone. Night runs
    every day (a night team works Sundays too); weekend is a non-working day (Saturday,
    Sunday or a Dutch public holiday, deadlines' calendar) outside the night."""
    local = now.astimezone(ZoneInfo(timezone))
    t = local.time()
    night_start, night_end = _hm(s.night_start), _hm(s.night_end)
    if t >= night_start or t < night_end:
        return "nacht"
    if not deadlines.is_working_day(local.date()):
        return "weekend"
    if _hm(s.office_start) <= t < _hm(s.office_end):
        return "kantoor"
    return "avond"


# -- suggestions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Suggestion:
    address: str
    name: str
    org_name: str
    reason: str  # "voorkeursaanbieder" | "werkt in dit gebied" | "doorbemiddeling"
    phone: str
    contact_address: str
    serves_area: bool
    reachable_now: bool
    has_specialism: bool
    capacity: str
    stale: bool
    selectable: bool


_CAPACITY_ORDER = {"ja": 0, "beperkt": 1, "nee": 2}


def suggest(
    teams: list[TeamEntry],
    *,
    preferred: list[int],
    passing_on: str,
    pc4: int | None,
    specialism: str,
    part: str,
    now: datetime,
    stale_days: int,
    selectable: frozenset[str] = frozenset(),
) -> list[Suggestion]:
    """Who to address for a patient in area ``pc4``, needing ``specialism`` (or ""), now in
    ``part`` of the week: the practice's preferred providers in their order, then the other
    teams that serve the area (those offering the specialism first, then those reachable now,
    then by capacity and name), then the passing-on address. Nobody is hidden for saying "no
    capacity" or for being stale: both are shown. Pure: the caller reads the database."""
    by_id = {e.team.id: e for e in teams}

    def make(e: TeamEntry, reason: str) -> Suggestion:
        phone, addr = e.contact(part)
        return Suggestion(
            e.team.address,
            e.team.name,
            e.org_name,
            reason,
            phone,
            addr,
            pc4 is not None and e.serves(pc4),
            e.reachable(part),
            bool(specialism) and specialism in e.services,
            e.capacity,
            e.is_stale(now, stale_days),
            e.team.address in selectable,
        )

    out: list[Suggestion] = []
    seen: set[int] = set()
    passing = next((e for e in teams if e.team.address == passing_on), None) if passing_on else None
    for tid in preferred:
        if tid in by_id and tid not in seen and by_id[tid] is not passing:
            out.append(make(by_id[tid], "voorkeursaanbieder"))
            seen.add(tid)
    if pc4 is not None:
        others = [e for e in teams if e.team.id not in seen and e is not passing and e.serves(pc4)]
        others.sort(
            key=lambda e: (
                not (specialism and specialism in e.services),
                not e.reachable(part),
                _CAPACITY_ORDER.get(e.capacity, 3),
                e.team.name,
                e.team.address,
            )
        )
        out += [make(e, "werkt in dit gebied") for e in others]
    if passing is not None:
        out.append(make(passing, "doorbemiddeling"))
    return out


# -- the region page -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AreaRow:
    """A run of PC4 areas served by the same teams: who to approach in each part of the week."""

    lo: int
    hi: int
    by_part: dict[str, list[TeamEntry]]

    @property
    def label(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def area_rows(teams: list[TeamEntry]) -> list[AreaRow]:
    """Split the region at every area boundary; merge neighbouring runs that have the same
    teams. A part lists the teams serving the run that are reachable then. A sweep over the
    boundaries: each team enters at the start of an area and leaves after its end."""
    enter: dict[int, list[int]] = {}
    leave: dict[int, list[int]] = {}
    for i, e in enumerate(teams):
        for lo, hi in e.areas:
            enter.setdefault(lo, []).append(i)
            leave.setdefault(hi + 1, []).append(i)
    cuts = sorted(enter.keys() | leave.keys())
    active: dict[int, int] = {}  # team index -> how many of its areas cover the run
    rows: list[AreaRow] = []
    previous: list[int] = []
    for lo, nxt in zip(cuts, cuts[1:], strict=False):
        for i in leave.get(lo, []):
            active[i] -= 1
        for i in enter.get(lo, []):
            active[i] = active.get(i, 0) + 1
        serving = sorted(i for i, n in active.items() if n > 0)
        if not serving:
            previous = []
            continue
        if rows and rows[-1].hi == lo - 1 and serving == previous:
            rows[-1] = AreaRow(rows[-1].lo, nxt - 1, rows[-1].by_part)
        else:
            by_part = {p: [teams[i] for i in serving if teams[i].reachable(p)] for p in PARTS}
            rows.append(AreaRow(lo, nxt - 1, by_part))
        previous = serving
    return rows


def team_json(e: TeamEntry, now: datetime, stale_days: int) -> dict[str, Any]:
    return {
        "name": e.team.name,
        "organisation": e.org_name,
        "address": e.team.address,
        "phone": e.phone,
        "areas": e.areas_text,
        "reachability": {
            p: {"reachable": e.reachable(p), "phone": e.contact(p)[0], "address": e.contact(p)[1]}
            for p in PARTS
        },
        "services": list(e.services),
        "level5": e.level5,
        "capacity": e.capacity,
        "working_hours": e.working_hours,
        "confirmed_at": e.confirmed_at,
        "stale": e.is_stale(now, stale_days),
    }


def region_json(
    teams: list[TeamEntry], passing_on: str, now: datetime, stale_days: int
) -> dict[str, Any]:
    on_map = [e for e in teams if e.areas]
    passing = next((e for e in teams if e.team.address == passing_on), None)
    return {
        "generated_at": now.isoformat(),
        "parts": PARTS,
        "passing_on": (
            team_json(passing, now, stale_days)
            if passing
            else {"address": passing_on}
            if passing_on
            else None
        ),
        "teams": [team_json(e, now, stale_days) for e in on_map],
        "areas": [
            {
                "from": r.lo,
                "to": r.hi,
                "approach": {p: [e.team.address for e in v] for p, v in r.by_part.items()},
            }
            for r in area_rows(on_map)
        ],
    }


CSV_HEADER = (
    "pc4_from",
    "pc4_to",
    "part",
    "team",
    "organisation",
    "phone",
    "address",
    "services",
    "level5",
    "capacity",
    "confirmed_at",
    "stale",
)


def region_csv_rows(
    teams: list[TeamEntry], passing_on: str, now: datetime, stale_days: int
) -> list[tuple[Any, ...]]:
    """One row per area run, part of the week and team to approach; the passing-on address
    last, for every area and part."""
    rows: list[tuple[Any, ...]] = []
    on_map = [e for e in teams if e.areas]

    def row(lo: Any, hi: Any, part: str, e: TeamEntry) -> tuple[Any, ...]:
        phone, addr = e.contact(part)
        return (
            lo,
            hi,
            part,
            e.team.name,
            e.org_name,
            phone,
            addr,
            " ".join(e.services),
            "ja" if e.level5 else "nee",
            e.capacity,
            e.confirmed_at[:10],
            "verouderd" if e.is_stale(now, stale_days) else "",
        )

    for r in area_rows(on_map):
        for part, es in r.by_part.items():
            rows += [row(r.lo, r.hi, part, e) for e in es]
    passing = next((e for e in teams if e.team.address == passing_on), None)
    if passing is not None:
        rows += [row("*", "*", part, passing) for part in PARTS]
    elif passing_on:
        rows.append(("*", "*", "*", "doorbemiddeling", "", "", passing_on, "", "", "", "", ""))
    return rows
