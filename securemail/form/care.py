"""The cross-field rules of the care request (aanmelding wijkverpleging), and the table
that names each form's rule set.

Owns what relates the care request's parts: reserved-procedure lines follow the execution
request's own rules (one signature covers both), and bring its period and instructions
with them; every procedure line is marked ``reserved`` true or false, so the signed JSON
says without our vocabulary which lines are a Wet BIG order and which are risky
procedures (risicovolle handelingen) that carry the GP's instructions only.

Invariant: like securemail.form.rules, these run on values that passed their own field
checks, report through the same ``Report`` and never raise on bad input; a definition
names its rule set, and its catalogue must hold a message for each code of that set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from securemail.form.fields import Report
from securemail.form.rules import check_request

#: Codes only the care request's rules (and its not-reserved vocabulary) emit.
CARE_CODES = frozenset({"procedure.reserved", "care.period_required", "care.instructions_required"})


def check_care(clean: dict[str, Any], report: Report) -> None:
    """The care request's rules: the execution request's rules for its reserved lines, a
    period and instructions when there are reserved lines, and the reserved flag per line."""
    check_request(clean, report)
    reserved = clean.get("procedures")
    listed = reserved if isinstance(reserved, list) else []
    reserved_lines = [p for p in listed if isinstance(p, dict)]
    for line in reserved_lines:
        line["reserved"] = True
    risky = clean.get("risky_procedures")
    for line in risky if isinstance(risky, list) else ():
        if isinstance(line, dict):
            line["reserved"] = False
    if reserved_lines:
        if clean.get("period") is None:
            report.add("period.start_date", "care.period_required")
        if clean.get("instructions") is None:
            report.add("instructions.contact_when", "care.instructions_required")


RuleSet = Callable[[dict[str, Any], Report], None]

#: Each form's cross-field rules and the extra codes its catalogue must hold.
REQUEST_RULES: dict[str, RuleSet] = {
    "uitvoeringsverzoek": check_request,
    "aanmelding_wijkverpleging": check_care,
}
RULE_SETS: dict[str, frozenset[str]] = {
    "uitvoeringsverzoek": frozenset(),
    "aanmelding_wijkverpleging": CARE_CODES,
}
