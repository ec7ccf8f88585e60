"""The care request's form (forms/aanmelding_wijkverpleging): its rules, its vocabulary
kept equal to the execution request's, and risky procedures carried with the GP's
instructions and flagged "niet voorbehouden" in every rendering."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from securemail.form import kinds, render
from securemail.form.care import CARE_CODES
from securemail.form.definition import FormDefinition, form_names, load_definition
from securemail.form.request import ExecutionRequest, FormInvalidError, parse_request

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FORMS = PROJECT_ROOT / "forms"
EXAMPLE = PROJECT_ROOT / "examples" / "aanmelding_wijkverpleging.json"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REF = "AWV-2026-000001"


@pytest.fixture
def care() -> FormDefinition:
    return load_definition(FORMS, "aanmelding_wijkverpleging")


@pytest.fixture
def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    return data


def codes(care: FormDefinition, data: dict[str, Any]) -> set[tuple[str, str]]:
    with pytest.raises(FormInvalidError) as caught:
        kinds.parse_document(care, data, now=NOW, reference=REF)
    return {(e.field, e.code) for e in caught.value.errors}


def test_forms_folder_offers_both_kinds_with_their_own_prefix(care: FormDefinition) -> None:
    assert form_names(FORMS) == ("aanmelding_wijkverpleging", "uitvoeringsverzoek")
    assert (care.form_id, care.version, care.reference_prefix) == (
        "aanmelding_wijkverpleging", "1.0", "AWV",
    )  # fmt: skip
    assert load_definition(FORMS).reference_prefix == "UVZ"


def test_vocabulary_is_the_execution_requests_own(care: FormDefinition) -> None:
    # One list of reserved procedures: a care request's reserved lines are the same order.
    uvz = load_definition(FORMS)
    assert dict(care.procedures) == dict(uvz.procedures)
    assert dict(care.categories) == dict(uvz.categories)
    assert set(uvz.not_reserved) <= set(care.not_reserved)


def test_specialisms_are_the_covenants(care: FormDefinition) -> None:
    spec = care.spec("care.specialism")
    assert spec is not None
    assert {o.value for o in spec.options} == {
        "algemene_wijkverpleging", "wondzorg", "longzorg", "casemanagement_dementie",
        "gespecialiseerd_verpleegkundig_team", "palliatieve_zorg", "nachtzorg",
    }  # fmt: skip


def test_wound_care_line_carries_the_gps_instructions_flagged_not_reserved(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    req = kinds.parse_document(care, example, now=NOW, reference=REF)
    doc = json.loads(req.canonical_json())
    assert doc["risky_procedures"][0]["reserved"] is False
    assert doc["risky_procedures"][0]["instructions"].startswith("Reinigen")
    assert doc["procedures"][0]["reserved"] is True
    out = render.render_request(care, req)
    assert out.json == req.canonical_json()
    for text in (out.text, out.html):
        assert "Risicovolle handeling 1: Wondzorg (niet voorbehouden)" in text
        assert "Voorbehouden handeling 1: Subcutane injectie" in text
        assert "Aanwijzingen van de arts" in text
    assert "niet voorbehouden" not in out.text.split("Voorbehouden handeling 1")[1].split("\n")[0]


def test_risky_line_without_instructions_is_refused(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    del example["risky_procedures"][0]["instructions"]
    assert codes(care, example) == {("risky_procedures.0.instructions", "required")}


def test_reserved_code_as_risky_line_points_to_the_reserved_lines(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    example["risky_procedures"][0]["code"] = "INJ_SC"
    assert codes(care, example) == {("risky_procedures.0.code", "procedure.reserved")}


def test_risky_code_as_reserved_line_is_refused(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    example["procedures"][0] = {"code": "OXYGEN", "indication": "x", "schedule": "y"}
    assert codes(care, example) == {("procedures.0.code", "procedure.not_reserved")}


def test_reserved_lines_keep_the_execution_requests_rules(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    del example["procedures"][0]["medication"]
    del example["period"]
    del example["instructions"]
    assert codes(care, example) == {
        ("procedures.0.medication", "medication.required"),
        ("period.start_date", "care.period_required"),
        ("instructions.contact_when", "care.instructions_required"),
    }


def test_care_without_reserved_lines_needs_no_period(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    for key in ("procedures", "period", "instructions"):
        del example[key]
    req = kinds.parse_document(care, example, now=NOW, reference=REF)
    assert req.procedures == ()
    assert req.supervision_arranged is True  # nothing reserved: no supervision to arrange


def test_care_question_history_wishes_and_contact_are_required(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    for key in ("care", "background", "wishes", "contact"):
        del example[key]
    assert {
        ("care.specialism", "required"), ("care.question", "required"),
        ("background.history", "required"), ("wishes.known", "required"),
        ("wishes.wanted", "required"), ("contact.name", "required"),
        ("contact.phone", "required"),
    } == codes(care, example)  # fmt: skip


def test_execution_request_still_refuses_risky_procedures() -> None:
    uvz = load_definition(FORMS)
    data = json.loads((PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json").read_text("utf-8"))
    data["procedures"][1] = {"code": "WOUND_CARE", "indication": "x", "schedule": "y"}
    with pytest.raises(FormInvalidError) as caught:
        parse_request(uvz, data, now=NOW)
    [error] = caught.value.errors
    assert error.code == "procedure.not_reserved"
    assert "aanmelding wijkverpleging" in error.message_nl


def test_stored_documents_come_back_as_their_kind(
    care: FormDefinition, example: dict[str, Any]
) -> None:
    req = kinds.parse_document(care, example, now=NOW, reference=REF)
    again = kinds.document_from(json.loads(req.canonical_json()))
    assert isinstance(again, kinds.FormDocument)
    assert again.canonical_json() == req.canonical_json()
    uvz_doc = json.loads((PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json").read_text())
    uvz = parse_request(load_definition(FORMS), uvz_doc, now=NOW)
    assert isinstance(kinds.document_from(uvz.to_document()), ExecutionRequest)


def test_html_rendering_escapes_free_text(care: FormDefinition, example: dict[str, Any]) -> None:
    example["care"]["question"] = "<script>alert(1)</script>"
    req = kinds.parse_document(care, example, now=NOW, reference=REF)
    html = render.render_request(care, req).html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_docs_list_the_care_requests_own_messages(care: FormDefinition) -> None:
    doc = (PROJECT_ROOT / "docs" / "forms.md").read_text(encoding="utf-8")
    uvz = load_definition(FORMS)
    rows = dict(re.findall(r"^\| AWV `([a-z_.]+)` \| (.+?) \|", doc, flags=re.MULTILINE))
    own = {c for c, m in care.messages.items() if uvz.messages.get(c) != m} | CARE_CODES
    assert {c: care.messages[c].nl for c in own} == {c: rows.get(c) for c in own}
