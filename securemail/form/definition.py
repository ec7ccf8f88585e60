"""Form definitions: ``forms/<name>/definition.json`` read into frozen, checked specs.

Owns the declarative side of a form: its sections and fields (type, required Y/N/C,
Dutch label and help, options, limits, patterns), the procedure vocabulary, the
non-reserved procedures it refuses and its catalogue of error messages.

Invariant: a ``FormDefinition`` exists only for a file that passed every structural
check here (known types and keys, a length limit on every text field, a message for
every error code the rules can emit), so validators and templates can trust it
without checking again. Each (folder, name) is read once per process.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from securemail.form.care import RULE_SETS
from securemail.form.fields import CHECKS, NORMALISERS
from securemail.form.rules import ERROR_CODES
from securemail.form.spec import (
    _FIELD_KEYS,
    _ID,
    _PREFIX,
    _SCALAR_TYPES,
    FIELD_TYPES,
    OPTION_SOURCES,
    REQUIRED_FLAGS,
    FieldSpec,
    FormDefinition,
    FormDefinitionError,
    Message,
    Option,
    ProcedureType,
)

#: The loader's own names, and the specs it makes (securemail.form.spec), for callers that
#: think of "a form definition" as one thing.
__all__ = [
    "FieldSpec",
    "FormDefinition",
    "FormDefinitionError",
    "Message",
    "Option",
    "ProcedureType",
    "form_names",
    "load_definition",
]


def load_definition(forms_path: Path, name: str = "uitvoeringsverzoek") -> FormDefinition:
    """Read and check ``forms_path/name/definition.json``; cached, so each is read once."""
    if not _ID.fullmatch(name):
        raise FormDefinitionError(f"form name {name!r} is not an identifier", where="name")
    return _load(Path(forms_path).resolve(), name)


def form_names(forms_path: Path) -> tuple[str, ...]:
    """Every form under ``forms_path``: the folders with a definition.json, sorted."""
    root = Path(forms_path)
    if not root.is_dir():
        return ()
    names = (p.name for p in root.iterdir() if (p / "definition.json").is_file())
    return tuple(sorted(n for n in names if _ID.fullmatch(n)))


@functools.cache
def _load(forms_path: Path, name: str) -> FormDefinition:
    folder = forms_path / name
    try:
        raw = json.loads((folder / "definition.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormDefinitionError(
            f"cannot read {folder / 'definition.json'}: {exc}", where="definition.json"
        ) from None
    return _Reader(raw, folder).definition()


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class _Reader:
    """Turns the raw JSON into specs, refusing anything it does not understand."""

    def __init__(self, raw: Any, folder: Path) -> None:
        self.raw = raw if isinstance(raw, dict) else {}
        self.folder = folder
        self.used_codes: set[str] = set()
        self.sources: dict[str, tuple[Option, ...]] = {}

    def fail(self, where: str, what: str) -> FormDefinitionError:
        return FormDefinitionError(
            f"{self.folder.name}/definition.json {where}: {what}", where=where
        )

    def definition(self) -> FormDefinition:
        raw = self.raw
        for key in ("form_id", "version", "title", "timezone"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise self.fail(key, "missing or not text")
        try:
            # Times entered without an offset are wall-clock times where the form is used.
            zone = ZoneInfo(raw["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail("timezone", "unknown time zone") from None
        categories = {o.value: o.label for o in self.options(raw.get("categories"), "categories")}
        not_reserved = {
            o.value: o.label for o in self.options(raw.get("not_reserved"), "not_reserved")
        }
        procedures = self.procedures(raw.get("procedures"), categories)
        self.sources = {
            "procedures": tuple(Option(p.code, p.label) for p in procedures.values()),
            "categories": tuple(Option(k, v) for k, v in categories.items()),
            "not_reserved": tuple(Option(k, v) for k, v in not_reserved.items()),
        }
        messages = self.messages(raw.get("messages"))
        rules = raw.get("rules", "uitvoeringsverzoek")
        if rules not in RULE_SETS:
            raise self.fail("rules", f"unknown rule set (one of {sorted(RULE_SETS)})")
        prefix = raw.get("reference_prefix", "UVZ")
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise self.fail("reference_prefix", "must be three capitals (not ASK)")
        category = raw.get("data_category", "execution_request")
        if not isinstance(category, str) or not re.fullmatch(r"[a-z][a-z_]{1,40}", category):
            raise self.fail("data_category", "must be a consent data category (a-z and _)")
        subject = raw.get("subject", "Uitvoeringsverzoek")
        if not isinstance(subject, str) or not re.fullmatch(r"[A-Za-z ]{1,40}", subject):
            raise self.fail("subject", "must be 1-40 plain letters and spaces")
        request = self.field({"id": "request", "type": "object", "required": "Y",
                              **self.section(raw, "request")}, "request")  # fmt: skip
        answer = self.field({"id": "answer", "type": "object", "required": "Y",
                             **self.section(raw, "answer")}, "answer")  # fmt: skip
        missing = (ERROR_CODES | RULE_SETS[rules] | self.used_codes) - set(messages)
        if missing:
            raise self.fail("messages", f"no message for {sorted(missing)}")
        return FormDefinition(
            form_id=raw["form_id"],
            version=raw["version"],
            title=raw["title"],
            description=str(raw.get("description", "")),
            path=self.folder,
            timezone=zone,
            request=request,
            answer=answer,
            procedures=MappingProxyType(procedures),
            not_reserved=MappingProxyType(not_reserved),
            categories=MappingProxyType(categories),
            messages=MappingProxyType(messages),
            raw=_freeze(raw),
            rules=rules,
            reference_prefix=prefix,
            subject=subject,
            data_category=category,
        )

    def section(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        section = raw.get(key)
        if not isinstance(section, dict) or set(section) - {"label", "help", "fields"}:
            raise self.fail(key, "must be an object with label, help and fields")
        return section

    def options(self, raw: Any, where: str) -> list[Option]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "must be a non-empty list of {value, label}")
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) != {"value", "label"}:
                raise self.fail(f"{where}[{i}]", "must be {value, label}")
            if not all(isinstance(item[k], str) and item[k] for k in ("value", "label")):
                raise self.fail(f"{where}[{i}]", "value and label must be text")
            out.append(Option(item["value"], item["label"]))
        if len({o.value for o in out}) != len(out):
            raise self.fail(where, "duplicate values")
        return out

    def procedures(self, raw: Any, categories: dict[str, str]) -> dict[str, ProcedureType]:
        keys = {"code", "label", "category", "functionally_independent", "medication_required"}
        if not isinstance(raw, list) or not raw:
            raise self.fail("procedures", "must be a non-empty list")
        out: dict[str, ProcedureType] = {}
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not keys <= set(item) <= keys | {"route"}:
                raise self.fail(f"procedures[{i}]", f"needs exactly {sorted(keys)} (+ route)")
            try:
                proc = ProcedureType(**item)
            except TypeError as exc:
                raise self.fail(f"procedures[{i}]", str(exc)) from None
            if proc.category is not None and proc.category not in categories:
                raise self.fail(f"procedures[{i}]", f"unknown category {proc.category!r}")
            if proc.medication_required and proc.route not in {"sc", "im", "iv"}:
                raise self.fail(f"procedures[{i}]", "medication codes need a route")
            if proc.code in out:
                raise self.fail(f"procedures[{i}]", "duplicate code")
            out[proc.code] = proc
        if "OTHER" not in out:
            raise self.fail("procedures", "the vocabulary must offer OTHER")
        return out

    def messages(self, raw: Any) -> dict[str, Message]:
        if not isinstance(raw, dict):
            raise self.fail("messages", "must be an object")
        out = {}
        for code, msg in raw.items():
            if not isinstance(msg, dict) or set(msg) != {"nl", "en"}:
                raise self.fail(f"messages.{code}", "must be {nl, en}")
            out[code] = Message(str(msg["nl"]), str(msg["en"]))
        return out

    def field(self, raw: Any, where: str) -> FieldSpec:
        if not isinstance(raw, dict) or set(raw) - _FIELD_KEYS:
            extra = sorted(set(raw) - _FIELD_KEYS) if isinstance(raw, dict) else raw
            raise self.fail(where, f"unknown keys {extra}")
        kind, fid = raw.get("type"), raw.get("id")
        if not isinstance(fid, str) or not _ID.fullmatch(fid):
            raise self.fail(where, "id must be snake_case")
        if kind not in FIELD_TYPES or raw.get("required") not in REQUIRED_FLAGS:
            raise self.fail(where, "unknown type or required flag")
        if not isinstance(raw.get("label"), str) or not raw["label"]:
            raise self.fail(where, "label is required")
        if kind in {"str", "text"} and not isinstance(raw.get("max_length"), int):
            raise self.fail(where, "every text field needs max_length")
        if kind == "enum" and not (raw.get("options") or raw.get("options_from") in OPTION_SOURCES):
            raise self.fail(where, "enum needs options or options_from")
        if (kind in {"object", "list"}) != bool(raw.get("fields")):
            raise self.fail(where, "object and list fields (only) have fields")
        if set(raw.get("normalise", ())) - set(NORMALISERS) or raw.get("check", None) not in {
            None,
            *CHECKS,
        }:
            raise self.fail(where, "unknown normaliser or check")
        for key, value in raw.items():
            if key in _SCALAR_TYPES and not isinstance(value, _SCALAR_TYPES[key]):
                raise self.fail(f"{where}.{key}", f"must be {_SCALAR_TYPES[key].__name__}")
        if ("pattern" in raw or raw.get("must_be_true")) and not raw.get("error"):
            raise self.fail(where, "a pattern or must_be_true needs its own error code")
        if kind == "number" and not isinstance(raw.get("max_value"), int):
            raise self.fail(where, "every number field needs max_value")
        if raw.get("error"):
            self.used_codes.add(raw["error"])
        children = tuple(self.field(f, f"{where}.{i}") for i, f in enumerate(raw.get("fields", ())))
        if len({c.id for c in children}) != len(children):
            raise self.fail(where, "duplicate field ids")
        try:
            pattern = re.compile(raw["pattern"]) if "pattern" in raw else None
            min_date = date.fromisoformat(raw["min_date"]) if "min_date" in raw else None
        except (re.error, ValueError, TypeError) as exc:
            raise self.fail(where, str(exc)) from None
        if "options" in raw:
            options = tuple(self.options(raw["options"], where))
        else:
            options = self.sources.get(raw.get("options_from", ""), ())
        plain = {k: v for k, v in raw.items() if k not in {"fields", "options", "pattern",
                                                           "min_date", "normalise"}}  # fmt: skip
        return FieldSpec(
            **plain,
            fields=children,
            options=options,
            pattern=pattern,
            min_date=min_date,
            normalise=tuple(raw.get("normalise", ())),
        )
