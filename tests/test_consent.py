"""The consent register (issue 6): record, evaluate, enforce, withdraw, export, bad input.

Real sqlite files in tmp_path through Store with every migration; the only fakes are
the clock (NOW) and, for the withdrawal test, a tiny stand-in for the lead's requests
table with the stop_pending callback the lead will wire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail import consent as c
from securemail.access import Person
from securemail.audit import trail as audit
from securemail.cli import main as cli_main
from securemail.consent import fhir
from securemail.errors import AccessDeniedError
from securemail.home import open_store
from securemail.store import Store
from tests.conftest import chain_alone

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
BSN = "111222333"  # passes the 11-test
OTHER_BSN = "123456782"
PRACTICE = 1
GP = Person(
    user_id=7,
    username="dr.jansen",
    name="Dr Jansen",
    role="gp",
    org_id=PRACTICE,
    org_code="01234567",
)
OTHER_GP = Person(user_id=8, username="dr.smit", name="Dr Smit", role="gp", org_id=9)
OFFICER = Person(user_id=9, username="po", name="PO", role="privacy_officer", org_id=PRACTICE)
NURSE = Person(user_id=10, username="nurse", name="N", role="nurse", org_id=2)

TEAM_A = c.Target(
    team_id=3, org_id=2, category="wijkverpleging", label="Wijkteam Noord", org_code="URA-2"
)
TEAM_B = c.Target(team_id=4, org_id=2, category="wijkverpleging")
TEAM_ELSEWHERE = c.Target(team_id=7, org_id=5, category="wijkverpleging")
TEAM_HOMECARE = c.Target(team_id=8, org_id=6, category="thuiszorg")


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "securemail.db")
    yield s
    s.close()


def grant(store: Store, recipient: c.Recipient | None = None, **kw: Any) -> c.ConsentRecord:
    args: dict[str, Any] = {
        "patient_bsn": BSN,
        "source_org_id": PRACTICE,
        "recipient": recipient,
        "decision": "permit",
        "basis": "explicit",
        "valid_from": NOW - timedelta(days=10),
        "given_at": NOW - timedelta(days=10),
        "channel": "in_person",
        "performer": "patient",
        "now": NOW - timedelta(days=10),
    }
    args.update(kw)
    actor = args.pop("actor", GP)
    return store.write_sync(lambda db: c.record(db, actor, **args))


def deny(store: Store, recipient: c.Recipient, **kw: Any) -> c.ConsentRecord:
    return grant(store, recipient, decision="deny", basis="objection", **kw)


def evaluate(
    store: Store, target: c.Target, *, now: datetime = NOW, **kw: Any
) -> c.ConsentDecision:
    args = {"patient_bsn": BSN, "source_org_id": PRACTICE, "target": target, "now": now, **kw}
    return store.read_sync(lambda db: c.evaluate(db, **args))


def rows(store: Store, table: str) -> list[dict[str, Any]]:
    return store.read_sync(lambda db: list(db[table].rows))


def counts(store: Store) -> tuple[int, int]:
    return len(rows(store, "consents")), len(rows(store, "audit_events"))


def no_stop(db, bsn, recipient, /, **kw) -> list[str]:
    return []


# -- evaluation ---------------------------------------------------------------------------------
def test_evaluate_without_record_refuses_and_names_what_is_missing(store):
    decision = evaluate(store, TEAM_A)
    assert not decision.permitted and decision.record is None
    assert decision.specificity is c.Specificity.NONE
    assert "no consent" in decision.reason
    for part in ("team 3", "organisation 2", "category wijkverpleging", "TREAT execution_request"):
        assert part in decision.reason
    assert BSN not in decision.reason
    with pytest.raises(c.ConsentMissingError) as err:
        decision.raise_if_refused()
    assert err.value.code == "consent.missing"
    assert err.value.message_nl() == (
        "Geen toestemming van de cliënt voor het delen met Wijkteam Noord."
    )
    assert BSN not in err.value.diagnostics()


def test_evaluate_permit_for_team_a_does_not_count_for_team_b(store):
    grant(store, c.Recipient(team_id=TEAM_A.team_id))
    assert evaluate(store, TEAM_A).permitted
    refused = evaluate(store, TEAM_B)
    assert not refused.permitted and refused.record is None


def test_evaluate_org_permit_counts_for_a_team_of_that_org_only(store):
    rec = grant(store, c.Recipient(org_id=2))
    for team in (TEAM_A, TEAM_B):
        decision = evaluate(store, team)
        assert decision.permitted and decision.record == rec
        assert decision.specificity is c.Specificity.ORGANISATION
    assert not evaluate(store, TEAM_ELSEWHERE).permitted


def test_evaluate_category_permit_counts_for_that_category_only(store):
    grant(store, c.Recipient(category="wijkverpleging"))
    decision = evaluate(store, TEAM_ELSEWHERE)
    assert decision.permitted and decision.specificity is c.Specificity.CATEGORY
    assert not evaluate(store, TEAM_HOMECARE).permitted


def test_evaluate_more_specific_record_wins_both_ways(store):
    grant(store, c.Recipient(org_id=2))
    deny(store, c.Recipient(team_id=TEAM_A.team_id))
    assert not evaluate(store, TEAM_A).permitted  # team objection beats organisation permit
    assert evaluate(store, TEAM_B).permitted
    deny(store, c.Recipient(category="wijkverpleging"))
    grant(store, c.Recipient(org_id=5))
    assert evaluate(store, TEAM_ELSEWHERE).permitted  # organisation permit beats category deny


def test_evaluate_at_equal_specificity_deny_beats_permit(store):
    grant(store, c.Recipient(org_id=2), data_categories=["execution_request"])
    objection = deny(
        store, c.Recipient(org_id=2), data_categories=["execution_request", "medication"]
    )
    decision = evaluate(store, TEAM_A)
    assert not decision.permitted and decision.record == objection
    assert decision.audit_value == f"deny:{objection.consent_id}@v1"
    with pytest.raises(c.ConsentDeniedError) as err:
        decision.raise_if_refused()
    assert err.value.code == "consent.denied"


def test_evaluate_data_category_and_purpose_must_match(store):
    grant(store, c.Recipient(team_id=3), data_categories=["medication"])
    assert not evaluate(store, TEAM_A).permitted
    assert evaluate(store, TEAM_A, data_category="medication").permitted


def test_evaluate_expired_consent_no_longer_counts(store):
    until = NOW - timedelta(hours=1)
    grant(store, c.Recipient(team_id=3), valid_until=until)
    assert evaluate(store, TEAM_A, now=until - timedelta(seconds=1)).permitted
    at_end = evaluate(store, TEAM_A, now=until)
    assert not at_end.permitted
    decision = evaluate(store, TEAM_A)
    assert not decision.permitted and "is expired" in decision.reason


def test_evaluate_not_yet_valid_consent_does_not_count(store):
    grant(store, c.Recipient(team_id=3), valid_from=NOW + timedelta(days=1))
    decision = evaluate(store, TEAM_A)
    assert not decision.permitted and "not yet valid" in decision.reason
    assert evaluate(store, TEAM_A, now=NOW + timedelta(days=1)).permitted


def test_evaluate_withdrawn_consent_does_not_count(store):
    grant(store, c.Recipient(team_id=3))
    store.write_sync(
        lambda db: c.withdraw(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            recipient=c.Recipient(team_id=3),
            channel="phone",
            now=NOW,
            stop_pending=no_stop,
        )
    )
    decision = evaluate(store, TEAM_A, now=NOW + timedelta(seconds=1))
    assert not decision.permitted and "is withdrawn" in decision.reason


def test_evaluate_holder_is_part_of_the_scope(store):
    grant(store, c.Recipient(team_id=3))
    decision = store.read_sync(
        lambda db: c.evaluate(db, patient_bsn=BSN, source_org_id=9, target=TEAM_A, now=NOW)
    )
    assert not decision.permitted


# -- versions -----------------------------------------------------------------------------------
def test_record_change_creates_version_2_superseding_1_and_keeps_history(store):
    v1 = grant(store, c.Recipient(team_id=3))
    v2 = grant(store, c.Recipient(team_id=3), valid_until=NOW + timedelta(days=30))
    assert (v2.consent_id, v2.version, v2.supersedes) == (v1.consent_id, 2, v1.row_id)
    current = store.read_sync(lambda db: c.list_records(db, source_org_id=PRACTICE, now=NOW))
    assert current == [v2]
    history = store.read_sync(
        lambda db: c.list_records(db, source_org_id=PRACTICE, now=NOW, history=True)
    )
    assert [r.version for r in history] == [2, 1]
    assert evaluate(store, TEAM_A).record == v2


def test_consents_table_refuses_update_delete_and_forked_versions(store):
    v1 = grant(store, c.Recipient(team_id=3))
    grant(store, c.Recipient(team_id=3), valid_until=NOW + timedelta(days=30))
    for sql in ("UPDATE consents SET decision = 'deny'", "DELETE FROM consents"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.write_sync(lambda db, sql=sql: db.execute(sql))
    fork = {k: v for k, v in rows(store, "consents")[1].items() if k != "id"}
    with pytest.raises(sqlite3.IntegrityError):  # a second version 2 of the same consent
        store.write_sync(lambda db: db["consents"].insert(fork))
    skip = dict(fork, version=3, supersedes=v1.row_id)  # version 3 straight after version 1
    with pytest.raises(sqlite3.IntegrityError, match="previous version"):
        store.write_sync(lambda db: db["consents"].insert(skip))
    assert len(rows(store, "consents")) == 2


def test_mark_entered_in_error_supersedes_and_stops_counting(store):
    v1 = grant(store, c.Recipient(team_id=3))
    v2 = store.write_sync(
        lambda db: c.mark_entered_in_error(
            db,
            GP,
            consent_id=v1.consent_id,
            source_org_id=PRACTICE,
            reason="wrong patient",
            now=NOW,
        )
    )
    assert (v2.version, v2.status) == (2, "entered-in-error")
    assert not evaluate(store, TEAM_A).permitted


# -- checks on record ---------------------------------------------------------------------------
def test_check_writes_audit_row_with_consent_record_used(store):
    rec = grant(store, c.Recipient(org_id=2))
    for target, ref in ((TEAM_A, "R-1"), (TEAM_ELSEWHERE, "R-2")):
        store.write_sync(
            lambda db, target=target, ref=ref: c.check(
                db,
                GP,
                patient_bsn=BSN,
                source_org_id=PRACTICE,
                target=target,
                now=NOW,
                audit_object=("request", ref),
            )
        )
    checks = [r for r in rows(store, "audit_events") if r["event_code"] == "consent.check"]
    ok, refused = checks
    assert ok["outcome"] == "success" and ok["consent_id"] == rec.consent_id
    assert ok["check_consent"] == f"permit:{rec.consent_id}@v1"
    assert (ok["object_type"], ok["object_id"], ok["patient_id"]) == ("request", "R-1", BSN)
    assert ok["recipient_org"] == "URA-2" and ok["sender_org"] == GP.org_code
    assert refused["outcome"] == "refused" and refused["check_consent"] == "none"
    assert refused["consent_id"] == "" and "no consent" in refused["outcome_detail"]
    assert store.read_sync(chain_alone).rows == len(rows(store, "audit_events"))


def test_require_refusal_inside_write_rolls_back_the_send(store):
    store.write_sync(lambda db: db.execute("CREATE TABLE sends (ref TEXT)"))

    def send(db):
        c.require(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            target=TEAM_A,
            now=NOW,
            audit_object=("request", "R-1"),
        )
        db.execute("INSERT INTO sends VALUES ('R-1')")

    with pytest.raises(c.ConsentMissingError):
        store.write_sync(send)
    assert rows(store, "sends") == []
    grant(store, c.Recipient(team_id=3))
    store.write_sync(send)  # permitted: check row and send commit together
    assert rows(store, "sends") == [{"ref": "R-1"}]
    assert rows(store, "audit_events")[-1]["outcome"] == "success"


def test_check_then_raise_after_commit_keeps_the_refusal_on_record(store):
    decision = store.write_sync(
        lambda db: c.check(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            target=TEAM_A,
            now=NOW,
            audit_object=("request", "R-9"),
        )
    )
    with pytest.raises(c.ConsentMissingError):
        decision.raise_if_refused()
    assert rows(store, "audit_events")[-1]["object_id"] == "R-9"


# -- bad input ------------------------------------------------------------------------------------
BAD_RECORDS = [
    ("patient_bsn", {"patient_bsn": "123456789"}),
    ("patient_bsn", {"patient_bsn": "11122233"}),
    ("valid_until", {"valid_until": NOW - timedelta(days=20)}),
    (
        "recipient",
        {
            "basis": "implied_referral",
            "recipient": c.Recipient(category="wijkverpleging"),
            "evidence_ref": "referral R-1",
        },
    ),
    ("evidence_ref", {"basis": "implied_referral"}),
    ("basis", {"decision": "deny", "basis": "explicit"}),
    ("basis", {"decision": "permit", "basis": "objection"}),
    ("recipient", {"recipient": c.Recipient(team_id=3, org_id=2)}),
    ("recipient", {"recipient": c.Recipient()}),
    ("performer_name", {"performer": "representative"}),
    ("performer_name", {"performer_name": "Someone"}),
    ("valid_from", {"valid_from": datetime(2025, 1, 1)}),  # naive on purpose
    ("data_categories", {"data_categories": ["lab_results"]}),
    ("data_categories", {"data_categories": "execution_request"}),
    ("channel", {"channel": "email"}),
    ("given_at", {"given_at": NOW}),  # after the recording time of the helper
]


@pytest.mark.parametrize(("field", "bad"), BAD_RECORDS)
def test_record_bad_input_names_field_and_writes_nothing(store, field, bad):
    before = counts(store)
    with pytest.raises(c.ConsentInputError) as err:
        grant(store, **{"recipient": c.Recipient(team_id=3), **bad})
    assert err.value.context["field"] == field
    assert err.value.code == "consent.invalid"
    assert BSN not in err.value.diagnostics()
    assert counts(store) == before


def test_record_unknown_recipient_is_refused(store):
    before = counts(store)
    with pytest.raises(c.ConsentInputError) as err:
        grant(store, c.Recipient(team_id=99), recipient_known=lambda db, r: r.team_id != 99)
    assert err.value.context["field"] == "recipient"
    assert counts(store) == before


def test_record_by_a_gp_of_another_practice_is_refused(store):
    before = counts(store)
    with pytest.raises(AccessDeniedError):
        grant(store, c.Recipient(team_id=3), actor=OTHER_GP)
    assert counts(store) == before


def test_withdraw_of_nothing_is_a_clear_error_and_writes_nothing(store):
    grant(store, c.Recipient(org_id=2))
    before = counts(store)
    with pytest.raises(c.NothingToWithdrawError) as err:  # the permit is for the organisation
        store.write_sync(
            lambda db: c.withdraw(
                db,
                GP,
                patient_bsn=BSN,
                source_org_id=PRACTICE,
                recipient=c.Recipient(team_id=3),
                channel="phone",
                now=NOW,
                stop_pending=no_stop,
            )
        )
    assert err.value.code == "consent.nothing_to_withdraw"
    assert err.value.context["field"] == "recipient"
    assert "team 3" in err.value.reason and BSN not in err.value.diagnostics()
    assert counts(store) == before


# -- withdrawal stops what has not left -----------------------------------------------------------
def _requests_table(db) -> None:
    """A stand-in for requests + outbox: reference, patient, practice, team, status.
    The real wiring (exchange.stop_for_consent) is tested in tests/e2e."""
    db.execute(
        "CREATE TABLE standin_requests (reference TEXT, patient_bsn TEXT, practice_org_id INTEGER, "
        "team_id INTEGER, org_id INTEGER, category TEXT, status TEXT, stop_reason TEXT)"
    )
    db["standin_requests"].insert_all(
        [
            {"reference": "R-1", "patient_bsn": BSN, "team_id": 3, "status": "queued"},
            {"reference": "R-2", "patient_bsn": BSN, "team_id": 3, "status": "sent"},
            {"reference": "R-3", "patient_bsn": OTHER_BSN, "team_id": 3, "status": "queued"},
            {"reference": "R-4", "patient_bsn": BSN, "team_id": 4, "status": "retrying"},
        ],
    )
    db.execute(
        "UPDATE standin_requests SET practice_org_id = 1, org_id = 2, category = 'wijkverpleging'"
    )


def stop_pending(db, bsn, recipient, /, *, source_org_id, still_permitted, now) -> list[str]:
    """What the lead wires: stop unsent requests the register no longer permits (at now)."""
    assert isinstance(now, float)  # the withdrawal's moment, epoch seconds
    stopped = []
    pending = db.execute(
        "SELECT reference, team_id, org_id, category FROM standin_requests WHERE patient_bsn = ? "
        "AND practice_org_id = ? AND status IN ('queued', 'sending', 'retrying')",
        [bsn, source_org_id],
    ).fetchall()
    for ref, team_id, org_id, category in pending:
        if not still_permitted(c.Target(team_id=team_id, org_id=org_id, category=category)):
            db.execute(
                "UPDATE standin_requests SET status = 'stopped', stop_reason = ? "
                "WHERE reference = ?",
                [c.STOP_REASON, ref],
            )
            audit.record(
                db,
                audit.AuditEvent.of(
                    GP, "request.stop", object_id=ref, outcome_detail=c.STOP_REASON
                ),
            )
            stopped.append(ref)
    return stopped


def test_withdraw_stops_queued_request_before_it_leaves_and_audits_it(store):
    # Given an organisation permit, a team permit for team 4, and requests in every state
    store.write_sync(_requests_table)
    org_permit = grant(store, c.Recipient(org_id=2))
    grant(store, c.Recipient(team_id=4))
    # When the organisation permit is withdrawn
    result = store.write_sync(
        lambda db: c.withdraw(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            recipient=c.Recipient(org_id=2),
            channel="phone",
            reason="patient called",
            now=NOW,
            stop_pending=stop_pending,
        )
    )
    # Then only the queued request to team 3 for this patient is stopped
    assert result.stopped == ("R-1",)
    assert [(r.consent_id, r.version, r.status) for r in result.records] == [
        (org_permit.consent_id, 2, "withdrawn")
    ]
    status = {r["reference"]: r["status"] for r in rows(store, "standin_requests")}
    assert status == {"R-1": "stopped", "R-2": "sent", "R-3": "queued", "R-4": "retrying"}
    events = rows(store, "audit_events")
    stop, withdrawal = events[-2], events[-1]
    assert (stop["event_code"], stop["object_id"]) == ("request.stop", "R-1")
    assert withdrawal["event_code"] == "consent.withdraw"
    assert withdrawal["consent_id"] == org_permit.consent_id
    assert "stopped requests: R-1" in withdrawal["outcome_detail"]
    assert not evaluate(store, TEAM_A).permitted  # the check before delivery now refuses
    rec = result.records[0]
    assert (rec.withdrawn_by, rec.withdrawal_channel, rec.reason) == (7, "phone", "patient called")


# -- screens and export ---------------------------------------------------------------------------
def test_register_overview_counts_current_versions(store):
    grant(store, c.Recipient(team_id=3), evidence=b"scan", evidence_ref="scan-1.pdf")
    grant(store, c.Recipient(team_id=4), valid_until=NOW + timedelta(days=10))
    grant(store, c.Recipient(org_id=5), valid_until=NOW - timedelta(days=1))
    grant(store, c.Recipient(org_id=2))
    store.write_sync(
        lambda db: c.withdraw(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            recipient=c.Recipient(org_id=2),
            channel="portal",
            now=NOW,
            stop_pending=no_stop,
        )
    )
    overview = store.read_sync(lambda db: c.register_overview(db, PRACTICE, NOW))
    assert overview == {
        "active": 2,
        "withdrawn": 1,
        "expired": 1,
        "expiring": 1,
        "without_evidence": 1,
        "entered_in_error": 0,
    }


def test_view_records_is_scoped_and_audited(store):
    grant(store, c.Recipient(team_id=3))
    grant(store, c.Recipient(team_id=3), patient_bsn=OTHER_BSN)
    seen = store.write_sync(
        lambda db: c.view_records(db, OFFICER, source_org_id=PRACTICE, patient_bsn=BSN, now=NOW)
    )
    assert [r.patient_bsn for r in seen] == [BSN]
    last = rows(store, "audit_events")[-1]
    assert (last["event_code"], last["patient_id"], last["user_id"]) == ("consent.view", BSN, 9)
    for outsider in (OTHER_GP, NURSE):
        with pytest.raises(AccessDeniedError):
            store.write_sync(
                lambda db, a=outsider: c.view_records(db, a, source_org_id=PRACTICE, now=NOW)
            )


def test_export_fhir_bundle_shape(store):
    evidence = b"%PDF signed consent form"
    permit = grant(
        store,
        c.Recipient(team_id=3),
        evidence=evidence,
        evidence_ref="form-12.pdf",
        valid_until=NOW + timedelta(days=365),
    )
    deny(store, c.Recipient(org_id=5), performer="representative", performer_name="M. de Vries")
    grant(store, c.Recipient(team_id=3), patient_bsn=OTHER_BSN)
    grant(store, c.Recipient(team_id=3), actor=OTHER_GP, source_org_id=9)

    def identify(kind: str, ident: int) -> dict[str, str] | None:
        return (
            {"system": fhir.URA_SYSTEM, "value": f"9000000{ident}"}
            if kind == "organisation"
            else None
        )

    bundle = store.write_sync(
        lambda db: fhir.export_fhir(
            db, GP, source_org_id=PRACTICE, patient_bsn=BSN, now=NOW, identify=identify
        )
    )
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    resources = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert len(resources) == 2
    consent = resources[permit.consent_id]
    assert consent["resourceType"] == "Consent" and consent["status"] == "active"
    assert consent["meta"]["versionId"] == "1"
    assert consent["scope"]["coding"][0]["code"] == "patient-privacy"
    assert consent["category"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "59284-0",
        "display": "Patient Consent",
    }
    assert consent["patient"]["identifier"] == {"system": fhir.BSN_SYSTEM, "value": BSN}
    assert consent["performer"][0]["type"] == "Patient"
    assert consent["organization"][0]["identifier"] == {
        "system": fhir.URA_SYSTEM,
        "value": "90000001",
    }
    assert consent["policyRule"]["coding"][0]["code"] == "OPTIN"
    provision = consent["provision"]
    assert provision["type"] == "permit"
    assert provision["period"] == {
        "start": "2025-02-21T09:00:00.000Z",
        "end": "2026-03-03T09:00:00.000Z",
    }
    assert provision["actor"][0]["role"]["coding"][0]["code"] == "IRCP"
    assert provision["actor"][0]["reference"]["identifier"] == {
        "system": fhir.TEAM_SYSTEM,
        "value": "3",
    }
    assert provision["purpose"][0]["code"] == "TREAT"
    # recorded without naming categories: every one (an objection must cover all that is sent)
    assert {(x["system"], x["code"]) for x in provision["class"]} == {
        (fhir.DATA_CATEGORY_SYSTEM, code) for code in c.DATA_CATEGORIES
    }
    digest = base64.b64encode(hashlib.sha256(evidence).digest()).decode()
    assert consent["sourceAttachment"] == {"title": "form-12.pdf", "hash": digest}
    objection = next(r for r in resources.values() if r["id"] != permit.consent_id)
    assert objection["provision"]["type"] == "deny"
    assert objection["policyRule"]["coding"][0]["code"] == "OPTOUT"
    assert objection["performer"][0] == {"type": "RelatedPerson", "display": "M. de Vries"}
    last = rows(store, "audit_events")[-1]
    assert (last["event_code"], last["patient_id"]) == ("consent.export", BSN)
    json.dumps(bundle)  # serialisable as is


def test_export_fhir_whole_register_shows_withdrawn_as_inactive(store):
    grant(store, c.Recipient(team_id=3))
    grant(store, c.Recipient(team_id=3), patient_bsn=OTHER_BSN)
    store.write_sync(
        lambda db: c.withdraw(
            db,
            GP,
            patient_bsn=OTHER_BSN,
            source_org_id=PRACTICE,
            recipient=c.Recipient(team_id=3),
            channel="paper",
            now=NOW,
            stop_pending=no_stop,
        )
    )
    bundle = store.write_sync(
        lambda db: fhir.export_fhir(db, OFFICER, source_org_id=PRACTICE, now=NOW)
    )
    statuses = sorted(e["resource"]["status"] for e in bundle["entry"])
    assert statuses == ["active", "inactive"]


# -- property: the answer does not depend on the order records were written -----------------------
# Few recipients and mostly valid periods, so that ties (same level, both decisions) are common.
RECIPIENTS = [
    c.Recipient(team_id=3),
    c.Recipient(org_id=2),
    c.Recipient(org_id=5),
    c.Recipient(category="wijkverpleging"),
]
spec = st.fixed_dictionaries(
    {
        "recipient": st.sampled_from(RECIPIENTS),
        "decision": st.sampled_from(c.DECISIONS),
        "categories": st.sampled_from(
            [("execution_request",), ("medication",), ("execution_request", "medication")]
        ),
        "start": st.integers(-3, 1),
        "days": st.none() | st.integers(1, 6),
    }
)


def _apply(path: Path, specs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    s = open_store(path)
    try:
        for sp in specs:
            start = NOW + timedelta(days=sp["start"])
            grant(
                s,
                sp["recipient"],
                decision=sp["decision"],
                basis="objection" if sp["decision"] == "deny" else "explicit",
                data_categories=sp["categories"],
                valid_from=start,
                valid_until=start + timedelta(days=sp["days"]) if sp["days"] else None,
            )
        out = []
        for target in (TEAM_A, TEAM_B, TEAM_ELSEWHERE, TEAM_HOMECARE):
            for category in c.DATA_CATEGORIES:
                d = evaluate(s, target, data_category=category)
                key = None if d.record is None else (d.record.recipient, d.record.decision)
                out.append((d.permitted, d.specificity, key))
        return out
    finally:
        s.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(spec, max_size=6, unique_by=lambda s: (s["recipient"], s["categories"])),
    data=st.data(),
)
def test_evaluate_is_independent_of_insertion_order(specs, data):
    order = data.draw(st.permutations(specs))
    with tempfile.TemporaryDirectory() as tmp:
        assert _apply(Path(tmp) / "a.db", specs) == _apply(Path(tmp) / "b.db", list(order))


# -- CLI against a real gateway home ---------------------------------------------------------------
@pytest.fixture
def cli_home(tmp_path):
    import asyncio

    from securemail.access import SYSTEM
    from securemail.accounts import auth as real_auth
    from securemail.home import init_home
    from securemail.region import directory as real_directory

    home = Path(tempfile.mkdtemp(prefix="smc-"))  # short: gpg-agent socket path limit
    asyncio.run(init_home(home))
    store = open_store(home / "securemail.db")
    now = NOW.isoformat()

    def setup(db):
        real_directory.add_org(db, SYSTEM, code="01234567", kind="practice", name="P", now=now)
        real_directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="N", now=now)
        # Team ids 1-3; the CLI tests address the third (id 3, as the domain tests above).
        for name in ("a", "b", "noord"):
            real_directory.add_team(
                db,
                SYSTEM,
                org_code="87654321",
                name=name,
                address=f"{name}@wijkzorg.example",
                now=now,
            )
        real_auth.add_user(
            db,
            SYSTEM,
            username="dr.jansen",
            name="Dr. Jansen",
            role="gp",
            org_code="01234567",
            password="a long test password",
            profile={"big": "12345678901"},
            now=now,
        )

    store.write_sync(setup)
    store.close()
    yield ["--home", str(home), "--as", "dr.jansen"]
    import shutil
    import subprocess

    subprocess.run(
        ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "gpg-agent"], check=False
    )
    shutil.rmtree(home, ignore_errors=True)


def test_cli_grant_list_withdraw_export(cli_home, tmp_path, capsys):
    proof = tmp_path / "form.pdf"
    proof.write_bytes(b"signed")
    assert (
        cli_main(
            [
                "consent",
                "grant",
                *cli_home,
                "--patient",
                BSN,
                "--recipient",
                "noord@wijkzorg.example",
                "--until",
                "2099-12-31",
                "--evidence",
                str(proof),
            ]
        )
        == 0
    )
    assert "recorded permit" in capsys.readouterr().out
    assert cli_main(["consent", "list", *cli_home, "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["recipient"]["team_id"] == 3 and listed["evidence_ref"] == "form.pdf"
    assert listed["evidence_sha256"] == hashlib.sha256(b"signed").hexdigest()
    assert listed["valid_until"] == "2099-12-31T23:00:00.000Z"  # end of the day in Amsterdam
    assert (
        cli_main(
            [
                "consent",
                "withdraw",
                *cli_home,
                "--patient",
                BSN,
                "--recipient",
                "noord@wijkzorg.example",
                "--channel",
                "phone",
            ]
        )
        == 0
    )
    assert "stopped requests: none" in capsys.readouterr().out
    assert cli_main(["consent", "export", *cli_home, "--patient", BSN]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["entry"][0]["resource"]["status"] == "inactive"


def test_cli_bad_input_is_one_line_without_patient_data(cli_home, capsys):
    bad_bsn = "123456789"
    assert (
        cli_main(
            ["consent", "grant", *cli_home, "--patient", bad_bsn, "--recipient", "wijkverpleging"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: consent.invalid") and bad_bsn not in err
    assert err.count("\n") == 1
    assert (
        cli_main(
            [
                "consent",
                "withdraw",
                *cli_home,
                "--patient",
                BSN,
                "--recipient",
                "wijkverpleging",
                "--channel",
                "phone",
            ]
        )
        == 1
    )
    assert "consent.nothing_to_withdraw" in capsys.readouterr().err


# -- documentation ------------------------------------------------------------------------------
def test_docs_name_every_consent_error_code():
    text = (Path(__file__).parent.parent / "docs" / "consent.md").read_text(encoding="utf-8")
    for err in (
        c.ConsentInputError,
        c.NothingToWithdrawError,
        c.ConsentMissingError,
        c.ConsentDeniedError,
    ):
        assert f"`{err.code}`" in text and err.nl.split("{")[0].strip() in text


# -- evidence names are sealed content (issue 23) ---------------------------------------------
EVIDENCE_NAME = "Jansen 12-03-1948 toestemming.pdf"


def _file_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("securemail.db*") if p.is_file())


def test_an_evidence_name_is_stored_sealed_and_reads_back(store, tmp_path: Path) -> None:
    rec = grant(store, c.Recipient(team_id=3), evidence=b"scan", evidence_ref=EVIDENCE_NAME)
    assert rec.evidence_ref == EVIDENCE_NAME
    raw = store.read_sync(
        lambda db: db.execute("SELECT evidence_ref FROM consents WHERE id = ?", [rec.row_id])
    ).fetchone()[0]
    assert raw.startswith("v1:") and "Jansen" not in raw
    assert EVIDENCE_NAME.encode() not in _file_bytes(tmp_path)
    # a new version (withdrawal) carries the evidence over, still sealed and readable
    store.write_sync(
        lambda db: c.withdraw(
            db,
            GP,
            patient_bsn=BSN,
            source_org_id=PRACTICE,
            recipient=c.Recipient(team_id=3),
            channel="phone",
            now=NOW,
            stop_pending=no_stop,
        )
    )
    history = store.read_sync(
        lambda db: c.list_records(db, source_org_id=PRACTICE, now=NOW, history=True)
    )
    assert [r.evidence_ref for r in history] == [EVIDENCE_NAME, EVIDENCE_NAME]
    assert EVIDENCE_NAME.encode() not in _file_bytes(tmp_path)


def test_the_migration_seals_plaintext_evidence_names(tmp_path: Path) -> None:
    from securemail import config, contentbox
    from securemail.home import MIGRATIONS

    s = Store(tmp_path / "securemail.db")
    try:

        def before(db: Any) -> None:
            for m in MIGRATIONS:
                m.apply(db, stop_before="0002_consent_evidence_sealed")
            db.execute(
                "INSERT INTO consents (consent_id, version, status, decision, basis, patient_bsn,"
                " source_org_id, recipient_team_id, purpose, data_categories, valid_from,"
                " given_at, channel, performer, recorded_at, evidence_ref) VALUES ('C-1', 1,"
                " 'active', 'permit', 'explicit', ?, 1, 3, 'TREAT', '[\"x\"]', ?, ?,"
                " 'in_person', 'patient', ?, ?)",
                [BSN, NOW.isoformat(), NOW.isoformat(), NOW.isoformat(), EVIDENCE_NAME],
            )

        s.write_sync(before)
        assert "securemail.retention:0002_consent_evidence_sealed" in s.pending_migrations(
            MIGRATIONS
        )
        s.migrate(MIGRATIONS)
        assert EVIDENCE_NAME.encode() not in _file_bytes(tmp_path)
        [rec] = s.read_sync(
            lambda db: c.list_records(db, source_org_id=PRACTICE, now=NOW, history=True)
        )
        assert rec.evidence_ref == EVIDENCE_NAME
        with pytest.raises(sqlite3.IntegrityError):  # still append-only
            s.write_sync(lambda db: db.execute("UPDATE consents SET reason = 'x'"))
    finally:
        s.close()
        contentbox.forget(config.load(tmp_path))
