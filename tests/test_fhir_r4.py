"""The FHIR exports validate against the R4 definitions (tests/fhir_r4.py): every kind of
audit row as an AuditEvent, and the consent register as a Bundle of Consents. And the
validator itself refuses what R4 refuses, so a green run means something."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from datetime import timedelta
from typing import Any

import pytest

from securemail.audit import export as audit_export
from securemail.audit import trail as audit
from securemail.audit.trail import EVENT_CODES, AuditEvent
from securemail.consent import fhir as consent_fhir
from tests import fhir_r4
from tests import test_audit as base
from tests import test_consent as tc
from tests.test_audit import BSN, at

store = base.store
world = base.world


def _every_kind_of_row(db: Any, a: dict[str, Any]) -> None:
    """One row per event code, with every optional column the trail can fill."""
    gp = dataclasses.replace(a["gp_a"], access_point="192.0.2.7")
    nurse = dataclasses.replace(a["nurse_b"], access_point="portal.zorg.example")
    outcomes = ("success", "refused", "error")
    for i, code in enumerate(sorted(EVENT_CODES)):
        actor = nurse if i % 2 else gp
        outcome = outcomes[i % 3]
        audit.record(
            db,
            AuditEvent.of(
                actor,
                code,
                occurred_at=at(2, 8, i % 60),
                patient_id=BSN,
                object_type="request",
                object_id=f"UVZ-2024-{i:05d}",
                data_categories="execution_request",
                consent_id="c-1",
                sender_org=a["gp_a"].org_code,
                recipient_org=base.TEAM_B,
                check_authz="allow:request.view",
                check_consent="permit",
                outcome=outcome,
                outcome_detail="" if outcome == "success" else "the reason",
                responsible_user_id=a["gp_a"].user_id,
                **({"nature": "emergency", "emergency_reason": "spoed"} if i % 5 == 0 else {}),
            ),
        )
    audit.record(db, AuditEvent("request.deliver", occurred_at=at(2, 9)))  # the worker, bare
    # Operations, not care for a patient (as the adherence figures record it).
    audit.record(db, AuditEvent.of(gp, "audit.view", purpose="HOPERAT", occurred_at=at(2, 9, 1)))


def _exported(world: Any) -> list[dict[str, Any]]:
    s, a = world
    s.write_sync(lambda db: _every_kind_of_row(db, a))
    scope = s.write_sync(lambda db: audit_export.begin_export(db, a["po_a"], "fhir", at(1), at(20)))
    out = io.StringIO()
    s.read_sync(
        lambda db: audit_export.write_fhir(
            audit_export.export_rows(db, scope, at(1), at(20)), out, audit_export.org_kinds(db)
        )
    )
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_audit_event_kind_validates_as_r4_audit_event(world):
    events = _exported(world)
    assert len(events) >= len(EVENT_CODES)
    for ev in events:
        fhir_r4.assert_valid(ev)
    kinds = {ev["subtype"][0]["code"] for ev in events}
    assert set(EVENT_CODES) - {"audit.export"} <= kinds | {"audit.export"}


@pytest.fixture
def consent_store(tmp_path):
    s = tc.open_store(tmp_path / "securemail.db")
    yield s
    s.close()


def test_consent_register_bundle_validates_as_r4(consent_store):
    s = consent_store
    tc.grant(
        s,
        tc.c.Recipient(team_id=3),
        evidence=b"%PDF signed",
        evidence_ref="form-12.pdf",
        valid_until=tc.NOW + timedelta(days=365),
    )
    tc.deny(s, tc.c.Recipient(org_id=5), performer="representative", performer_name="M. de Vries")
    tc.grant(s, tc.c.Recipient(category="wijkverpleging"))
    tc.grant(s, tc.c.Recipient(org_id=6), basis="implied_referral", evidence_ref="verwijzing-7")
    tc.grant(s, tc.c.Recipient(team_id=3), patient_bsn=tc.OTHER_BSN)
    s.write_sync(
        lambda db: tc.c.withdraw(
            db,
            tc.GP,
            patient_bsn=tc.OTHER_BSN,
            source_org_id=tc.PRACTICE,
            recipient=tc.c.Recipient(team_id=3),
            channel="paper",
            now=tc.NOW,
            stop_pending=tc.no_stop,
        )
    )
    bundle = s.write_sync(
        lambda db: consent_fhir.export_fhir(db, tc.OFFICER, source_org_id=tc.PRACTICE, now=tc.NOW)
    )
    assert len(bundle["entry"]) == 5
    fhir_r4.assert_valid(bundle)
    for entry in bundle["entry"]:
        fhir_r4.assert_valid(entry["resource"])


# -- the validator refuses what R4 refuses ----------------------------------------------------


@pytest.fixture
def valid_event(world) -> dict[str, Any]:
    ev = next(e for e in _exported(world) if "entity" in e and "network" in e["agent"][0])
    assert fhir_r4.problems(ev) == []
    return ev


def _del(path: str):
    def change(ev: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = ev
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        del node[last]

    return change


def _set(path: str, value: Any):
    def change(ev: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = ev
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_set("action", "X"), "required value set"),
        (_set("outcome", "3"), "required value set"),
        (_set("agent.0.network.type", "7"), "required value set"),
        (_del("recorded"), "R4 structure"),
        (_del("source"), "R4 structure"),
        (_del("agent.0.requestor"), "R4 structure"),
        (_set("recorded", "2024-05-02"), "R4 structure"),  # an instant needs time and zone
        (_set("id", "not a valid id!"), "R4 structure"),
        (_set("type", [{"system": audit_export.DCM, "code": "110100"}]), "R4 structure"),
        (_set("agent.0.policy", "urn:x"), "R4 structure"),  # policy is uri[], not uri
        (_set("nurseNote", "x"), "R4 structure"),  # no such element
        (_set("type.code", "999999"), "is not in"),
        (_set("type.system", "http://example.org/codes"), "unknown code system"),
        (_set("entity.0.type.code", "9"), "is not in"),
        (_set("purposeOfEvent.0.coding.0.code", "CARE"), "is not in"),
        (_set("outcomeDesc", ""), "empty"),
    ],
)
def test_the_validator_refuses_an_invalid_audit_event(valid_event, change, says):
    ev = copy.deepcopy(valid_event)
    change(ev)
    found = fhir_r4.problems(ev)
    assert any(says in p for p in found), found


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_set("status", "revoked"), "required value set"),
        (_set("provision.type", "allow"), "required value set"),
        (_set("scope.coding.0.code", "privacy"), "is not in"),
        (_del("scope"), "R4 structure"),
        (_del("category"), "R4 structure"),
        (_set("policyRule.coding.0.code", "CONSENTED"), "is not in"),
    ],
)
def test_the_validator_refuses_an_invalid_consent(consent_store, change, says):
    record = tc.grant(consent_store, tc.c.Recipient(team_id=3))
    consent = consent_fhir.to_fhir(record, now=tc.NOW)
    assert fhir_r4.problems(consent) == []
    change(consent)
    found = fhir_r4.problems(consent)
    assert any(says in p for p in found), found
