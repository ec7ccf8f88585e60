"""One field of a form: its value read, normalised and limited as its spec declares.

Owns the typed reading of a single value (text, enum, bool, date, datetime, number,
object, list), the normalisers and checks a definition may name (postcode, BSN
elfproef, phone, e-mail) and the FieldError it reports.

Invariant: reading never raises on bad input and never stops at the first problem:
every problem becomes a ``FieldError`` with a dotted path, a stable code and a Dutch
and an English text from the definition's catalogue. No message and no path carries
an entered value (unknown keys that are not plain identifiers show as ``?``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from securemail.errors import InputError

if TYPE_CHECKING:
    from securemail.form.spec import FieldSpec, FormDefinition

#: HIS clocks drift; a request stamped a few minutes ahead of ours is not "in the future".
CLOCK_SKEW = timedelta(minutes=5)

#: Codes this module can emit; the definition must carry a message for each.
FIELD_CODES = frozenset(
    {
        "required", "field.unknown", "type.string", "type.bool", "type.number",
        "type.object", "type.list", "text.too_short", "text.too_long",
        "text.invalid_characters", "enum.invalid", "procedure.unknown",
        "procedure.not_reserved", "date.invalid", "date.future", "date.too_early",
        "datetime.invalid", "datetime.future", "number.invalid", "number.too_small",
        "number.too_large", "number.precision", "list.too_short", "list.too_long",
        "bsn.elfproef", "phone.invalid", "email.invalid",
    }
)  # fmt: skip


class _Invalid:
    """Marks a value that was present but wrong, so cross-field rules neither trust nor
    mistake it for "absent" (which would add a second, misleading error)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

_FORBIDDEN = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0/C1 controls; tab and newline are decided per type
    "\ud800-\udfff"  # lone surrogates: cannot even be encoded for signing
    "\u202a-\u202e\u2066-\u2069"  # bidi overrides: make a name read otherwise than stored
    "\u2028\u2029"  # line and paragraph separators
    "\ufdd0-\ufdef\ufffe\uffff"  # non-characters
)
_BAD_TEXT = re.compile(f"[{_FORBIDDEN}]")
_BAD_LINE = re.compile(f"[{_FORBIDDEN}\n\t]")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_DATE_ISO = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_DATE_NL = re.compile(r"^([0-9]{2})-([0-9]{2})-([0-9]{4})$")
# Templates and practice systems (examples/, the demo) write dates relative to the day they are
# used: "today", "today+6m", "today-2d". Resolved here against the validation's own clock,
# so what is signed is always an absolute date. At most four digits: O(1) work whatever is sent.
_DATE_RELATIVE = re.compile(r"^today(?:([+-])([0-9]{1,4})([dwm]))?$")
_DATETIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?$"
)
_NUMBER = re.compile(r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$")
_PHONE_NL = re.compile(r"^0[1-9][0-9]{8}$|^0[89]0[0-9][0-9]{4,7}$")
_PHONE_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_EMAIL = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)


def is_valid_bsn(value: str) -> bool:
    """True for 9 digits passing the 11-test (elfproef); never raises.

    The test: sum(d_i * (9 - i)) for i in 0..7, minus the last digit, is divisible
    by 11; 000000000 passes the arithmetic but is no BSN.
    """
    if not isinstance(value, str) or len(value) != 9 or not value.isascii():
        return False
    if not value.isdigit() or value == "000000000":
        return False
    digits = [int(c) for c in value]
    return (sum(d * (9 - i) for i, d in enumerate(digits[:8])) - digits[8]) % 11 == 0


def _postcode(value: str) -> str:
    compact = re.sub(r"\s+", "", value).upper()
    return f"{compact[:4]} {compact[4:]}" if re.fullmatch(r"[0-9]{4}[A-Z]{2}", compact) else value


def _phone(value: str) -> str | None:
    # "+31 (0)20 ..." is a common way of writing the same number; the (0) is not dialled.
    compact = re.sub(r"[\s\-().]", "", value.replace("(0)", ""))
    return (
        None if _PHONE_NL.fullmatch(compact) or _PHONE_E164.fullmatch(compact) else "phone.invalid"
    )


