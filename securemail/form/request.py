"""The execution request as data: parse a submission into an ExecutionRequest or a FormInvalidError.

Owns the public form API: ``parse_request`` and ``parse_answer`` (untrusted input,
JSON-like nested dicts), ``parse_form_post`` and ``flatten`` (the web form's flat
names), and the frozen ``ExecutionRequest`` / ``TeamAnswer`` with their canonical
JSON, which is what the GP signs.

Invariant: an ``ExecutionRequest`` made by ``parse_request`` passed every rule of its
definition; a refusal lists every problem at once, and its reason names field paths
and codes only, never an entered value.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Self

from securemail.errors import SecuremailError
from securemail.form.definition import FieldSpec, FormDefinition, load_definition
from securemail.form.fields import (
    INVALID,
    FieldError,
    Report,
    is_blank,
    is_valid_bsn,
    join,
    validate,
)
from securemail.form.rules import check_answer, check_issued, check_request

__all__ = [
    "Consent", "DocumentInvalidError", "ExecutionRequest", "FieldError", "FormDefinition",
    "FormShapeError", "check_bounds", "list_limit",
    "FormInvalidError", "Instructions", "Medication", "Patient", "Period", "Principal",
    "Procedure", "Receiver", "TeamAnswer", "flatten", "is_valid_bsn", "load_definition",
    "parse_answer", "parse_form_post", "parse_request",
]  # fmt: skip

_REASON_LIMIT = 20  # keep log lines bounded when a robot posts garbage


class FormInvalidError(SecuremailError):
    """The submission broke one or more rules; ``errors`` lists every one of them."""

    code = "form.invalid"
    nl = (
        "Het formulier is niet juist ingevuld ({count} fout(en)). Controleer de gemarkeerde velden."
    )

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        listed = ", ".join(f"{e.field or '(form)'} ({e.code})" for e in errors[:_REASON_LIMIT])
        more = f" and {len(errors) - _REASON_LIMIT} more" if len(errors) > _REASON_LIMIT else ""
        super().__init__(f"form invalid: {listed}{more}", count=len(self.errors))

    def as_json(self) -> dict[str, Any]:
        out = super().as_json()
        out["errors"] = [e.as_dict() for e in self.errors]
        return out


class FormShapeError(FormInvalidError):
    """A submission with a shape no page of ours makes: more rows than the form allows, a
    row index that is no number. Refused before any work that grows with the attacker's
    numbers; ``data`` is the rest of the submission (the offending lists dropped), so a
    page can show it again with the errors."""

    def __init__(self, errors: Sequence[FieldError], data: dict[str, Any]) -> None:
        super().__init__(errors)
        self.data = data


#: Rows of a list field without its own max_items: no form of ours comes near it.
LIST_CAP = 100


def list_limit(spec: FieldSpec | None) -> int:
    """The most rows a list field may have: its definition's maximum, else LIST_CAP."""
    return spec.max_items if spec is not None and spec.max_items is not None else LIST_CAP


def check_bounds(
    definition: FormDefinition, data: Any, *, root: Literal["request", "answer"] = "request"
) -> dict[str, Any]:
    """``data`` (nested, untrusted: a page's hidden payload) with every list within its
    form's maximum, or FormShapeError. O(size of the form), whatever the lists hold."""
    if not isinstance(data, Mapping):
        raise FormShapeError([], {})
    report = Report(definition)
    spec = definition.answer if root == "answer" else definition.request
    clean = _bounded(spec, dict(data), "", report)
    if report.errors:
        raise FormShapeError(report.errors, clean)
    return clean


def _bounded(spec: FieldSpec, node: dict[str, Any], path: str, report: Report) -> dict[str, Any]:
    out = dict(node)
    for child in spec.fields:
        value = out.get(child.id)
        where = f"{path}.{child.id}" if path else child.id
        if child.type == "list" and isinstance(value, list | tuple):
            if len(value) > list_limit(child):
                report.add(where, "list.too_long", max_items=list_limit(child))
                out.pop(child.id)
        elif child.type == "object" and isinstance(value, Mapping):
            out[child.id] = _bounded(child, dict(value), where, report)
    return out


class DocumentInvalidError(SecuremailError):
    """A stored or received document does not have the shape of the dataclasses."""

    code = "form.document_invalid"
    nl = "Het document heeft niet de vorm van een uitvoeringsverzoek of reactie."


