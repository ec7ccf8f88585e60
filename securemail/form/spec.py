"""Form specs: the frozen shapes a checked ``definition.json`` is read into (FieldSpec,
FormDefinition, options, messages, the procedure vocabulary), and nothing that reads or
checks them, so the field validators (``fields``) can name these types without importing
the loader (``definition``), which imports the validators to check a definition.

Invariant: these are values only; a ``FormDefinition`` is made by
``securemail.form.definition`` alone, after every structural check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from securemail.errors import ConfigError

FIELD_TYPES = frozenset(
    {"str", "text", "enum", "bool", "date", "datetime", "number", "object", "list"}
)
REQUIRED_FLAGS = frozenset({"Y", "N", "C"})
OPTION_SOURCES = frozenset({"procedures", "categories", "not_reserved"})
_FIELD_KEYS = frozenset(
    {
        "id", "type", "required", "label", "help", "rule", "options", "options_from",
        "max_length", "min_length", "pattern", "error", "normalise", "check", "min_date",
        "not_future", "exclusive_min", "max_value", "max_decimals", "must_be_true",
        "fields", "min_items", "max_items", "item_label",
    }
)  # fmt: skip
_SCALAR_TYPES: dict[str, type] = {
    **dict.fromkeys(("label", "help", "rule", "error", "check", "item_label", "options_from"), str),
    **dict.fromkeys(("max_length", "min_length", "exclusive_min", "max_value"), int),
    **dict.fromkeys(("max_decimals", "min_items", "max_items"), int),
    **dict.fromkeys(("not_future", "must_be_true"), bool),
}
_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: A request kind's reference prefix: three capitals; ASK is the nurse's asks' own.
_PREFIX = re.compile(r"^(?!ASK$)[A-Z]{3}$")


class FormDefinitionError(ConfigError):
    """The definition file is broken; the form stays unavailable rather than half-checked."""

    code = "form.definition_invalid"
    nl = "De formulierdefinitie is ongeldig: {where}."


@dataclass(frozen=True, slots=True)
class Option:
    value: str
    label: str


@dataclass(frozen=True, slots=True)
class Message:
    nl: str
    en: str


@dataclass(frozen=True, slots=True)
class ProcedureType:
    """One entry of the vocabulary of reserved procedures."""

    code: str
    label: str
    category: str | None
    functionally_independent: bool
    medication_required: bool
    route: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class FieldSpec:
    """One field (or section: an object or list field) of a form."""

    id: str
    type: str
    required: str
    label: str
    help: str = ""
    rule: str = ""
    options: tuple[Option, ...] = ()
    options_from: str | None = None
    max_length: int | None = None
    min_length: int | None = None
    pattern: re.Pattern[str] | None = None
    error: str | None = None
    normalise: tuple[str, ...] = ()
    check: str | None = None
    min_date: date | None = None
    not_future: bool = False
    exclusive_min: int | None = None
    max_value: int | None = None
    max_decimals: int | None = None
    must_be_true: bool = False
    fields: tuple[FieldSpec, ...] = ()
    min_items: int | None = None
    max_items: int | None = None
    item_label: str = ""

    def child(self, field_id: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.id == field_id), None)

    def option_label(self, value: str) -> str:
        return next((o.label for o in self.options if o.value == value), value)


@dataclass(frozen=True, slots=True, eq=False)
class FormDefinition:
    """A loaded form: ``request`` and ``answer`` are the two root object specs."""

    form_id: str
    version: str
    title: str
    description: str
    path: Path
    timezone: ZoneInfo
    request: FieldSpec
    answer: FieldSpec
    procedures: Mapping[str, ProcedureType]
    not_reserved: Mapping[str, str]
    categories: Mapping[str, str]
    messages: Mapping[str, Message]
    #: The file as read, deep read-only (Mapping / tuple), for templates that walk it.
    raw: Mapping[str, Any]
    #: Which cross-field rules apply (securemail.form.care.RULE_SETS).
    rules: str = "uitvoeringsverzoek"
    #: The kind's references: UVZ-2026-000123 (execution request), AWV-... (care request).
    reference_prefix: str = "UVZ"
    #: The neutral words before the reference in a Subject ("Uitvoeringsverzoek").
    subject: str = "Uitvoeringsverzoek"
    #: What the kind carries, for the consent register and the audit trail
    #: (securemail.consent DATA_CATEGORIES): execution_request, care_request.
    data_category: str = "execution_request"

    @property
    def template_dir(self) -> Path:
        return self.path / "templates"

    def spec(self, path: str, root: str = "request") -> FieldSpec | None:
        """The spec at a dotted path such as ``procedures.0.medication.route`` (indexes skipped)."""
        spec: FieldSpec | None = self.answer if root == "answer" else self.request
        for part in path.split(".") if path else ():
            if spec is None or part.isdigit():
                continue
            spec = spec.child(part)
        return spec

    def message(self, code: str, params: Mapping[str, object]) -> Message:
        msg = self.messages[code]
        try:
            return Message(msg.nl.format(**params), msg.en.format(**params))
        except (KeyError, IndexError, ValueError):
            return msg

    def procedure_label(self, code: str) -> str:
        known = self.procedures.get(code)
        return known.label if known else self.not_reserved.get(code, code)
