"""NEN 7513 coding of the trail: the authorisation protocol's id and version, the coded
role and the typed access point on every row and in both exports; old rows without them
keep verifying. And whose working time is when, for the exception report."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sqlite3
from datetime import time
from pathlib import Path

import pytest
import sqlite_utils

from securemail import access, config
from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.audit import export as audit_export
from securemail.audit import report as audit_report
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.errors import ConfigError
from securemail.region import directory
from tests import test_audit as base
from tests.conftest import chain_alone
from tests.test_audit import BSN, at

store = base.store  # the fixtures of the trail's own tests
world = base.world


def test_the_policy_in_force_is_its_versions_digest():
    assert access.policy_is_versioned(), (
        "access.POLICY changed: add a new POLICY_VERSION with its digest to POLICY_HISTORY "
        f"(digest now {access.policy_digest()})"
    )
    assert list(access.POLICY_HISTORY)[-1] == access.POLICY_VERSION
    assert len(set(access.POLICY_HISTORY.values())) == len(access.POLICY_HISTORY)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.__setitem__("audit.view", frozenset({"privacy_officer", "gp"})),
        lambda p: p.__setitem__("patient.delete", frozenset({"admin"})),
        lambda p: p.pop("consent.view"),
    ],
)
def test_a_changed_policy_without_a_new_version_fails(monkeypatch, change):
    changed = dict(access.POLICY)
    change(changed)
    monkeypatch.setattr(access, "POLICY", changed)
    assert not access.policy_is_versioned()


def test_more_operator_only_kinds_also_need_a_version(monkeypatch):
    monkeypatch.setattr(access, "ADMIN_KINDS", access.ADMIN_KINDS | {"consent"})
    assert not access.policy_is_versioned()


def _rows(s):
    def go(db):
        cur = db.conn.execute(
            "SELECT * FROM audit_events WHERE event_code = 'request.view' ORDER BY seq"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]

    return s.read_sync(go)


def test_every_row_carries_policy_coded_role_and_access_point_type(world):
    s, a = world
    gp = dataclasses.replace(a["gp_a"], access_point="192.0.2.7")
    api = dataclasses.replace(gp, token_actions=frozenset({"request.view"}))
    nurse = dataclasses.replace(a["nurse_b"], access_point="198.51.100.2")
    cli = dataclasses.replace(SYSTEM, access_point="cli@host")

    def go(db):
        for actor in (gp, api, nurse, cli, SYSTEM):
            audit.record(db, AuditEvent.of(actor, "request.view", patient_id=BSN))

    s.write_sync(go)
    rows = _rows(s)
    assert [(r["access_point_type"], r["role_code"]) for r in rows] == [
        ("web", f"{access.UZI_ROLE_SYSTEM}|01.015"),
        ("api", f"{access.UZI_ROLE_SYSTEM}|01.015"),
        ("web", f"{access.UZI_ROLE_SYSTEM}|30.000"),
        ("cli", f"{access.LOCAL_ROLE_SYSTEM}|system"),
        ("worker", f"{access.LOCAL_ROLE_SYSTEM}|system"),
    ]
    assert {(r["policy_id"], r["policy_version"]) for r in rows} == {
        (access.POLICY_ID, access.POLICY_VERSION)
    }


def test_a_row_without_a_known_access_point_type_is_refused(store):
    with pytest.raises(audit.AuditError):
        store.write_sync(
            lambda db: audit.record(db, AuditEvent("request.view", access_point_type="fax"))
        )


def _valid_fhir_agent(agent: dict) -> None:
    """The R4 AuditEvent.agent shape for what this export fills (policy: uri[]; role:
    CodeableConcept[] whose codings carry system and code; extension: url + value[x])."""
    assert isinstance(agent["requestor"], bool)
    assert isinstance(agent["policy"], list)
    assert all(isinstance(p, str) and ":" in p and " " not in p for p in agent["policy"])
    for concept in agent["role"]:
        assert set(concept) <= {"coding", "text"}
        for coding in concept.get("coding", []):
            assert set(coding) <= {"system", "code", "display"}
            assert coding["system"] and coding["code"]
    for ext in agent.get("extension", []):
        assert set(ext) == {"url", "valueCode"}


def test_exports_carry_policy_coded_role_and_type(world):
    s, a = world
    gp = dataclasses.replace(a["gp_a"], access_point="192.0.2.7")
    s.write_sync(lambda db: audit.record(db, AuditEvent.of(gp, "request.view", occurred_at=at(2))))
    scope = s.write_sync(lambda db: audit_export.begin_export(db, a["po_a"], "csv", at(1), at(20)))
    buf = io.StringIO()
    s.read_sync(
        lambda db: audit_export.write_csv(audit_export.export_rows(db, scope, at(1), at(20)), buf)
    )
    (row,) = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert row["policy_id"] == access.POLICY_ID
    assert row["policy_version"] == access.POLICY_VERSION
    assert row["role_code"] == f"{access.UZI_ROLE_SYSTEM}|01.015"
    assert row["access_point_type"] == "web"
    out = io.StringIO()
    s.read_sync(
        lambda db: audit_export.write_fhir(
            audit_export.export_rows(db, scope, at(1), at(20)), out, {}
        )
    )
    ev = json.loads(out.getvalue().splitlines()[0])
    agent = ev["agent"][0]
    _valid_fhir_agent(agent)
    assert agent["policy"] == [f"urn:securemail:policy:{access.POLICY_ID}:{access.POLICY_VERSION}"]
    assert agent["role"][0]["coding"] == [
        {"system": access.UZI_ROLE_SYSTEM, "code": "01.015", "display": "Huisarts"}
    ]
    assert agent["role"][0]["text"] == "gp"
    assert agent["extension"] == [{"url": audit_export.ACCESS_POINT_TYPE_URL, "valueCode": "web"}]


def _old_hash(prev: str, row: dict) -> str:
    """The row hash exactly as the trail computed it before migration 0002 (json.dumps)."""
    import hashlib

    body = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(audit.DOMAIN + bytes.fromhex(prev) + body.encode()).hexdigest()


def test_rows_from_before_the_new_columns_keep_verifying(tmp_path: Path):
    """A trail written under migration 0001 only, then migrated: the old rows (NULL in the
    new columns) and the new ones verify as one chain; stamping a policy on an old row, or
    stripping it from a new one, is caught."""
    db = sqlite_utils.Database(tmp_path / "old.db")
    audit._migrate(db)
    prev = audit.GENESIS
    for seq in (1, 2):
        row = {
            name: getattr(AuditEvent("request.view", patient_id=BSN), name)
            for name in audit._HASHED_V1
            if name in audit._FIELDS
        }
        row.update(
            seq=seq, event_id=f"old-{seq}", action="R", recorded_at=at(1), source_id="gateway-1"
        )
        h = _old_hash(prev, row)
        cols = [*row, "prev_hash", "row_hash"]
        db.conn.execute(
            f"INSERT INTO audit_events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",  # noqa: S608
            [*row.values(), prev, h],
        )
        prev = h
    audit._migrate_v2(db)
    audit.record(db, AuditEvent.of(SYSTEM, "request.view", patient_id=BSN))
    db.conn.commit()
    assert chain_alone(db).rows == 3
    values = db.conn.execute("SELECT policy_id FROM audit_events ORDER BY seq").fetchall()
    assert [v[0] for v in values] == [None, None, access.POLICY_ID]
    for sql, seq in (
        ("UPDATE audit_events SET policy_id = 'x', policy_version = '1' WHERE seq = 1", 1),
        ("UPDATE audit_events SET policy_id = NULL WHERE seq = 3", 3),
    ):
        conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("SAVEPOINT t")
        conn.execute(sql)
        with pytest.raises(audit.ChainBrokenError) as info:
            audit.scan(conn, 1, 3, start_prev=audit.GENESIS)
        assert f"row {seq}" in str(info.value)
        conn.execute("ROLLBACK TO t")
        conn.close()


def test_report_columns_include_the_new_columns():
    assert set(audit.V2_COLUMNS) <= set(audit_report.COLUMNS)


# -- working hours per role and per team ---------------------------------------------------

NIGHT_TEAM = "nacht@beek.example"


def test_a_night_team_nurses_night_is_no_exception_while_a_day_nurses_is(world):
    s, a = world

    def setup(db):
        directory.add_team(
            db, SYSTEM, org_code=base.NURSING_B, name="Nachtteam", address=NIGHT_TEAM, now=base.NOW
        )
        auth.add_user(
            db,
            SYSTEM,
            username="nurse_night",
            name="NACHT",
            role="nurse",
            org_code=base.NURSING_B,
            password="correct horse battery",
            now=base.NOW,
            teams=[NIGHT_TEAM],
        )
        night = auth.actor_for_cli(db, "nurse_night")
        for nurse in (a["nurse_b"], night):  # 00:00 UTC = 02:00 in Amsterdam (summer)
            audit.record(
                db, AuditEvent.of(nurse, "request.view", patient_id=BSN, occurred_at=at(10, 0))
            )
        # The night nurse at 14:00 is outside her team's working time.
        audit.record(
            db, AuditEvent.of(night, "request.view", patient_id=BSN, occurred_at=at(10, 12))
        )

    s.write_sync(setup)

    def outside(**hours):
        exc = s.write_sync(
            lambda db: audit_report.exceptions(db, a["po_b"], at(9, 12), at(11, 0), **hours)
        )
        return [(r["user_name"], r["occurred_at"]) for r in exc.outside_hours]

    assert outside(working_hours_by_team=f"{NIGHT_TEAM}=22:00-08:00") == [
        ("nurse_b", at(10, 0)),
        ("nurse_night", at(10, 12)),
    ]
    # Without the team's hours, everyone has the day's (the old behaviour).
    assert outside() == [("nurse_b", at(10, 0)), ("nurse_night", at(10, 0))]
    # Per role: nurses work until 03:00; the team's own hours still win for its members.
    assert outside(
        working_hours_by_role="nurse=07:00-03:00",
        working_hours_by_team=f"{NIGHT_TEAM}=22:00-08:00",
    ) == [("nurse_night", at(10, 12))]


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [(("07:00", "19:00"), "07:00", "19:00"), (("22:00", "08:00"), "02:00", "08:00")],
)
def test_windows_include_their_start_and_may_run_past_midnight(window, inside, outside):
    w = (time.fromisoformat(window[0]), time.fromisoformat(window[1]))
    assert audit_report.in_window(time.fromisoformat(inside), w)
    assert not audit_report.in_window(time.fromisoformat(outside), w)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("working_hours_by_team", "nacht@beek.example=22:00"),
        ("working_hours_by_role", "nurse"),
        ("working_hours", "08:00-08:00"),
    ],
)
def test_bad_working_hours_settings_are_refused_naming_the_setting(tmp_path, key, value):
    (tmp_path / "securemail.toml").write_text(f'[audit]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path, env={})
    assert f"[audit] {key}" in str(info.value)