class _Document:
    """Conversion between the frozen dataclasses and their JSON documents."""

    __slots__ = ()

    def to_document(self) -> dict[str, Any]:
        """The canonical dict: JSON types only, every field present (absent ones as null)."""
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def canonical_json(self) -> bytes:
        """Sorted keys, compact, UTF-8 without escapes: the exact bytes that get signed."""
        return json.dumps(
            self.to_document(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Self:
        """Rebuild from ``to_document()`` output. Checks shape only, not the form's rules:
        run untrusted input through ``parse_request`` / ``parse_answer`` instead."""
        built: Self = _build(cls, document, "")
        return built


def _dump(value: Any) -> Any:
    if isinstance(value, _Document):
        return value.to_document()
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        # Our numbers have at most 3 decimals and 9 digits, so a float round-trips exactly.
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise DocumentInvalidError(f"{path or 'document'} is not an object", field=path)
    names = {f.name for f in dataclasses.fields(cls)}
    if any(k not in names for k in data):
        raise DocumentInvalidError(f"unknown key under {path or 'document'}", field=path)
    kwargs = {}
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        kind = str(f.type).removesuffix(" | None")  # annotations are strings here
        value = data.get(f.name)
        if value is None and f.default is MISSING and kind != "bool":
            raise DocumentInvalidError(f"{where} is missing", field=where)
        try:
            kwargs[f.name] = _load(kind, value, where)
        except (TypeError, ValueError, InvalidOperation, OverflowError):
            raise DocumentInvalidError(f"{where} has the wrong type", field=where) from None
    return cls(**kwargs)


def _load(kind: str, value: Any, where: str) -> Any:
    if kind == "bool":
        if value is None or isinstance(value, bool):
            return bool(value)
        raise TypeError(where)
    if value is None:
        return None
    if kind in _SECTIONS:
        return _build(_SECTIONS[kind], value, where)
    if kind == "tuple[Procedure, ...]":
        if not isinstance(value, list | tuple):
            raise TypeError(where)
        return tuple(_build(Procedure, item, f"{where}.{i}") for i, item in enumerate(value))
    if kind == "date":
        return value if type(value) is date else date.fromisoformat(value)
    if kind == "datetime":
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError(where)
        return moment
    if kind == "Decimal":
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise TypeError(where)
        return Decimal(repr(value) if isinstance(value, float) else value)
    if kind != "str" or not isinstance(value, str):
        raise TypeError(where)
    return value


@dataclass(frozen=True, slots=True)
class Patient(_Document):
    bsn: str
    name: str
    birth_date: date
    address: str
    postcode: str
    city: str
    gender: str | None = None
    phone: str | None = None
    representative: str | None = None


@dataclass(frozen=True, slots=True)
class Principal(_Document):
    name: str
    role: str
    big: str
    practice_name: str
    phone: str
    out_of_hours_phone: str
    agb: str | None = None
    practice_agb: str | None = None
    reachability_note: str | None = None


@dataclass(frozen=True, slots=True)
class Receiver(_Document):
    team_address: str


@dataclass(frozen=True, slots=True)
class Medication(_Document):
    name: str
    dose_value: Decimal
    dose_unit: str
    route: str
    as_needed: bool = False
    as_needed_condition: str | None = None
    max_per_24h: Decimal | None = None
    preauthorised_change: str | None = None


@dataclass(frozen=True, slots=True)
class Procedure(_Document):
    code: str
    indication: str
    schedule: str
    category: str | None = None
    description: str | None = None
    body_site: str | None = None
    device: str | None = None
    supervision_arranged: bool = False
    medication: Medication | None = None


@dataclass(frozen=True, slots=True)
class Period(_Document):
    start_date: date
    end_date: date | None = None
    until_further_notice: bool = False
    evaluation_date: date | None = None


@dataclass(frozen=True, slots=True)
class Instructions(_Document):
    contact_when: str
    instructions: str | None = None
    side_effects: str | None = None


@dataclass(frozen=True, slots=True)
class Consent(_Document):
    treatment_consent: bool
    consent_by: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionRequest(_Document):
    """A validated execution request; ``reference`` is None until the gateway assigns one."""

    form_id: str
    form_version: str
    kind: str
    urgency: str
    issued_at: datetime
    patient: Patient
    principal: Principal
    receiver: Receiver
    procedures: tuple[Procedure, ...]
    period: Period
    instructions: Instructions
    consent: Consent
    reference: str | None = None
    supersedes: str | None = None

    @property
    def patient_bsn(self) -> str:
        return self.patient.bsn

    @property
    def team_address(self) -> str:
        return self.receiver.team_address

    @property
    def supervision_arranged(self) -> bool:
        """True when every line has supervision and intervention arranged (see parse_answer)."""
        return all(p.supervision_arranged for p in self.procedures)

    def with_reference(self, reference: str) -> ExecutionRequest:
        return dataclasses.replace(self, reference=reference)


@dataclass(frozen=True, slots=True)
class TeamAnswer(_Document):
    """A validated answer of a nursing team to a request."""

    form_id: str
    form_version: str
    status: str
    nurse_in_charge: str | None = None
    nurse_phone: str | None = None
    nurse_reachability: str | None = None
    nurse_big: str | None = None
    care_start: datetime | None = None
    performer_level: str | None = None
    competence_confirmed: bool = False
    reason: str | None = None
    passed_to: str | None = None


_SECTIONS: dict[str, type] = {
    cls.__name__: cls
    for cls in (Patient, Principal, Receiver, Medication, Period, Instructions, Consent)
}


def _validate_root(definition: FormDefinition, spec: FieldSpec, data: Any, report: Report) -> Any:
    if not isinstance(data, Mapping):
        report.add("", "type.object")
        return None
    data = dict(data)
    expected = {"form_id": definition.form_id, "form_version": definition.version}
    for key, want in expected.items():
        given = data.pop(key, None)
        if given is not None and given != want:
            report.add(key, "form.mismatch", expected=f"{definition.form_id} {definition.version}")
    clean = validate(spec, data, "", report)
    return clean if isinstance(clean, dict) else None


def parse_request(
    definition: FormDefinition,
    data: Mapping[str, Any],
    *,
    now: datetime,
    reference: str | None = None,
    signed_at: datetime | None = None,
) -> ExecutionRequest:
    """Validate untrusted input (nested, JSON-like) against every rule of the form.

    ``now`` (timezone-aware) decides what "in the future" means; offset-less times are
    read in the form's time zone (Europe/Amsterdam). ``reference`` is the gateway's own;
    a different one in ``data`` is refused. ``signed_at`` is the gateway's moment of
    signing: it becomes ``issued_at`` (an absent one is filled in, a backdated one is
    refused, see ``check_issued``). Raises FormInvalidError listing every problem.
    """
    return ExecutionRequest.from_document(
        validate_request(
            definition, data, now=now, reference=reference, signed_at=signed_at, rules=check_request
        )
    )


def validate_request(
    definition: FormDefinition,
    data: Mapping[str, Any],
    *,
    now: datetime,
    reference: str | None,
    signed_at: datetime | None,
    rules: Callable[[dict[str, Any], Report], None],
) -> dict[str, Any]:
    """What every kind of request goes through (securemail.form.kinds too): the fields, the
    gateway's reference, the moment of signing, then the kind's own cross-field ``rules``.
    The validated values with the form's id and version, or FormInvalidError."""
    if now.utcoffset() is None or (signed_at is not None and signed_at.utcoffset() is None):
        raise ValueError("now and signed_at must be timezone-aware")
    if signed_at is not None and isinstance(data, Mapping) and is_blank(data.get("issued_at")):
        data = {**data, "issued_at": signed_at.isoformat()}
    ref_spec = definition.request.child("reference")
    if reference is not None and not (
        ref_spec and ref_spec.pattern and ref_spec.pattern.fullmatch(reference)
    ):
        raise ValueError("the gateway's reference does not match the form's pattern")
    report = Report(definition, now)
    clean = _validate_root(definition, definition.request, data, report)
    if clean is not None:
        given = clean.get("reference")
        if reference is not None and given not in (None, INVALID) and given != reference:
            report.add("reference", "reference.mismatch")
        clean["reference"] = reference if reference is not None else given
        if signed_at is not None:
            check_issued(clean, signed_at, report)
        rules(clean, report)
    if report.errors or clean is None:
        raise FormInvalidError(report.errors)
    return {**clean, "form_id": definition.form_id, "form_version": definition.version}


def parse_answer(
    definition: FormDefinition, data: Mapping[str, Any], *, supervision_arranged: bool = False
) -> TeamAnswer:
    """Validate a team's answer. ``supervision_arranged`` comes from the request answered
    (``ExecutionRequest.supervision_arranged``); without it a VIG may not accept.
    Whether ``passed_to`` is a known team is the caller's check."""
    report = Report(definition)
    clean = _validate_root(definition, definition.answer, data, report)
    if clean is not None:
        check_answer(clean, report, supervision_arranged=supervision_arranged)
    if report.errors or clean is None:
        raise FormInvalidError(report.errors)
    meta = {"form_id": definition.form_id, "form_version": definition.version}
    return TeamAnswer.from_document({**clean, **meta})


_TRUE = frozenset({"on", "true", "1", "ja", "yes"})
_FALSE = frozenset({"", "off", "false", "0", "nee", "no"})


def parse_form_post(
    definition: FormDefinition,
    form: Mapping[str, Any],
    *,
    root: Literal["request", "answer"] = "request",
    ignore: Collection[str] = (),
) -> dict[str, Any]:
    """Turn flat form names (``patient.bsn``, ``procedures.0.medication.dose_value``) into
    the nested layout ``parse_request`` takes. Checkboxes become booleans; list rows are
    renumbered in order with blank rows dropped; anything odd (a repeated name, a name
    that is both a value and a group) is kept in a shape the validator then refuses."""
    spec = definition.answer if root == "answer" else definition.request
    report = Report(definition)
    getall = getattr(form, "getall", None)
    tree: dict[str, Any] = {}
    for name in dict.fromkeys(form.keys()):
        if name in ignore:
            continue
        raw = form[name] if getall is None else getall(name)
        values = list(raw) if getall is not None or isinstance(raw, list) else [raw]
        parts = str(name).split(".")
        _insert(tree, parts, _leaf(definition.spec(str(name), root), values))
    shaped: dict[str, Any] = _shape(spec, tree, report)  # the root is an object: a dict
    if report.errors:
        raise FormShapeError(report.errors, shaped)
    return shaped


def _leaf(spec: FieldSpec | None, values: list[Any]) -> Any:
    words = [v.strip().lower() if isinstance(v, str) else None for v in values]
    if spec is not None and spec.type == "bool" and all(w in _TRUE | _FALSE for w in words):
        # A hidden "false" before the checkbox is a common pattern; any "on" wins.
        return any(w in _TRUE for w in words)
    return values[0] if len(values) == 1 else values


def _insert(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            # A name that is both a value and a group: park the value under "" (an unknown field).
            child = {} if child is None else {"": child}
            node[part] = child
        node = child
    if isinstance(node.get(parts[-1]), dict):
        node[parts[-1]][""] = value
    else:
        node[parts[-1]] = value


def _shape(spec: FieldSpec | None, node: Any, report: Report, path: str = "") -> Any:
    """Number the rows of list fields, in order, blank ones dropped. A list whose keys are
    not small row numbers, or that holds more rows than its form allows, is reported and
    dropped: no page of ours posts it, and rendering a row per index would hand an
    attacker the size of our work (the checks cost O(keys posted), never O(index))."""
    if spec is None or not isinstance(node, dict):
        return node
    if spec.type == "list":
        limit = list_limit(spec)
        numbered = all(k.isascii() and k.isdigit() and len(k) <= 6 for k in node)
        if not numbered:
            report.add(path, "type.list")
            return None
        if len(node) > limit or any(int(k) >= limit for k in node):
            report.add(path, "list.too_long", max_items=limit)
            return None
        rows = [_shape_row(spec, node[k], report, join(path, k)) for k in sorted(node, key=int)]
        return [row for row in rows if not is_blank(row)]
    if spec.type == "object":
        return _shape_row(spec, node, report, path)
    return node


def _shape_row(spec: FieldSpec, node: Any, report: Report, path: str) -> Any:
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        shaped = _shape(spec.child(k), v, report, join(path, k))
        if shaped is not None or v is None:
            out[k] = shaped
    return out


def flatten(data: Mapping[str, Any]) -> dict[str, str]:
    """Nested values -> flat form names and strings, to fill a form again. True becomes
    "on"; None and False are left out, as an unticked checkbox is."""
    out: dict[str, str] = {}
    _flatten_into(out, "", data, 0)
    return out


def _flatten_into(out: dict[str, str], prefix: str, value: Any, depth: int) -> None:
    if depth > 8:  # deeper than any form; only a crafted post gets here
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten_into(out, f"{prefix}.{key}" if prefix else str(key), item, depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _flatten_into(out, f"{prefix}.{i}", item, depth + 1)
    elif value is True:
        out[prefix] = "on"
    elif value is not None and value is not False and value is not INVALID:
        out[prefix] = value.isoformat() if isinstance(value, date) else str(value)
