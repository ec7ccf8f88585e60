"""The regional map: validation, the team's own entry (audited, scoped), staleness, the part of
the week, suggest() and the region rows. Real sqlite store; hypothesis for the validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.access import SYSTEM
from securemail.config import RegionSettings
from securemail.errors import AccessDeniedError
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from securemail.region.directory import Team
from securemail.region.map import Reach, RegionInputError, TeamEntry
from securemail.region.view import suggest
from tests.auth_fixtures import T0, actor, audit_rows, make_store

S = RegionSettings()
ALL_DAY = {p: Reach(True) for p in regionmap.PARTS}


def entry_values(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "phone": "020-1234567",
        "areas": "1011-1018, 1020",
        "capacity": "ja",
        "services": ["wondzorg"],
        "reach_kantoor": "on",
        "reach_avond": "on",
    }
    base.update(kw)
    return base


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


def team_id(store, address: str) -> int:
    return store.read_sync(lambda db: directory.team_by_address(db, address).id)


# -- validation ------------------------------------------------------------------------------


def test_areas_parse_single_codes_and_ranges():
    assert regionmap.parse_areas("1011-1018, 1020;1030 - 1031") == (
        (1011, 1018),
        (1020, 1020),
        (1030, 1031),
    )
    assert regionmap.format_areas(regionmap.parse_areas("1020 1011-1018")) == "1011-1018, 1020"


@pytest.mark.parametrize("bad", ["999", "0999", "10000", "1018-1011", "12ab", "1011-", "abcd"])
def test_bad_areas_are_refused_with_the_field_and_dutch_text(bad):
    with pytest.raises(RegionInputError) as exc:
        regionmap.parse_areas(bad)
    assert set(exc.value.errors) == {"areas"}
    assert exc.value.errors["areas"][1]  # Dutch text for the page


@given(st.integers(min_value=1000, max_value=9999), st.integers(min_value=0, max_value=200))
def test_any_valid_range_round_trips(lo, width):
    hi = min(lo + width, 9999)
    text = f"{lo}-{hi}"
    assert regionmap.parse_areas(text) == ((lo, hi),)
    assert regionmap.parse_areas(regionmap.format_areas(regionmap.parse_areas(text))) == ((lo, hi),)


@given(st.integers().filter(lambda n: not 1000 <= n <= 9999))
def test_numbers_outside_pc4_never_pass(n):
    with pytest.raises(RegionInputError):
        regionmap.parse_areas(str(n))


@given(st.text(max_size=30))
def test_validation_raises_only_region_input_errors(text):
    try:
        regionmap.validate_entry(
            entry_values(
                areas=text, phone=text, capacity=text, phone_nacht=text, address_weekend=text
            )
        )
    except RegionInputError as exc:
        assert exc.errors and all(nl for _, nl in exc.errors.values())


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(RegionInputError) as exc:
        regionmap.validate_entry(
            entry_values(
                phone="12",
                areas="",
                capacity="misschien",
                services=["yoga"],
                address_nacht="geen-adres",
            )
        )
    assert set(exc.value.errors) == {"phone", "areas", "capacity", "services", "address_nacht"}
    assert "phone" in exc.value.diagnostics()


# -- the team's own entry --------------------------------------------------------------------


def test_a_nurse_keeps_her_teams_entry_audited_without_patient_data(store):
    nurse = actor(store, "nurse_c")
    tid = team_id(store, "centrum@zorg.example")
    e = store.write_sync(
        lambda db: regionmap.save_entry(
            db,
            nurse,
            tid,
            entry_values(capacity="beperkt", reach_nacht="on", phone_nacht="0201111111"),
            now=T0,
        )
    )
    assert e.serves(1015) and not e.serves(1019) and e.capacity == "beperkt"
    assert e.contact("nacht") == ("0201111111", "centrum@zorg.example")
    assert e.contact("kantoor") == ("020-1234567", "centrum@zorg.example")
    assert not e.is_stale(T0 + timedelta(days=30), 30)
    assert e.is_stale(T0 + timedelta(days=31), 30)
    later = T0 + timedelta(days=40)
    e = store.write_sync(lambda db: regionmap.confirm_entry(db, nurse, tid, now=later))
    assert not e.is_stale(later, 30)
    rows = audit_rows(store, "team.map_update") + audit_rows(store, "team.map_confirm")
    assert [r["user_name"] for r in rows] == ["nurse_c", "nurse_c"]
    assert all(r["object_id"] == "centrum@zorg.example" and not r["patient_id"] for r in rows)


def test_a_nurse_cannot_edit_another_teams_entry_nor_a_gp(store):
    tid = team_id(store, "oost@zorg.example")
    for who in ("nurse_c", "gp_a"):
        a = actor(store, who)
        with pytest.raises(AccessDeniedError):
            store.write_sync(
                lambda db, a=a: regionmap.save_entry(db, a, tid, entry_values(), now=T0)
            )
    assert store.read_sync(lambda db: regionmap.entry(db, tid)).areas == ()
    assert audit_rows(store, "team.map_update") == []


def test_a_bad_entry_writes_nothing(store):
    nurse = actor(store, "nurse_c")
    tid = team_id(store, "centrum@zorg.example")
    with pytest.raises(RegionInputError):
        store.write_sync(
            lambda db: regionmap.save_entry(db, nurse, tid, entry_values(areas="0999"), now=T0)
        )
    assert store.read_sync(lambda db: db["team_map"].count) == 0


def test_practice_entry_preferred_and_contact_nurse(store):
    gp = actor(store, "gp_b")
    org = gp.org_id
    store.write_sync(
        lambda db: regionmap.set_practice_entry(
            db, gp, org, {"role": "poh", "name": "P. Ondersteuner", "phone": "0201234567"}, now=T0
        )
    )
    with pytest.raises(RegionInputError) as exc:
        store.write_sync(lambda db: regionmap.set_preferred(db, gp, org, []))
    assert set(exc.value.errors) == {"preferred"}
    with pytest.raises(RegionInputError):
        store.write_sync(
            lambda db: regionmap.set_preferred(
                db, gp, org, ["centrum@zorg.example", "oost@zorg.example", "centrum@zorg.example"]
            )
        )
    with pytest.raises(RegionInputError) as exc:
        store.write_sync(lambda db: regionmap.set_preferred(db, gp, org, ["nobody@zorg.example"]))
    assert "unknown team" in exc.value.reason
    store.write_sync(lambda db: regionmap.set_preferred(db, gp, org, ["oost@zorg.example"]))
    assert [t.address for t in store.read_sync(lambda db: directory.preferred_teams(db, org))] == [
        "oost@zorg.example"
    ]
    with pytest.raises(AccessDeniedError):  # another practice's entry
        store.write_sync(
            lambda db: regionmap.set_preferred(
                db, actor(store, "gp_a"), org, ["centrum@zorg.example"]
            )
        )
    # The contact nurse is set by the team, for a practice that chose it.
    nurse_o = actor(store, "nurse_o")
    oost = team_id(store, "oost@zorg.example")
    store.write_sync(
        lambda db: regionmap.set_contact_nurse(
            db, nurse_o, oost, org, {"name": "V. Pleeg", "phone": "0612345678"}, now=T0
        )
    )
    assert [
        c.name
        for c in store.read_sync(lambda db: regionmap.contact_nurses(db, practice_org_id=org))
    ] == ["V. Pleeg"]
    with pytest.raises(AccessDeniedError):
        store.write_sync(
            lambda db: regionmap.set_contact_nurse(
                db, actor(store, "nurse_c"), oost, org, {"name": "X", "phone": "0612345678"}, now=T0
            )
        )
    codes = [r["event_code"] for r in audit_rows(store)]
    assert {"practice.entry_update", "practice.preferred_update", "team.contact_nurse"} <= set(
        codes
    )


# -- part of the week ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "part"),
    [
        ("2025-03-03T09:00", "kantoor"),  # Monday morning
        ("2025-03-03T17:30", "avond"),
        ("2025-03-03T23:30", "nacht"),
        ("2025-03-04T06:59", "nacht"),
        ("2025-03-08T12:00", "weekend"),  # Saturday
        ("2025-04-21T10:00", "weekend"),  # Easter Monday (deadlines' holiday calendar)
        ("2025-04-27T02:00", "nacht"),  # a night on King's Day is still the night
    ],
)
def test_part_of_week_in_amsterdam(local, part):
    from zoneinfo import ZoneInfo

    now = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Europe/Amsterdam"))
    assert regionview.part_of_week(now.astimezone(UTC), S) == part


# -- suggest() -------------------------------------------------------------------------------


def te(
    tid: int,
    name: str,
    areas: str,
    *,
    capacity: str = "ja",
    services: tuple[str, ...] = (),
    reach: dict[str, Reach] | None = None,
    confirmed: datetime | None = T0,
) -> TeamEntry:
    return TeamEntry(
        Team(tid, 1, name, f"{name.lower()}@zorg.example", "wijkverpleging", True),
        "Zorg",
        "0201234567",
        regionmap.parse_areas(areas) if areas else (),
        ALL_DAY if reach is None else reach,
        services,
        False,
        capacity,
        confirmed.isoformat() if confirmed else "",
    )


TEAMS = [
    te(1, "Centrum", "1011-1018"),
    te(2, "Oost", "1091-1098", capacity="nee"),
    te(3, "Noord", "1011-1012", services=("wondzorg",), reach={"kantoor": Reach(True)}),
    te(
        4,
        "Nacht",
        "1000-1109",
        services=("nachtzorg",),
        reach={"nacht": Reach(True, "0209999999")},
        confirmed=T0 - timedelta(days=60),
    ),
    te(5, "Doorbemiddeling", ""),
]


def names(out: list[regionview.Suggestion]) -> list[str]:
    return [s.name for s in out]


def run(**kw: object) -> list[regionview.Suggestion]:
    args: dict[str, object] = {
        "preferred": [1],
        "passing_on": "doorbemiddeling@zorg.example",
        "pc4": 1012,
        "specialism": "",
        "part": "kantoor",
        "now": T0,
        "stale_days": 30,
    }
    args.update(kw)
    return suggest(TEAMS, **args)  # type: ignore[arg-type]


def test_preferred_first_then_teams_serving_the_area_then_passing_on():
    out = run()
    assert names(out) == ["Centrum", "Noord", "Nacht", "Doorbemiddeling"]
    assert [s.reason for s in out] == [
        "voorkeursaanbieder",
        "werkt in dit gebied",
        "werkt in dit gebied",
        "doorbemiddeling",
    ]
    assert out[0].serves_area and out[1].reachable_now and not out[2].reachable_now


def test_at_night_the_night_team_comes_before_the_day_team_with_its_night_phone():
    out = run(part="nacht")
    assert names(out)[1:3] == ["Nacht", "Noord"]
    assert out[1].phone == "0209999999" and out[1].reachable_now


def test_the_specialism_moves_a_team_that_offers_it_up():
    assert names(run(part="nacht", specialism="wondzorg"))[1:3] == ["Noord", "Nacht"]


def test_no_capacity_is_shown_not_hidden_and_stale_is_flagged():
    out = run(pc4=1095, preferred=[])
    oost = next(s for s in out if s.name == "Oost")
    assert oost.capacity == "nee"
    assert next(s for s in out if s.name == "Nacht").stale
    assert not oost.stale
    assert names(out) == ["Oost", "Nacht", "Doorbemiddeling"]


def test_an_unknown_postcode_gives_preferred_and_passing_on_only():
    assert names(run(pc4=None)) == ["Centrum", "Doorbemiddeling"]
    assert names(run(pc4=9999)) == ["Centrum", "Doorbemiddeling"]


@given(
    pc4=st.one_of(st.none(), st.integers(1000, 9999)),
    preferred=st.lists(st.sampled_from([1, 2, 3, 4, 5, 99]), max_size=3, unique=True),
    part=st.sampled_from(list(regionmap.PARTS)),
    specialism=st.sampled_from(["", *regionmap.SERVICES]),
)
def test_suggest_invariants(pc4, preferred, part, specialism):
    out = run(pc4=pc4, preferred=preferred, part=part, specialism=specialism)
    addresses = [s.address for s in out]
    assert len(addresses) == len(set(addresses))  # nobody twice
    assert out[-1].reason == "doorbemiddeling"  # the passing-on address always last
    known = [t for t in preferred if t in {1, 2, 3, 4}]
    assert [s.reason for s in out[: len(known)]] == ["voorkeursaanbieder"] * len(known)
    for s in out:
        if s.reason == "werkt in dit gebied":
            assert s.serves_area
    # every team serving the area is listed, whatever its capacity
    serving = {e.team.address for e in TEAMS if pc4 is not None and e.serves(pc4)}
    assert serving <= set(addresses)


# -- the region rows -------------------------------------------------------------------------


def test_area_rows_split_at_every_boundary_and_merge_equal_runs():
    rows = regionview.area_rows([e for e in TEAMS if e.areas])
    assert [r.label for r in rows] == [
        "1000-1010",
        "1011-1012",
        "1013-1018",
        "1019-1090",
        "1091-1098",
        "1099-1109",
    ]
    r = rows[1]
    assert [e.team.name for e in r.by_part["kantoor"]] == ["Centrum", "Noord"]
    assert [e.team.name for e in r.by_part["nacht"]] == ["Centrum", "Nacht"]


def test_region_json_and_csv_carry_the_passing_on_address():
    data = regionview.region_json(TEAMS, "doorbemiddeling@zorg.example", T0, 30)
    assert data["passing_on"]["address"] == "doorbemiddeling@zorg.example"
    assert {t["name"] for t in data["teams"]} == {"Centrum", "Oost", "Noord", "Nacht"}
    assert next(t for t in data["teams"] if t["name"] == "Nacht")["stale"] is True
    rows = regionview.region_csv_rows(TEAMS, "doorbemiddeling@zorg.example", T0, 30)
    assert rows[-1][0] == "*" and rows[-1][6] == "doorbemiddeling@zorg.example"


def test_system_actor_may_edit_any_team(store):
    tid = team_id(store, "oost@zorg.example")
    store.write_sync(lambda db: regionmap.save_entry(db, SYSTEM, tid, entry_values(), now=T0))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("office_start", "8:00"),
        ("night_start", "25:00"),
        ("office_end", "07:30"),
        ("stale_days", "0"),
    ],
)
def test_region_settings_are_validated(tmp_path, key, value):
    from securemail import config
    from securemail.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path, env={f"SECUREMAIL_REGION_{key.upper()}": value})
    assert "[region]" in exc.value.reason


@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(1000, 1060), st.integers(0, 15)), max_size=3),
            st.sets(st.sampled_from(list(regionmap.PARTS))),
        ),
        max_size=6,
    )
)
def test_area_rows_agree_with_asking_every_postcode(spec):
    teams = [
        te(
            i,
            f"T{i}",
            ", ".join(f"{lo}-{lo + w}" for lo, w in areas),
            reach={p: Reach(True) for p in parts},
        )
        for i, (areas, parts) in enumerate(spec)
    ]
    rows = regionview.area_rows(teams)
    for a, b in zip(rows, rows[1:], strict=False):
        assert a.hi < b.lo
    for pc4 in range(1000, 1080):
        row = [r for r in rows if r.lo <= pc4 <= r.hi]
        serving = [e for e in teams if e.serves(pc4)]
        if not serving:
            assert row == []
            continue
        (r,) = row
        for p in regionmap.PARTS:
            assert [e.team.id for e in r.by_part[p]] == [
                e.team.id for e in serving if e.reachable(p)
            ]


# -- the team's working hours on the map -----------------------------------------------------


def test_a_team_sets_its_working_hours_on_the_map_and_a_practice_sees_them(store):
    nurse = actor(store, "nurse_c")
    tid = team_id(store, "centrum@zorg.example")
    e = store.write_sync(
        lambda db: regionmap.save_entry(
            db, nurse, tid, entry_values(working_hours=" 22:00 - 08:00"), now=T0
        )
    )
    assert e.working_hours == "22:00-08:00"
    shown = regionview.region_json([e], "", T0, 30)["teams"][0]
    assert shown["working_hours"] == "22:00-08:00"
    # Saving without hours clears them: the settings' hours apply again.
    e = store.write_sync(lambda db: regionmap.save_entry(db, nurse, tid, entry_values(), now=T0))
    assert e.working_hours == ""


@pytest.mark.parametrize("bad", ["25:00-08:00", "22:00", "08:00-08:00", "nacht"])
def test_bad_working_hours_are_refused_and_write_nothing(store, bad):
    nurse = actor(store, "nurse_c")
    tid = team_id(store, "centrum@zorg.example")
    with pytest.raises(RegionInputError) as exc:
        store.write_sync(
            lambda db: regionmap.save_entry(db, nurse, tid, entry_values(working_hours=bad), now=T0)
        )
    assert set(exc.value.errors) == {"working_hours"}
    assert "werktijden" in exc.value.errors_nl()["working_hours"][0].lower()
    assert store.read_sync(lambda db: db["team_map"].count) == 0


def test_the_maps_hours_win_over_the_settings_which_cover_teams_without(store):
    nurse = actor(store, "nurse_c")
    tid = team_id(store, "centrum@zorg.example")
    settings = "centrum@zorg.example=07:00-17:00, oost@zorg.example=06:00-14:00"
    assert store.read_sync(lambda db: regionmap.hours_by_team(db, settings)) == (
        "centrum@zorg.example=07:00-17:00, oost@zorg.example=06:00-14:00"
    )
    store.write_sync(
        lambda db: regionmap.save_entry(
            db, nurse, tid, entry_values(working_hours="22:00-08:00"), now=T0
        )
    )
    assert store.read_sync(lambda db: regionmap.hours_by_team(db, settings)) == (
        "centrum@zorg.example=22:00-08:00, oost@zorg.example=06:00-14:00"
    )


def test_the_exception_report_counts_by_the_hours_on_the_map(store):
    """A night nurse's look at 02:00 is an exception until her team puts its night on the map."""
    from securemail.audit import report as audit_report
    from securemail.audit import trail as audit

    nurse = actor(store, "nurse_c")
    officer = actor(store, "privacy_a")
    tid = team_id(store, "centrum@zorg.example")
    at_two = "2025-03-04T01:00:00.000Z"  # 02:00 in Amsterdam (winter)
    store.write_sync(
        lambda db: audit.record(
            db,
            audit.AuditEvent.of(
                nurse,
                "request.view",
                patient_id="111222333",
                org_id="01000001",  # in the practice officer's scope
                sender_org="01000001",
                occurred_at=at_two,
            ),
        )
    )

    def outside() -> int:
        return store.write_sync(
            lambda db: (
                audit_report.exceptions(
                    db,
                    officer,
                    "2025-03-04T00:00:00.000Z",
                    "2025-03-05T00:00:00.000Z",
                    working_hours_by_team=regionmap.hours_by_team(db, ""),
                ).outside_hours_total
            )
        )

    assert outside() == 1
    store.write_sync(
        lambda db: regionmap.save_entry(
            db, nurse, tid, entry_values(working_hours="22:00-08:00"), now=T0
        )
    )
    assert outside() == 0