NORMALISERS: dict[str, Callable[[str], str]] = {
    "compact": lambda s: re.sub(r"[\s.\-]", "", s),
    "upper": str.upper,
    "lower": str.lower,
    "postcode": _postcode,
}
CHECKS: dict[str, Callable[[str], str | None]] = {
    "elfproef": lambda s: None if is_valid_bsn(s) else "bsn.elfproef",
    "phone": _phone,
    "email": lambda s: None if _EMAIL.fullmatch(s) else "email.invalid",
}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field: where, a stable code, and what to tell a person."""

    field: str
    code: str
    message_nl: str
    message_en: str

    def as_dict(self) -> dict[str, str]:
        return {
            "field": self.field,
            "code": self.code,
            "message_nl": self.message_nl,
            "message_en": self.message_en,
        }


class Report:
    """Collects every FieldError of one validation run."""

    def __init__(self, definition: FormDefinition, now: datetime | None = None) -> None:
        self.definition = definition
        self.now = now
        # "Today" is the form's local date: a birth just after midnight is not in the future.
        self.today = now.astimezone(definition.timezone).date() if now else None
        self.errors: list[FieldError] = []

    def add(self, path: str, code: str, **params: object) -> None:
        msg = self.definition.message(code, params)
        self.errors.append(FieldError(path, code, msg.nl, msg.en))


def join(path: str, key: object) -> str:
    part = key if isinstance(key, str) and _SAFE_KEY.fullmatch(key) else "?"
    return f"{path}.{part}" if path else part


def _absent(value: Any, depth: int = 0, group: bool = True) -> bool:
    """None, blank text, an empty list, or a group with nothing filled in (web forms post
    every input, so an untouched medication block arrives as empty strings). A mapping
    where a value is expected is not "absent" but the wrong type."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple):
        return not value
    if isinstance(value, Mapping) and group and depth < 4:
        return all(v is False or _absent(v, depth + 1) for v in value.values())
    return False


def is_blank(value: Any) -> bool:
    """Nothing filled in: absent, or False (an unticked box); used to drop empty form rows."""
    return value is False or _absent(value)


