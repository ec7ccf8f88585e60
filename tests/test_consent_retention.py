"""Consent records are kept as long as something relies on them, then purged (AVG art.
5(1)(e)): their own validity plus the audit retention, and while an audit row that
survives the purge names them. Real sqlite file, real trail and checkpoint key."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securemail import config
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.consent import register
from securemail.consent.model import Recipient
from securemail.ops import retention
from securemail.region import directory
from tests import test_audit as base

store = base.store  # the trail's own fixtures: every migration, practice A, team B, a GP
world = base.world


def _record(
    db, gp, *, until: datetime | None, decision: str = "permit", cats=("execution_request",)
) -> str:
    """A consent of its own (the categories tell two apart; the same ones make a version)."""
    now = datetime.now(UTC)
    rec = register.record(
        db,
        gp,
        patient_bsn=base.BSN,
        source_org_id=directory.org_by_code(db, base.PRACTICE_A).id,
        recipient=Recipient(team_id=directory.team_by_address(db, base.TEAM_B).id),
        decision=decision,
        basis="explicit" if decision == "permit" else "objection",
        data_categories=cats,
        valid_from=now - timedelta(days=60),
        valid_until=until,
        given_at=now - timedelta(days=60),
        channel="in_person",
        performer="patient",
        now=now,
    )
    return rec.consent_id


def _left(s, table: str, code: str = "") -> list[dict]:
    where = "event_code = ?" if code else "1"
    return s.read_sync(
        lambda db: list(db[table].rows_where(where, [code] if code else [], order_by="rowid"))
    )


def test_a_consent_nothing_relies_on_is_purged_one_an_audit_row_names_is_kept(
    world, tmp_path: Path
):
    s, a = world
    gp = a["gp_a"]
    ended = datetime.now(UTC) - timedelta(days=2)
    ids = s.write_sync(
        lambda db: {
            "unused": _record(db, gp, until=ended),
            "relied_on": _record(db, gp, until=ended, cats=("medication",)),
        }
    )
    time.sleep(0.02)  # the audit cutoff falls between the records and the later row
    cutoff = datetime.now(UTC)
    time.sleep(0.02)
    # A send relied on the second consent after the first rows were written; its row stays.
    s.write_sync(
        lambda db: audit.record(
            db,
            AuditEvent.of(gp, "consent.check", patient_id=base.BSN, consent_id=ids["relied_on"]),
        )
    )
    settings = config.load(tmp_path, env={})
    years = settings.audit.retention_years
    now = cutoff.replace(year=cutoff.year + years)  # retention_cutoff(now) == cutoff

    dry = retention.purge(s, settings, now=now, dry_run=True)
    assert dry.consents == 1
    counts = retention.purge(s, settings, now=now)
    assert counts.consents == 1 and counts.audit_rows > 0

    left = {r["consent_id"] for r in _left(s, "consents")}
    assert left == {ids["relied_on"]}
    (purged,) = _left(s, "audit_events", "consent.purge")
    assert purged["object_id"] == ids["unused"]
    assert purged["patient_id"] == "" and base.BSN not in purged["outcome_detail"]
    (run,) = _left(s, "audit_events", "retention.purge")
    assert "consents=1" in run["outcome_detail"]
    s.read_sync(lambda db: audit_integrity.verify(db, audit_integrity.trusted_keys(tmp_path)))
    # Nothing is due twice: a second run writes nothing.
    assert retention.purge(s, settings, now=now).total == 0


def test_a_consent_in_force_or_inside_its_period_is_never_purged(world, tmp_path: Path):
    s, a = world
    gp = a["gp_a"]
    s.write_sync(
        lambda db: (
            _record(db, gp, until=None, decision="deny"),  # an objection with no end
            _record(db, gp, until=datetime.now(UTC) + timedelta(days=400), cats=("medication",)),
        )
    )
    settings = config.load(tmp_path, env={})
    far = datetime.now(UTC) + timedelta(days=366 * settings.audit.retention_years)
    counts = retention.purge(s, settings, now=far)
    assert counts.consents == 0 and counts.audit_rows > 0  # their own rows went, they stay
    assert len(_left(s, "consents")) == 2


def test_the_append_only_trigger_is_back_after_a_purge(world, tmp_path: Path):
    s, a = world
    test_a_consent_nothing_relies_on_is_purged_one_an_audit_row_names_is_kept((s, a), tmp_path)
    triggers = s.read_sync(
        lambda db: [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        ]
    )
    assert "consents_no_delete" in triggers
