"""Form definition, parsing and validation of the uniform execution request (and answers)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from securemail.config import PROJECT_ROOT
from securemail.form import request as forms
from securemail.form.definition import FormDefinitionError
from securemail.form.request import (
    DocumentInvalidError,
    ExecutionRequest,
    FormInvalidError,
    TeamAnswer,
    flatten,
    is_valid_bsn,
    load_definition,
    parse_answer,
    parse_form_post,
    parse_request,
)

FORMS = PROJECT_ROOT / "forms"
EXAMPLE = PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NOT_RESERVED_NL = (
    "Voor deze handeling is geen uitvoeringsverzoek nodig: het is geen voorbehouden handeling. "
    "Stuur een aanmelding wijkverpleging; die neemt risicovolle handelingen met uw aanwijzingen op."
)


@pytest.fixture(scope="module")
def definition() -> forms.FormDefinition:
    return load_definition(FORMS)


#: The example's relative dates ("now", "today", "today+6m") as they read at NOW; the rule
#: tests below change them around these absolute values.
PINNED = {"issued_at": "2026-11-20T10:15:00+01:00", "start": "2026-11-23", "eval": "2027-05-21"}


@pytest.fixture
def example() -> dict[str, Any]:
    data = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["issued_at"] = PINNED["issued_at"]
    data["period"].update(start_date=PINNED["start"], evaluation_date=PINNED["eval"])
    return data


def errors_of(definition: forms.FormDefinition, data: Any, **kw: Any) -> list[forms.FieldError]:
    with pytest.raises(FormInvalidError) as info:
        parse_request(definition, data, now=kw.pop("now", NOW), **kw)
    return info.value.errors


def codes_of(definition: forms.FormDefinition, data: Any) -> set[tuple[str, str]]:
    return {(e.field, e.code) for e in errors_of(definition, data)}


def only_error(definition: forms.FormDefinition, data: Any) -> forms.FieldError:
    errors = errors_of(definition, data)
    assert len(errors) == 1, [(e.field, e.code) for e in errors]
    return errors[0]


def suprapubic_line() -> dict[str, Any]:
    return {
        "code": "CATH_SUPRAPUBIC",
        "indication": "Blaasretentie",
        "schedule": "Elke 6 weken",
        "supervision_arranged": True,
    }


# -- the definition -----------------------------------------------------------------------


def test_load_definition_same_path_returns_cached_object(definition: forms.FormDefinition) -> None:
    assert load_definition(FORMS) is definition
    assert load_definition(Path(str(FORMS) + "/.")) is definition
    assert definition.form_id == "uitvoeringsverzoek"
    assert definition.version == "1.0"


def test_definition_vocabulary_marks_medication_for_injection_and_pump_codes(
    definition: forms.FormDefinition,
) -> None:
    with_medication = {c for c, p in definition.procedures.items() if p.medication_required}
    assert with_medication == {"INJ_SC", "INJ_IM", "INJ_IV", "SC_PUMP", "IV_CENTRAL"}
    dependent = {c for c, p in definition.procedures.items() if not p.functionally_independent}
    assert dependent == {"CATH_SUPRAPUBIC", "CATH_BLADDER_CHILD", "OTHER"}
    assert set(definition.not_reserved) == {
        "TUBE_FEEDING", "STOMA_CARE", "WOUND_CARE", "COMPRESSION", "GLUCOSE_CAPILLARY",
        "OXYGEN", "CATHETER_REMOVAL",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec_root", "cls"),
    [
        ("request", ExecutionRequest),
        ("request.patient", forms.Patient),
        ("request.principal", forms.Principal),
        ("request.receiver", forms.Receiver),
        ("request.procedures", forms.Procedure),
        ("request.procedures.medication", forms.Medication),
        ("request.period", forms.Period),
        ("request.instructions", forms.Instructions),
        ("request.consent", forms.Consent),
        ("answer", TeamAnswer),
    ],
)
def test_dataclass_fields_match_definition_fields(
    definition: forms.FormDefinition, spec_root: str, cls: type
) -> None:
    root, _, path = spec_root.partition(".")
    spec = definition.spec(path, root=root)
    assert spec is not None
    meta = {"form_id", "form_version"} if cls in (ExecutionRequest, TeamAnswer) else set()
    assert {f.name for f in dataclasses.fields(cls)} - meta == {f.id for f in spec.fields}


def test_load_definition_broken_file_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "uitvoeringsverzoek"
    folder.mkdir()
    raw = json.loads((FORMS / "uitvoeringsverzoek" / "definition.json").read_text("utf-8"))
    raw["request"]["fields"][0].pop("max_length")
    (folder / "definition.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(FormDefinitionError, match="max_length"):
        load_definition(tmp_path)


def test_load_definition_missing_message_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "uitvoeringsverzoek"
    folder.mkdir()
    raw = json.loads((FORMS / "uitvoeringsverzoek" / "definition.json").read_text("utf-8"))
    del raw["messages"]["bsn.elfproef"]
    (folder / "definition.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(FormDefinitionError, match=r"bsn\.elfproef"):
        load_definition(tmp_path)


def test_docs_forms_md_lists_every_error_code(definition: forms.FormDefinition) -> None:
    doc = (PROJECT_ROOT / "docs" / "forms.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (.+?) \|", doc, flags=re.MULTILINE))
    wrong = {c: m.nl for c, m in definition.messages.items() if rows.get(c) != m.nl}
    assert wrong == {}
    assert "`form.invalid`" in doc


# -- the example and the happy path ------------------------------------------------------


def test_example_request_valid_parses(definition: forms.FormDefinition, example: dict) -> None:
    req = parse_request(definition, example, now=NOW)
    assert req.form_id == "uitvoeringsverzoek"
    assert req.form_version == "1.0"
    assert req.patient_bsn == "999990123"
    assert is_valid_bsn(req.patient_bsn)
    assert req.team_address == "wijkteam-centrum@zorg-noord.example"
    assert req.urgency == "regulier"
    assert [p.code for p in req.procedures] == ["INJ_SC", "CATH_BLADDER_ADULT"]
    assert req.procedures[0].medication is not None
    assert req.procedures[0].medication.dose_value == Decimal(18)
    assert req.procedures[1].category == "catheterisaties"  # completed from the vocabulary
    assert req.reference is None


def test_example_request_with_reference_keeps_reference(
    definition: forms.FormDefinition, example: dict
) -> None:
    req = parse_request(definition, example, now=NOW, reference="UVZ-2026-000123")
    assert req.reference == "UVZ-2026-000123"
    assert req.with_reference("UVZ-2026-000124").reference == "UVZ-2026-000124"


def test_parse_request_normalises_whitespace_postcode_and_bsn(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"].update(postcode=" 1015kk ", name="  J. de Vries-Test\t", bsn="9999.90.123")
    example["receiver"]["team_address"] = "Wijkteam-Centrum@Zorg-Noord.example"
    req = parse_request(definition, example, now=NOW)
    assert req.patient.postcode == "1015 KK"
    assert req.patient.name == "J. de Vries-Test"
    assert req.patient.bsn == "999990123"
    assert req.team_address == "wijkteam-centrum@zorg-noord.example"


def test_parse_request_naive_issued_at_read_as_amsterdam_time(
    definition: forms.FormDefinition, example: dict
) -> None:
    # 12:30 on the Amsterdam clock is 11:30 UTC: not in the future at 12:00 UTC.
    example["issued_at"] = "2026-11-24T12:30"
    example["period"]["start_date"] = "2026-11-24"  # not before the request's own date
    req = parse_request(definition, example, now=NOW)
    assert req.issued_at == datetime(2026, 11, 24, 11, 30, tzinfo=UTC)


def test_parse_request_dutch_date_and_decimal_comma_accepted(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"]["birth_date"] = "17-05-1941"
    example["procedures"][0]["medication"]["dose_value"] = "2,5"
    req = parse_request(definition, example, now=NOW)
    assert req.patient.birth_date == date(1941, 5, 17)
    assert req.procedures[0].medication is not None
    assert req.procedures[0].medication.dose_value == Decimal("2.5")


# -- one specific error per rule ----------------------------------------------------------


def test_bsn_failing_elfproef_reports_bsn_elfproef(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"]["bsn"] = "999990124"
    error = only_error(definition, example)
    assert (error.field, error.code) == ("patient.bsn", "bsn.elfproef")
    assert error.message_nl == "BSN voldoet niet aan de elfproef."
    assert error.message_en


@pytest.mark.parametrize("bsn", ["12345678", "1234567890", "12345678a", "000000000"])
def test_bsn_malformed_reports_bsn_error(
    definition: forms.FormDefinition, example: dict, bsn: str
) -> None:
    example["patient"]["bsn"] = bsn
    error = only_error(definition, example)
    assert error.field == "patient.bsn"
    assert error.code in {"bsn.format", "bsn.elfproef"}


@pytest.mark.parametrize(
    ("section", "key"),
    [("patient", "name"), ("patient", "birth_date"), ("principal", "big"),
     ("instructions", "contact_when"), ("receiver", "team_address")],
)  # fmt: skip
def test_missing_required_field_reports_required(
    definition: forms.FormDefinition, example: dict, section: str, key: str
) -> None:
    del example[section][key]
    error = only_error(definition, example)
    assert (error.field, error.code) == (f"{section}.{key}", "required")
    assert error.message_nl == "Dit veld is verplicht."


def test_blank_required_field_reports_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"]["name"] = "   "
    assert codes_of(definition, example) == {("patient.name", "required")}


def test_end_date_before_start_reports_date_before_start(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["period"] = {"start_date": "2026-11-23", "end_date": "2026-11-22"}
    error = only_error(definition, example)
    assert (error.field, error.code) == ("period.end_date", "date.before_start")
    assert error.message_nl == "De einddatum ligt vóór de startdatum."


def test_unknown_procedure_code_reports_procedure_unknown(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["procedures"][1]["code"] = "TELEPORT"
    error = only_error(definition, example)
    assert (error.field, error.code) == ("procedures.1.code", "procedure.unknown")
    assert "Onbekende handeling" in error.message_nl


@pytest.mark.parametrize(
    "code",
    ["TUBE_FEEDING", "STOMA_CARE", "WOUND_CARE", "COMPRESSION", "GLUCOSE_CAPILLARY", "OXYGEN",
     "CATHETER_REMOVAL"],
)  # fmt: skip
def test_non_reserved_procedure_reports_no_request_needed(
    definition: forms.FormDefinition, example: dict, code: str
) -> None:
    example["procedures"][1]["code"] = code
    error = only_error(definition, example)
    assert (error.field, error.code) == ("procedures.1.code", "procedure.not_reserved")
    assert error.message_nl == NOT_RESERVED_NL


def test_other_without_description_reports_description_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["procedures"][1] = {
        "code": "OTHER",
        "category": "puncties",
        "indication": "Ascites",
        "schedule": "Eenmalig",
        "supervision_arranged": True,
    }
    error = only_error(definition, example)
    assert (error.field, error.code) == (
        "procedures.1.description",
        "procedure.description_required",
    )
    assert error.message_nl == "Beschrijf de overige voorbehouden handeling."


def test_other_without_category_reports_category_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["procedures"][1] = {
        "code": "OTHER",
        "description": "Ascitespunctie via bestaande drain",
        "indication": "Ascites",
        "schedule": "Eenmalig",
        "supervision_arranged": True,
    }
    assert codes_of(definition, example) == {
        ("procedures.1.category", "procedure.category_required")
    }


def test_category_not_matching_code_reports_category_mismatch(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["procedures"][1]["category"] = "injecties"
    assert codes_of(definition, example) == {
        ("procedures.1.category", "procedure.category_mismatch")
    }


@pytest.mark.parametrize("supervision", [False, None])
def test_suprapubic_without_supervision_reports_supervision_required(
    definition: forms.FormDefinition, example: dict, supervision: bool | None
) -> None:
    example["procedures"][1] = suprapubic_line() | {"supervision_arranged": supervision}
    error = only_error(definition, example)
    assert (error.field, error.code) == (
        "procedures.1.supervision_arranged",
        "procedure.supervision_required",
    )
    assert "toezicht en tussenkomst" in error.message_nl


def test_suprapubic_with_supervision_valid(definition: forms.FormDefinition, example: dict) -> None:
    example["procedures"][1] = suprapubic_line()
    assert parse_request(definition, example, now=NOW).procedures[1].supervision_arranged


def test_injection_without_medication_reports_medication_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    del example["procedures"][0]["medication"]
    error = only_error(definition, example)
    assert (error.field, error.code) == ("procedures.0.medication", "medication.required")
    assert error.message_nl.startswith("Vul de medicatie in")


def test_injection_with_blank_medication_reports_medication_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    # What an untouched medication block of the web form posts.
    example["procedures"][0]["medication"] = {"name": "", "dose_value": "", "as_needed": False}
    assert codes_of(definition, example) == {("procedures.0.medication", "medication.required")}


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"dose_value": 0}, "dose_value", "number.too_small"),
        ({"dose_value": -2}, "dose_value", "number.too_small"),
        ({"dose_value": "veel"}, "dose_value", "number.invalid"),
        ({"dose_value": 1.23456}, "dose_value", "number.precision"),
        ({"dose_value": 10**40}, "dose_value", "number.too_large"),
        ({"dose_value": True}, "dose_value", "type.number"),
        ({"dose_unit": "kg"}, "dose_unit", "enum.invalid"),
        ({"route": "oraal"}, "route", "enum.invalid"),
        ({"route": "im"}, "route", "medication.route_mismatch"),
        ({"as_needed": True}, "as_needed_condition", "medication.as_needed_condition_required"),
    ],
)
def test_medication_sub_rule_broken_reports_its_code(
    definition: forms.FormDefinition, example: dict, change: dict, field: str, code: str
) -> None:
    example["procedures"][0]["medication"].update(change)
    assert codes_of(definition, example) == {(f"procedures.0.medication.{field}", code)}


def test_end_date_and_until_further_notice_reports_end_conflict(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["period"]["end_date"] = "2027-01-31"
    error = only_error(definition, example)
    assert (error.field, error.code) == ("period.until_further_notice", "period.end_conflict")
    assert error.message_nl == "Kies een einddatum óf 'tot wederopzegging', niet allebei."


def test_neither_end_date_nor_until_further_notice_reports_end_required(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["period"] = {"start_date": "2026-11-23"}
    assert codes_of(definition, example) == {("period.end_date", "period.end_required")}


@pytest.mark.parametrize(
    ("evaluation", "code"),
    [
        (None, "period.evaluation_required"),
        ("2026-11-23", "date.not_after_start"),
        ("2027-11-24", "period.evaluation_too_late"),
    ],
)
def test_evaluation_date_rule_broken_reports_its_code(
    definition: forms.FormDefinition, example: dict, evaluation: str | None, code: str
) -> None:
    example["period"]["evaluation_date"] = evaluation
    assert codes_of(definition, example) == {("period.evaluation_date", code)}


def test_evaluation_date_twelve_months_on_valid(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["period"]["evaluation_date"] = "2027-11-23"
    assert parse_request(definition, example, now=NOW).period.evaluation_date == date(2027, 11, 23)


@pytest.mark.parametrize("consent", [False, None])
def test_treatment_consent_not_true_reports_consent_not_given(
    definition: forms.FormDefinition, example: dict, consent: bool | None
) -> None:
    example["consent"]["treatment_consent"] = consent
    error = only_error(definition, example)
    assert (error.field, error.code) == ("consent.treatment_consent", "consent.not_given")
    assert "akkoord" in error.message_nl


@pytest.mark.parametrize(
    ("kind", "supersedes", "code"),
    [("wijziging", None, "supersedes.required"), ("nieuw", "UVZ-2026-000001",
                                                   "supersedes.not_allowed")],
)  # fmt: skip
def test_supersedes_rule_broken_reports_its_code(
    definition: forms.FormDefinition, example: dict, kind: str, supersedes: str | None, code: str
) -> None:
    example.update(kind=kind, supersedes=supersedes)
    assert codes_of(definition, example) == {("supersedes", code)}


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        ("issued_at", "2026-11-25T09:00:00+01:00", "datetime.future"),
        ("issued_at", "gisteren", "datetime.invalid"),
        ("issued_at", "1999-12-31T09:00:00+01:00", "date.too_early"),
        ("patient.birth_date", "2026-11-25", "date.future"),
        ("patient.birth_date", "1899-12-31", "date.too_early"),
        ("patient.birth_date", "2026-02-30", "date.invalid"),
        ("patient.postcode", "0123 AB", "postcode.format"),
        ("patient.phone", "12345", "phone.invalid"),
        ("patient.gender", "X", "enum.invalid"),
        ("principal.big", "1234567890", "big.format"),
        ("principal.agb", "1234567", "agb.format"),
        ("principal.out_of_hours_phone", "bel de post", "phone.invalid"),
        ("receiver.team_address", "wijkteam", "email.invalid"),
        ("urgency", "morgen", "enum.invalid"),
        ("kind", "anders", "enum.invalid"),
        ("patient.name", "x" * 201, "text.too_long"),
        ("patient.name", "J. de\nVries", "text.invalid_characters"),
        ("patient.name", "J. \u202eseirV", "text.invalid_characters"),
        ("instructions.instructions", "a" * 4001, "text.too_long"),
        ("instructions.side_effects", "nul\x00byte", "text.invalid_characters"),
        ("instructions.side_effects", "lone \ud800 surrogate", "text.invalid_characters"),
        ("procedures.0.schedule", "22.00\tuur", "text.invalid_characters"),
    ],
)
def test_field_rule_broken_reports_its_code(
    definition: forms.FormDefinition, example: dict, path: str, value: Any, code: str
) -> None:
    set_path(example, path, value)
    assert codes_of(definition, example) == {(path, code)}


@pytest.mark.parametrize(
    "phone", ["020 123 4567", "06-12345678", "+31 (0)20 1234567", "+441234567890", "0800 1234"]
)
def test_phone_dutch_or_e164_valid(definition: forms.FormDefinition, example: dict, phone: str):
    example["patient"]["phone"] = phone
    assert parse_request(definition, example, now=NOW).patient.phone == phone


def test_procedures_empty_or_too_many_reports_list_errors(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["procedures"] = []
    assert codes_of(definition, example) == {("procedures", "required")}
    example["procedures"] = [suprapubic_line() for _ in range(11)]
    assert codes_of(definition, example) == {("procedures", "list.too_long")}


def test_unknown_keys_report_field_unknown(definition: forms.FormDefinition, example: dict):
    example["colour"] = "blue"
    example["patient"]["shoe_size"] = 42
    example["procedures"][0]["medication"]["brand"] = "x"
    example["J. de Vries <1941>"] = 1  # a key that is not an identifier never reaches a path
    assert codes_of(definition, example) == {
        ("colour", "field.unknown"),
        ("patient.shoe_size", "field.unknown"),
        ("procedures.0.medication.brand", "field.unknown"),
        ("?", "field.unknown"),
    }


def test_other_form_or_version_reports_form_mismatch(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["form_version"] = "0.9"
    assert codes_of(definition, example) == {("form_version", "form.mismatch")}


def test_reference_differing_from_gateways_reports_reference_mismatch(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["reference"] = "UVZ-2026-000001"
    errors = errors_of(definition, example, reference="UVZ-2026-000002")
    assert [(e.field, e.code) for e in errors] == [("reference", "reference.mismatch")]


def test_several_errors_all_reported_at_once(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"]["bsn"] = "123456789"
    del example["patient"]["name"]
    example["procedures"][0]["code"] = "WOUND_CARE"
    example["procedures"][1] = suprapubic_line() | {"supervision_arranged": False}
    example["period"]["end_date"] = "2027-01-01"
    example["consent"]["treatment_consent"] = False
    assert codes_of(definition, example) == {
        ("patient.bsn", "bsn.elfproef"),
        ("patient.name", "required"),
        ("procedures.0.code", "procedure.not_reserved"),
        ("procedures.1.supervision_arranged", "procedure.supervision_required"),
        ("period.until_further_notice", "period.end_conflict"),
        ("consent.treatment_consent", "consent.not_given"),
    }


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        ("", ["not", "an", "object"], "type.object"),
        ("procedures", "INJ_SC", "type.list"),
        ("procedures", {"0": {}}, "type.list"),
        ("procedures.0", "INJ_SC", "type.object"),
        ("patient", ["999990123"], "type.object"),
        ("patient.bsn", 999990123, "type.string"),
        ("patient.birth_date", 19410517, "date.invalid"),
        ("issued_at", 1763630100, "datetime.invalid"),
        ("consent.treatment_consent", "yes", "type.bool"),
        ("period.until_further_notice", 1, "type.bool"),
        ("procedures.0.code", ["INJ_SC"], "enum.invalid"),
        ("procedures.0.medication", "insuline", "type.object"),
        ("procedures.0.medication.dose_value", [18], "type.number"),
    ],
)
def test_wrong_type_reports_field_error_not_exception(
    definition: forms.FormDefinition, example: dict, path: str, value: Any, code: str
) -> None:
    data = value if path == "" else set_path(example, path, value)
    assert (path, code) in codes_of(definition, data)


def test_form_invalid_error_reason_names_paths_and_codes_only(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["patient"]["bsn"] = "999990124"
    example["patient"]["name"] = "x" * 300
    with pytest.raises(FormInvalidError) as info:
        parse_request(definition, example, now=NOW)
    exc = info.value
    assert exc.code == "form.invalid"
    assert exc.reason == "form invalid: patient.bsn (bsn.elfproef), patient.name (text.too_long)"
    payload = json.dumps(exc.as_json(), ensure_ascii=False)
    assert "999990124" not in payload
    assert "xxx" not in payload
    assert exc.as_json()["errors"][0] == {
        "field": "patient.bsn",
        "code": "bsn.elfproef",
        "message_nl": "BSN voldoet niet aan de elfproef.",
        "message_en": "The BSN fails the 11-test.",
    }
    assert "2 fout(en)" in exc.message_nl()


def test_parse_request_naive_now_refused(definition: forms.FormDefinition, example: dict):
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_request(definition, example, now=datetime(2026, 11, 24, 12))


# -- documents ---------------------------------------------------------------------------


def test_canonical_json_sorted_compact_utf8(definition: forms.FormDefinition, example: dict):
    req = parse_request(definition, example, now=NOW)
    raw = req.canonical_json()
    assert raw.startswith(b'{"consent":{"consent_by":"client","treatment_consent":true},')
    assert "cliënt".encode() in raw
    assert b": " not in raw.split(b'"instructions"')[0]
    assert json.loads(raw) == req.to_document()
    assert ExecutionRequest.from_document(json.loads(raw)) == req


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("patient"),
        lambda d: d.update(extra=1),
        lambda d: d["period"].update(start_date="morgen"),
        lambda d: d.update(issued_at="2026-11-20T10:15:00"),
        lambda d: d["procedures"][0]["medication"].update(dose_value=[1]),
        lambda d: d.update(procedures="INJ_SC"),
    ],
)
def test_from_document_malformed_raises_document_invalid(
    definition: forms.FormDefinition, example: dict, damage: Any
) -> None:
    doc = parse_request(definition, example, now=NOW).to_document()
    damage(doc)
    with pytest.raises(DocumentInvalidError):
        ExecutionRequest.from_document(doc)


# -- the web form's flat names -----------------------------------------------------------


def test_parse_form_post_builds_nested_request(
    definition: forms.FormDefinition, example: dict
) -> None:
    flat = flatten(example)
    flat["procedures.0.supervision_arranged"] = "on"
    post = MultiDict(flat)
    post.add("csrf_token", "abc")
    post.add("procedures.0.medication.as_needed", "false")  # hidden fallback of a checkbox
    data = parse_form_post(definition, post, ignore={"csrf_token"})
    assert data["patient"]["bsn"] == "999990123"
    assert data["procedures"][0]["supervision_arranged"] is True
    assert data["procedures"][0]["medication"]["as_needed"] is False
    assert "csrf_token" not in data
    assert parse_request(definition, data, now=NOW) == parse_request(definition, example, now=NOW)


def test_parse_form_post_blank_rows_dropped_and_renumbered(
    definition: forms.FormDefinition, example: dict
) -> None:
    flat = flatten(example)
    moved = {k.replace("procedures.1.", "procedures.4."): v for k, v in flat.items()}
    moved |= {"procedures.2.code": "", "procedures.2.indication": " ", "procedures.3.schedule": ""}
    data = parse_form_post(definition, moved)
    assert [p["code"] for p in data["procedures"]] == ["INJ_SC", "CATH_BLADDER_ADULT"]


def test_parse_form_post_odd_names_give_field_errors(
    definition: forms.FormDefinition, example: dict
) -> None:
    post = MultiDict(flatten(example))
    post.add("patient.bsn", "123")  # the same name twice is ambiguous
    post.add("period.start_date.day", "1")  # both a value and a group
    data = parse_form_post(definition, post)
    codes = codes_of(definition, data)
    assert ("patient.bsn", "type.string") in codes
    assert ("period.start_date", "type.object") not in codes
    post.add("procedures.x.code", "INJ_SC")
    with pytest.raises(forms.FormShapeError) as caught:
        parse_form_post(definition, post)
    assert [(e.field, e.code) for e in caught.value.errors] == [("procedures", "type.list")]
    assert "procedures" not in caught.value.data and "patient" in caught.value.data


@pytest.mark.parametrize(
    "name", ["procedures.1000000.code", "procedures.10.code", "procedures.².code"]
)
def test_parse_form_post_refuses_rows_beyond_the_forms_maximum(
    definition: forms.FormDefinition, example: dict, name: str
) -> None:
    post = MultiDict(flatten(example))
    post.add(name, "INJ_SC")
    with pytest.raises(forms.FormShapeError) as caught:
        parse_form_post(definition, post)
    assert caught.value.errors[0].field == "procedures"
    assert caught.value.errors[0].code in {"list.too_long", "type.list"}


def test_parse_form_post_refuses_more_rows_than_the_maximum(
    definition: forms.FormDefinition,
) -> None:
    ten = {f"procedures.{i}.code": "INJ_SC" for i in range(10)}
    assert len(parse_form_post(definition, ten)["procedures"]) == 10
    with pytest.raises(forms.FormShapeError):
        parse_form_post(definition, ten | {"procedures.09.code": "INJ_SC"})


def test_check_bounds_refuses_a_payload_with_too_many_rows(
    definition: forms.FormDefinition, example: dict
) -> None:
    data = {**example, "procedures": example["procedures"] * 6}
    with pytest.raises(forms.FormShapeError) as caught:
        forms.check_bounds(definition, data)
    assert caught.value.errors[0].code == "list.too_long"
    assert forms.check_bounds(definition, example) == example


def test_flatten_leaves_out_none_and_false() -> None:
    flat = flatten({"a": {"b": None, "c": False, "d": True, "e": [{"f": 2.5}]}, "g": "x"})
    assert flat == {"a.d": "on", "a.e.0.f": "2.5", "g": "x"}


# -- answers -----------------------------------------------------------------------------


def test_parse_answer_accepted_valid(definition: forms.FormDefinition) -> None:
    answer = parse_answer(
        definition,
        {"status": "geaccepteerd", "nurse_in_charge": "P. Verpleegkundige",
         "nurse_phone": "06 12345678", "care_start": "2026-12-01T09:00",
         "performer_level": "verpleegkundige", "competence_confirmed": True},
    )  # fmt: skip
    assert answer.status == "geaccepteerd"
    assert TeamAnswer.from_document(json.loads(answer.canonical_json())) == answer


@pytest.mark.parametrize(
    ("data", "kwargs", "expected"),
    [
        ({"status": "geaccepteerd"}, {}, {
            ("nurse_in_charge", "answer.nurse_required"),
            ("nurse_phone", "answer.phone_required"),
            ("care_start", "answer.care_start_required"),
            ("performer_level", "answer.performer_required"),
            ("competence_confirmed", "answer.competence_required")}),
        ({"status": "geaccepteerd", "nurse_in_charge": "P. V", "performer_level": "vig",
          "nurse_phone": "0612345678", "care_start": "2026-12-01T09:00",
          "competence_confirmed": True}, {}, {
            ("performer_level", "answer.vig_requires_supervision")}),
        ({"status": "afgewezen"}, {}, {("reason", "answer.reason_required")}),
        ({"status": "doorbemiddeld", "reason": "Geen capaciteit"}, {}, {
            ("passed_to", "answer.passed_to_required")}),
        ({"status": "doorbemiddeld", "reason": "Vol", "passed_to": "team"}, {}, {
            ("passed_to", "email.invalid")}),
        ({"status": "afgewezen", "reason": "Vol", "passed_to": "a@b.example"}, {}, {
            ("passed_to", "answer.passed_to_not_allowed")}),
        ({"status": "misschien", "mood": "ok"}, {}, {
            ("status", "enum.invalid"), ("mood", "field.unknown")}),
        ("geaccepteerd", {}, {("", "type.object")}),
    ],
)  # fmt: skip
def test_parse_answer_rule_broken_reports_codes(
    definition: forms.FormDefinition, data: Any, kwargs: dict, expected: set
) -> None:
    with pytest.raises(FormInvalidError) as info:
        parse_answer(definition, data, **kwargs)
    assert {(e.field, e.code) for e in info.value.errors} == expected


def test_parse_answer_vig_with_supervision_valid(definition: forms.FormDefinition) -> None:
    data = {"status": "geaccepteerd", "nurse_in_charge": "P. V", "performer_level": "vig",
            "nurse_phone": "0612345678", "care_start": "2026-12-01T09:00",
            "competence_confirmed": True}  # fmt: skip
    assert parse_answer(definition, data, supervision_arranged=True).performer_level == "vig"


# -- BSN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [("999990123", True), ("111222333", True), ("123456782", True), ("123456789", False),
     ("000000000", False), ("99999012", False), ("9999901230", False), ("99999012x", False),
     ("９９９９９０１２３", False), (None, False)],
)  # fmt: skip
def test_is_valid_bsn_examples(value: Any, valid: bool) -> None:
    assert is_valid_bsn(value) is valid


# -- helpers -----------------------------------------------------------------------------


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return data


# -- properties --------------------------------------------------------------------------

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EXAMPLE_DATA = json.loads(EXAMPLE.read_text(encoding="utf-8"))
FIELD_NAMES = sorted({part for name in flatten(EXAMPLE_DATA) for part in name.split(".")})

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Named, not a lambda: hypothesis reads extend's source to check that it recurses, and
    # misreads a lambda the formatter split over lines (a deprecation warning, an error).
    return st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=5
    )


json_like = st.recursive(scalars, _nested, max_leaves=25)


@PROPERTY
@given(data=json_like)
def test_parse_request_arbitrary_input_raises_only_form_invalid(data: Any) -> None:
    definition = load_definition(FORMS)
    try:
        parse_request(definition, data, now=NOW)
    except FormInvalidError as exc:
        assert exc.errors


@PROPERTY
@given(path=st.sampled_from(sorted(flatten(EXAMPLE_DATA))), value=json_like, cut=st.booleans())
def test_parse_request_example_with_one_field_replaced_raises_only_form_invalid(
    path: str, value: Any, cut: bool
) -> None:
    definition = load_definition(FORMS)
    data = copy.deepcopy(EXAMPLE_DATA)
    # Replace the leaf itself, or (cut) the whole group holding it.
    target = path.rsplit(".", 1)[0] if cut and "." in path else path
    set_path(data, target, value)
    try:
        req = parse_request(definition, data, now=NOW)
    except FormInvalidError as exc:
        assert all(e.field is not None and e.code in definition.messages for e in exc.errors)
    else:
        assert json.loads(req.canonical_json()) == req.to_document()


@PROPERTY
@given(post=st.dictionaries(st.sampled_from(sorted(flatten(EXAMPLE_DATA))) | st.text(max_size=30),
                            st.text(max_size=20) | st.lists(st.text(max_size=5), max_size=3),
                            max_size=30))  # fmt: skip
def test_parse_form_post_arbitrary_names_raises_only_form_invalid(post: dict) -> None:
    definition = load_definition(FORMS)
    with pytest.raises(FormInvalidError):
        data = parse_form_post(definition, post)
        flatten(data)
        parse_request(definition, data, now=NOW)


def bsn_from(first8: int) -> str | None:
    digits = [int(c) for c in f"{first8:08d}"]
    check = sum(d * (9 - i) for i, d in enumerate(digits)) % 11
    bsn = f"{first8:08d}{check}"
    return bsn if check <= 9 and bsn != "000000000" else None


line_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co", "Cf", "Zl", "Zp")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip())
free_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co", "Cf", "Zl", "Zp")) | st.just("\n"),
    min_size=1,
    max_size=120,
).filter(lambda s: s.strip())
doses = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(100000), places=3)


@st.composite
def procedure_lines(draw: st.DrawFn) -> dict[str, Any]:
    code = draw(st.sampled_from(["INJ_SC", "INJ_IM", "SC_PUMP", "CATH_BLADDER_ADULT",
                                 "CATH_SUPRAPUBIC", "VENIPUNCTURE", "OTHER"]))  # fmt: skip
    line: dict[str, Any] = {
        "code": code,
        "indication": draw(free_text),
        "schedule": draw(line_text),
        "supervision_arranged": draw(st.booleans()) or code in {"CATH_SUPRAPUBIC", "OTHER"},
    }
    if code == "OTHER":
        line |= {"description": draw(free_text), "category": "puncties"}
    if draw(st.booleans()):
        line["device"] = draw(line_text)
    route = {"INJ_SC": "sc", "INJ_IM": "im", "SC_PUMP": "sc"}.get(code)
    if route:
        dose = draw(doses)
        as_needed = draw(st.booleans())
        line["medication"] = {
            "name": draw(line_text),
            # JSON number, text, or text with a Dutch decimal comma
            "dose_value": draw(
                st.sampled_from([float(dose), str(dose), f"{dose}".replace(".", ",")])
            ),
            "dose_unit": draw(st.sampled_from(["mg", "ug", "mL", "IE", "mg/24u"])),
            "route": route,
            "as_needed": as_needed,
            **({"as_needed_condition": draw(free_text)} if as_needed else {}),
        }
    return line


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    data["issued_at"] = "2025-12-31T10:00:00+01:00"  # before every start drawn below
    bsn = draw(st.integers(0, 10**8 - 1).map(bsn_from).filter(bool))
    data["patient"] |= {"bsn": bsn, "name": draw(line_text), "city": draw(line_text)}
    if draw(st.booleans()):
        del data["patient"]["gender"]
    data["procedures"] = draw(st.lists(procedure_lines(), min_size=1, max_size=10))
    data["urgency"] = draw(st.sampled_from(["regulier", "spoed"]))
    if draw(st.booleans()):
        data |= {"kind": "wijziging", "supersedes": "UVZ-2026-000001"}
    start = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 800)))
    if draw(st.booleans()):
        end = start + timedelta(days=draw(st.integers(0, 400)))
        data["period"] = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    else:
        evaluation = start + timedelta(days=draw(st.integers(1, 365)))
        data["period"] = {"start_date": start.isoformat(), "until_further_notice": True,
                          "evaluation_date": evaluation.isoformat()}  # fmt: skip
    data["instructions"]["instructions"] = draw(free_text)
    return data


@PROPERTY
@given(data=valid_requests(), reference=st.none() | st.just("UVZ-2026-000042"))
def test_valid_request_round_trips_through_document_and_form_post(
    data: dict, reference: str | None
) -> None:
    definition = load_definition(FORMS)
    req = parse_request(definition, data, now=NOW, reference=reference)
    doc = req.to_document()
    assert ExecutionRequest.from_document(doc) == req
    again = parse_request(definition, json.loads(req.canonical_json()), now=NOW)
    assert again == req
    assert again.canonical_json() == req.canonical_json()
    posted = parse_form_post(definition, MultiDict(flatten(doc)))
    assert parse_request(definition, posted, now=NOW) == req


@given(first8=st.integers(0, 10**8 - 1))
def test_bsn_any_eight_digits_have_at_most_one_check_digit(first8: int) -> None:
    valid = [d for d in range(10) if is_valid_bsn(f"{first8:08d}{d}")]
    assert len(valid) <= 1


@given(first8=st.integers(0, 10**8 - 1), position=st.integers(0, 8), delta=st.integers(1, 9))
def test_bsn_single_digit_change_fails_elfproef(first8: int, position: int, delta: int) -> None:
    bsn = bsn_from(first8)
    if bsn is None:
        return
    digits = list(bsn)
    digits[position] = str((int(digits[position]) + delta) % 10)
    assert not is_valid_bsn("".join(digits))


@given(first8=st.integers(0, 10**8 - 1), position=st.integers(0, 7))
def test_bsn_adjacent_swap_fails_elfproef(first8: int, position: int) -> None:
    bsn = bsn_from(first8)
    if bsn is None or bsn[position] == bsn[position + 1]:
        return
    digits = list(bsn)
    digits[position], digits[position + 1] = digits[position + 1], digits[position]
    assert not is_valid_bsn("".join(digits))


# -- relative dates: the example and the demo stay valid on any day ---------------------------


@given(days=st.integers(min_value=-3650, max_value=36500))
@settings(max_examples=60, deadline=None)
def test_example_file_parses_on_any_day_with_its_dates_relative_to_that_day(days: int) -> None:
    # Given the example exactly as shipped, validated at any moment from ten years ago on
    definition = load_definition(FORMS)
    now = datetime.now(UTC) + timedelta(days=days)
    req = parse_request(definition, copy.deepcopy(EXAMPLE_DATA), now=now)
    # Then its dates are absolute, and relative to the moment of validation
    today = now.astimezone(definition.timezone).date()
    assert req.period.start_date == today
    assert req.issued_at == now.astimezone(definition.timezone).replace(microsecond=0)
    assert req.period.evaluation_date is not None
    assert 180 <= (req.period.evaluation_date - today).days <= 184  # six months on


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("today", date(2026, 1, 31)),
        ("today+1d", date(2026, 2, 1)),
        ("today-31d", date(2025, 12, 31)),
        ("today+2w", date(2026, 2, 14)),
        ("today+1m", date(2026, 2, 28)),  # the month's end where the day does not exist
        ("today+13m", date(2027, 2, 28)),
        ("today-2m", date(2025, 11, 30)),
        ("today+12m", date(2027, 1, 31)),
    ],
)
def test_relative_date_resolves_against_the_validation_clock_in_amsterdam(
    definition: forms.FormDefinition, example: dict, written: str, expected: date
) -> None:
    # 31 January 23:30 in Amsterdam is still the 31st there, though already past 22:00 UTC
    now = datetime(2026, 1, 31, 22, 30, tzinfo=UTC)
    example["issued_at"] = "2025-10-01T10:00:00+02:00"  # the start may not precede it
    example["period"] = {"start_date": "today-40d", "end_date": written}
    if expected <= date(2025, 12, 22):
        example["period"]["start_date"] = "today-100d"
    req = parse_request(definition, example, now=now)
    assert req.period.end_date == expected
    assert req.to_document()["period"]["end_date"] == expected.isoformat()  # signed: absolute


@pytest.mark.parametrize(
    "written", ["today+99999d", "today+10000m", "tomorrow", "today+", "today+1y", " today +1d"]
)
def test_relative_date_out_of_range_or_misspelt_is_a_clear_date_error(
    definition: forms.FormDefinition, example: dict, written: str
) -> None:
    example["period"]["end_date"] = written
    example["period"].pop("until_further_notice", None)
    example["period"].pop("evaluation_date", None)
    assert ("period.end_date", "date.invalid") in codes_of(definition, example)


def test_issued_now_is_the_validation_moment_and_never_in_the_future(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["issued_at"] = "now"
    example["period"]["start_date"] = "today"
    req = parse_request(definition, example, now=NOW)
    assert req.issued_at == NOW.replace(microsecond=0)
    assert req.to_document()["issued_at"].startswith("2026-11-24T13:00:00+01:00")


# -- issue 21: the request's date is the moment of signing -----------------------------------


def test_signed_at_replaces_the_typed_issue_moment(
    definition: forms.FormDefinition, example: dict
) -> None:
    # Given a request typed this morning, signed at noon
    example["issued_at"] = "2026-11-24T09:00:00+01:00"
    example["period"]["start_date"] = "2026-11-24"
    req = parse_request(definition, example, now=NOW, signed_at=NOW)
    # Then the signed date is the moment of signing, not what was typed
    assert req.issued_at == NOW


def test_signed_at_fills_an_absent_issue_moment(
    definition: forms.FormDefinition, example: dict
) -> None:
    del example["issued_at"]
    example["period"]["start_date"] = "today"
    assert parse_request(definition, example, now=NOW, signed_at=NOW).issued_at == NOW


def test_backdated_issue_moment_is_a_field_error(
    definition: forms.FormDefinition, example: dict
) -> None:
    # Given a request dated four days before it is signed
    errors = {
        (e.field, e.code)
        for e in errors_of(definition, example, signed_at=NOW)  # PINNED: 20 November
    }
    assert ("issued_at", "datetime.backdated") in errors


def test_issue_moment_just_before_midnight_is_not_backdated(
    definition: forms.FormDefinition, example: dict
) -> None:
    # A form opened at 23:55 and signed at 00:05 (Amsterdam) is not backdated
    signed = datetime(2026, 11, 24, 23, 5, tzinfo=UTC)  # 00:05 on the 25th in Amsterdam
    example["issued_at"] = "2026-11-24T23:55:00+01:00"
    example["period"]["start_date"] = "2026-11-25"
    assert parse_request(definition, example, now=signed, signed_at=signed).issued_at == signed


def test_start_before_the_issue_date_is_a_field_error(
    definition: forms.FormDefinition, example: dict
) -> None:
    example["issued_at"] = "now"
    example["period"]["start_date"] = "today-1d"
    assert ("period.start_date", "period.start_before_issue") in codes_of(definition, example)