def validate(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    """The clean value of one field (None when absent, INVALID when wrong), errors reported."""
    if _absent(value, group=spec.type == "object"):
        if spec.type == "object" and spec.required == "Y":
            # Name each missing field, so a form can show the error where it belongs.
            return _object(spec, {}, path, report)
        if spec.must_be_true:
            report.add(path, spec.error or "required")
        elif spec.required == "Y":
            report.add(path, "required")
        return None
    return _READERS[spec.type](spec, value, path, report)


def _object(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    if not isinstance(value, Mapping):
        report.add(path, "type.object")
        return INVALID
    for key in value:
        if not isinstance(key, str) or spec.child(key) is None:
            report.add(join(path, key), "field.unknown")
    return {f.id: validate(f, value.get(f.id), join(path, f.id), report) for f in spec.fields}


def _list(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    if not isinstance(value, list | tuple):
        report.add(path, "type.list")
        return INVALID
    if spec.max_items is not None and len(value) > spec.max_items:
        report.add(path, "list.too_long", max_items=spec.max_items)
        return INVALID
    if spec.min_items is not None and len(value) < spec.min_items:
        report.add(path, "list.too_short", min_items=spec.min_items)
    items: list[Any] = []
    for i, item in enumerate(value):
        if _absent(item):
            report.add(join(path, str(i)), "required")
            items.append(None)
        else:
            items.append(_object(spec, item, join(path, str(i)), report))
    return items


def clean_text(value: str, *, multiline: bool, max_length: int) -> tuple[str, str | None]:
    """The one text policy for free text a person types, in the form, an answer or an ask:
    NFC, line ends as "\\n" (multi-line text only), trimmed; no control, bidi-override or
    separator characters (a tab or newline only where ``multiline``); at most
    ``max_length`` characters. Returns the clean text and None, or the text and an error
    code (``text.too_long``, ``text.invalid_characters``). O(len(value)), bounded first."""
    if len(value) > 4 * max_length + 64:  # no point normalising megabytes that cannot fit
        return value, "text.too_long"
    text = unicodedata.normalize("NFC", value)
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.strip()
    if (_BAD_TEXT if multiline else _BAD_LINE).search(text):
        return text, "text.invalid_characters"
    if len(text) > max_length:
        return text, "text.too_long"
    return text, None


class TextInputError(InputError):
    """A free text outside a form (an admin's, directory, region-map or consent-register
    input) that breaks the one text policy (``clean_text``); names the field, never the
    text."""

    code = "input.text"
    nl = (
        "Ongeldige tekst bij {field}: gebruik geen stuur- of richtingstekens en hoogstens "
        "{max_length} tekens."
    )


def require_text(
    field: str, value: object, *, max_length: int, multiline: bool = False, required: bool = False
) -> str:
    """``value`` cleaned by the one text policy (``clean_text``), or TextInputError naming
    ``field`` (English reason for logs and the CLI, Dutch for the UI). The one gate for
    free text that does not come through a form definition; callers check before writing."""
    text = "" if value is None else value
    if not isinstance(text, str):
        raise TextInputError(f"{field} must be text", field=field, max_length=max_length)
    text, problem = clean_text(text, multiline=multiline, max_length=max_length)
    if problem == "text.too_long":
        raise TextInputError(
            f"{field} is longer than {max_length} characters", field=field, max_length=max_length
        )
    if problem:
        lines = "" if multiline else ", a line break"
        raise TextInputError(
            f"{field} contains a control character{lines}, a bidi override or another "
            "character that is not allowed",
            field=field,
            max_length=max_length,
        )
    if required and not text:
        raise InputError(f"{field} is required", field=field)
    return text


def _text(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    if not isinstance(value, str):
        report.add(path, "type.string")
        return INVALID
    limit = spec.max_length or 0
    if len(value) > 4 * limit + 64:  # no point normalising megabytes that cannot fit
        report.add(path, "text.too_long", max_length=limit)
        return INVALID
    text = unicodedata.normalize("NFC", value)
    if spec.type == "text":
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.strip()
    for name in spec.normalise:
        text = NORMALISERS[name](text)
    if (_BAD_TEXT if spec.type == "text" else _BAD_LINE).search(text):
        report.add(path, "text.invalid_characters")
        return INVALID
    if spec.min_length is not None and len(text) < spec.min_length:
        report.add(path, "text.too_short", min_length=spec.min_length)
        return INVALID
    if len(text) > limit:
        report.add(path, "text.too_long", max_length=limit)
        return INVALID
    if spec.pattern is not None and not spec.pattern.fullmatch(text):
        report.add(path, spec.error or "enum.invalid")
        return INVALID
    problem = CHECKS[spec.check](text) if spec.check else None
    if problem:
        report.add(path, problem)
        return INVALID
    return text


def _enum(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    choice = value.strip() if isinstance(value, str) else None
    if choice is not None and any(o.value == choice for o in spec.options):
        return choice
    code = "enum.invalid"
    if spec.options_from == "procedures" and choice is not None:
        known = choice in report.definition.not_reserved
        code = "procedure.not_reserved" if known else "procedure.unknown"
    elif spec.options_from == "not_reserved" and choice in report.definition.procedures:
        code = "procedure.reserved"  # only forms whose rules know it offer this source
    report.add(path, code)
    return INVALID


def _bool(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    if not isinstance(value, bool):
        report.add(path, "type.bool")
        return INVALID
    if spec.must_be_true and not value:
        report.add(path, spec.error or "required")
    return value


def _add_months(day: date, months: int) -> date:
    """The same day of the month `months` later (or earlier), at the month's end if shorter."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    first_of_next = date(year + (month == 11), (month + 1) % 12 + 1, 1)
    return date(year, month + 1, min(day.day, (first_of_next - timedelta(days=1)).day))


def relative_date(text: str, today: date) -> date | None:
    """What a relative date ("today", "today+6m", "today-2d") means on `today`; None for any
    other text. Raises ValueError or OverflowError where the result is no date."""
    match = _DATE_RELATIVE.fullmatch(text)
    return None if match is None else _relative_day(match, today, "")


def _relative_day(match: re.Match[str], today: date | None, path: str) -> date:
    if today is None:  # validated without a clock: nothing to be relative to
        raise ValueError(path)
    if match[1] is None:
        return today
    amount = int(match[2]) * (1 if match[1] == "+" else -1)
    if match[3] == "m":
        return _add_months(today, amount)
    return today + timedelta(days=amount * (7 if match[3] == "w" else 1))


def _date(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    text = value.strip() if isinstance(value, str) else ""
    iso, nl = _DATE_ISO.fullmatch(text), _DATE_NL.fullmatch(text)
    relative = _DATE_RELATIVE.fullmatch(text)
    try:
        if iso:
            day = date(int(iso[1]), int(iso[2]), int(iso[3]))
        elif nl:
            day = date(int(nl[3]), int(nl[2]), int(nl[1]))
        elif relative:
            day = _relative_day(relative, report.today, path)
        else:
            raise ValueError(path)
    except (ValueError, OverflowError):
        report.add(path, "date.invalid")
        return INVALID
    if spec.min_date is not None and day < spec.min_date:
        report.add(path, "date.too_early", min_date=spec.min_date.strftime("%d-%m-%Y"))
        return INVALID
    if spec.not_future and report.today is not None and day > report.today:
        report.add(path, "date.future")
        return INVALID
    return day


def _datetime(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    text = value.strip() if isinstance(value, str) else ""
    try:
        if text == "now" and report.now is not None:  # a template's "at the moment of use"
            return report.now.astimezone(report.definition.timezone).replace(microsecond=0)
        if not _DATETIME.fullmatch(text):
            raise ValueError(path)
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            # A web form's datetime-local has no offset: it is wall-clock time where the form
            # is used. Reading it as the server's UTC would put it an hour or two off.
            moment = moment.replace(tzinfo=report.definition.timezone)
        if spec.min_date is not None and moment.date() < spec.min_date:
            report.add(path, "date.too_early", min_date=spec.min_date.strftime("%d-%m-%Y"))
            return INVALID
        if spec.not_future and report.now is not None and moment > report.now + CLOCK_SKEW:
            report.add(path, "datetime.future")
            return INVALID
    except (ValueError, OverflowError):
        report.add(path, "datetime.invalid")
        return INVALID
    return moment


def _number(spec: FieldSpec, value: Any, path: str, report: Report) -> Any:
    number: Decimal | None = None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        report.add(path, "type.number")
        return INVALID
    if isinstance(value, int) and spec.max_value is not None and abs(value) > spec.max_value:
        # huge ints: out of range either way, so skip a costly conversion
        number = Decimal(spec.max_value + 1 if value > 0 else -spec.max_value - 1)
    elif isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if text.count(",") == 1 and "." not in text:  # Dutch decimal comma: 2,5
            text = text.replace(",", ".")
        number = Decimal(text) if _NUMBER.fullmatch(text) else None
    if number is None or not number.is_finite():
        report.add(path, "number.invalid")
        return INVALID
    if spec.exclusive_min is not None and number <= spec.exclusive_min:
        report.add(path, "number.too_small", exclusive_min=spec.exclusive_min)
        return INVALID
    if spec.max_value is not None and number > spec.max_value:
        report.add(path, "number.too_large", max_value=spec.max_value)
        return INVALID
    try:
        number = number.normalize()
        exponent = number.as_tuple().exponent
        decimals = -exponent if isinstance(exponent, int) else 0
        if spec.max_decimals is not None and decimals > spec.max_decimals:
            report.add(path, "number.precision", max_decimals=spec.max_decimals)
            return INVALID
        return number.quantize(Decimal(1)) if number == number.to_integral_value() else number
    except InvalidOperation:
        report.add(path, "number.invalid")
        return INVALID


_READERS: dict[str, Callable[[FieldSpec, Any, str, Report], Any]] = {
    "object": _object,
    "list": _list,
    "str": _text,
    "text": _text,
    "enum": _enum,
    "bool": _bool,
    "date": _date,
    "datetime": _datetime,
    "number": _number,
}
