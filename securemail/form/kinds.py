"""Every kind of request as one shape for the message pipeline: parse by ``form_id``.

Owns the choice of document per form: the execution request keeps its typed
``ExecutionRequest``; any other form (the care request, aanmelding wijkverpleging) is a
``FormDocument``, the validated values of its definition as they are signed. Both offer
what the pipeline (seal, outbox, audit, retention, deadlines, answer, passing on) reads:
reference, kind, urgency, supersedes, the patient's BSN, the receiving team, the
reserved lines' supervision and the canonical JSON. Adding a kind is a definition
folder and its templates, not a new path through the exchange.

Invariant: a ``FormDocument`` made by ``parse_document`` passed every field check and
the rule set its definition names; one made by ``document_from`` (a stored or received
document) passed the shape check of the header the pipeline relies on.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from securemail.form.care import REQUEST_RULES
from securemail.form.definition import FormDefinition
from securemail.form.request import (
    DocumentInvalidError,
    ExecutionRequest,
    parse_request,
    validate_request,
)

EXECUTION_REQUEST = "uitvoeringsverzoek"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass(frozen=True, slots=True)
class ReservedLine:
    """What the pipeline reads of one reserved-procedure line."""

    code: str
    supervision_arranged: bool


@dataclass(frozen=True, slots=True, eq=False)
class FormDocument:
    """A validated request of a declarative form other than the execution request."""

    document: Mapping[str, Any]  # JSON types only, read-only

    @property
    def form_id(self) -> str:
        return str(self.document["form_id"])

    @property
    def form_version(self) -> str:
        return str(self.document["form_version"])

    @property
    def reference(self) -> str | None:
        ref = self.document.get("reference")
        return ref if isinstance(ref, str) else None

    @property
    def supersedes(self) -> str | None:
        ref = self.document.get("supersedes")
        return ref if isinstance(ref, str) else None

    @property
    def kind(self) -> str:
        return str(self.document["kind"])

    @property
    def urgency(self) -> str:
        return str(self.document["urgency"])

    @property
    def patient_bsn(self) -> str:
        return str(self.document["patient"]["bsn"])

    @property
    def team_address(self) -> str:
        return str(self.document["receiver"]["team_address"])

    @property
    def procedures(self) -> tuple[ReservedLine, ...]:
        """The reserved-procedure lines only (a Wet BIG order); risky lines are not here."""
        lines = self.document.get("procedures") or ()
        return tuple(
            ReservedLine(str(p.get("code")), p.get("supervision_arranged") is True) for p in lines
        )

    @property
    def supervision_arranged(self) -> bool:
        return all(p.supervision_arranged for p in self.procedures)

    def to_document(self) -> dict[str, Any]:
        return copy.deepcopy(_thaw(self.document))

    def canonical_json(self) -> bytes:
        """Sorted keys, compact, UTF-8 without escapes: the exact bytes that get signed."""
        return json.dumps(
            _thaw(self.document),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")

    def with_reference(self, reference: str) -> FormDocument:
        return FormDocument(_freeze({**_thaw(self.document), "reference": reference}))

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> FormDocument:
        """Rebuild from ``to_document()`` output; checks the header's shape only."""
        if not isinstance(document, Mapping):
            raise DocumentInvalidError("document is not an object", field="")
        for key in ("form_id", "form_version", "kind", "urgency"):
            if not isinstance(document.get(key), str):
                raise DocumentInvalidError(f"{key} is missing", field=key)
        for section, key in (("patient", "bsn"), ("receiver", "team_address")):
            part = document.get(section)
            if not isinstance(part, Mapping) or not isinstance(part.get(key), str):
                raise DocumentInvalidError(f"{section}.{key} is missing", field=section)
        lines = document.get("procedures")
        if lines is not None and not (
            isinstance(lines, list | tuple) and all(isinstance(p, Mapping) for p in lines)
        ):
            raise DocumentInvalidError("procedures is not a list of objects", field="procedures")
        return cls(_freeze(_jsonable(document)))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


#: What the pipeline carries: the execution request or a declarative form's document.
RequestDocument = ExecutionRequest | FormDocument


def parse_document(
    definition: FormDefinition,
    data: Mapping[str, Any],
    *,
    now: datetime,
    reference: str | None = None,
    signed_at: datetime | None = None,
) -> RequestDocument:
    """``parse_request`` for any form: the execution request's typed parse, or the field
    checks plus the definition's rule set. ``signed_at``: the gateway's moment of signing,
    which becomes the request's date (check_issued) for every kind alike. Raises
    FormInvalidError listing every problem."""
    if definition.form_id == EXECUTION_REQUEST:
        return parse_request(definition, data, now=now, reference=reference, signed_at=signed_at)
    clean = validate_request(
        definition,
        data,
        now=now,
        reference=reference,
        signed_at=signed_at,
        rules=REQUEST_RULES[definition.rules],
    )
    return FormDocument.from_document(_jsonable(clean))


def document_from(document: Mapping[str, Any]) -> RequestDocument:
    """A stored or received document as its kind's class, chosen by its ``form_id``."""
    if not isinstance(document, Mapping):
        raise DocumentInvalidError("document is not an object", field="")
    if document.get("form_id", EXECUTION_REQUEST) == EXECUTION_REQUEST:
        return ExecutionRequest.from_document(document)
    return FormDocument.from_document(document)


__all__ = [
    "EXECUTION_REQUEST", "FormDocument", "RequestDocument", "ReservedLine", "document_from",
    "parse_document",
]  # fmt: skip
