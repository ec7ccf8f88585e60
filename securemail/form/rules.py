"""The brief's cross-field rules of the execution request and the team's answer.

Owns the rules that relate fields to each other: supersedes and kind, supervision
where the performer is not functionally independent, medication for injection and
pump codes, the period (end date or until further notice, evaluation within 12
months) and the answer's status rules.

Invariant: rules run on values that passed their own field checks (``INVALID`` and
absent values are left alone, so one mistake gives one error), report through the
same ``Report``, and never raise on bad input.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from securemail.form.fields import FIELD_CODES, INVALID, Report

#: Every code the form code can emit; the definition must carry a message for each.
ERROR_CODES = FIELD_CODES | frozenset(
    {
        "form.mismatch", "reference.mismatch", "date.before_start", "date.not_after_start",
        "supersedes.required", "supersedes.not_allowed", "procedure.description_required",
        "procedure.category_required", "procedure.category_mismatch",
        "procedure.supervision_required", "medication.required", "medication.route_mismatch",
        "medication.as_needed_condition_required", "period.end_required", "period.end_conflict",
        "period.evaluation_required", "period.evaluation_too_late",
        "answer.nurse_required", "answer.performer_required", "answer.vig_requires_supervision",
        "answer.competence_required", "answer.reason_required", "answer.passed_to_required",
        "answer.passed_to_not_allowed", "datetime.backdated", "period.start_before_issue",
        "answer.phone_required", "answer.care_start_required",
    }
)  # fmt: skip


def _present(value: Any) -> bool:
    return value is not None and value is not INVALID


def one_year_after(day: date) -> date:
    """The same day a year on; 29 February moves to the 28th."""
    if day.year >= date.max.year:
        return date.max
    try:
        return day.replace(year=day.year + 1)
    except ValueError:
        return day.replace(year=day.year + 1, day=28)


#: How far before the moment of signing a typed ``issued_at`` may lie on an earlier day: a
#: form opened at 23:55 and signed at 00:05 is not backdated.
BACKDATE_GRACE = timedelta(hours=1)


def check_issued(clean: dict[str, Any], signed_at: datetime, report: Report) -> None:
    """The request's date is the moment of signing, set by the gateway: a given date on an
    earlier day (beyond BACKDATE_GRACE) is refused as backdated, anything else is replaced
    by ``signed_at``, so what is signed never says an earlier or a later moment."""
    given = clean.get("issued_at")
    zone = report.definition.timezone
    if isinstance(given, datetime):
        earlier_day = given.astimezone(zone).date() < signed_at.astimezone(zone).date()
        if earlier_day and signed_at - given > BACKDATE_GRACE:
            report.add("issued_at", "datetime.backdated")
            return
    if given is not INVALID:
        # on the form's wall clock, to the second, as "now" reads (the Dutch calendar date)
        clean["issued_at"] = signed_at.astimezone(zone).replace(microsecond=0)


def check_request(clean: dict[str, Any], report: Report) -> None:
    """The brief's cross-field rules for a request, on values that passed their own checks.
    Also completes what follows from them: a line's category comes from its code."""
    kind, supersedes = clean.get("kind"), clean.get("supersedes")
    if kind == "nieuw" and _present(supersedes):
        report.add("supersedes", "supersedes.not_allowed")
    elif _present(kind) and kind != "nieuw" and supersedes is None:
        report.add("supersedes", "supersedes.required")
    procedures = clean.get("procedures")
    for i, line in enumerate(procedures if isinstance(procedures, list) else ()):
        if isinstance(line, dict):
            _check_procedure(line, f"procedures.{i}", report)
    period = clean.get("period")
    if isinstance(period, dict):
        _check_period(period, report)
        _check_start_after_issue(period, clean.get("issued_at"), report)


def _check_start_after_issue(period: dict[str, Any], issued: Any, report: Report) -> None:
    """An order cannot start before the day it was given (on the form's calendar)."""
    start = period["start_date"]
    if not (isinstance(start, date) and isinstance(issued, datetime)):
        return
    if start < issued.astimezone(report.definition.timezone).date():
        report.add("period.start_date", "period.start_before_issue")


def _check_procedure(line: dict[str, Any], path: str, report: Report) -> None:
    code = line["code"]
    known = report.definition.procedures.get(code) if isinstance(code, str) else None
    if known is None:
        return  # an unknown or refused code has its own error already
    if code == "OTHER":
        if line["description"] is None:
            report.add(f"{path}.description", "procedure.description_required")
        if line["category"] is None:
            report.add(f"{path}.category", "procedure.category_required")
    elif line["category"] is None:
        # The category is a property of the code; writing it down lets readers of the
        # JSON (a nursing record, a FHIR export) see it without our vocabulary.
        line["category"] = known.category
    elif _present(line["category"]) and line["category"] != known.category:
        report.add(f"{path}.category", "procedure.category_mismatch")
    supervision = line["supervision_arranged"]
    if (
        not known.functionally_independent
        and supervision is not True
        and supervision is not INVALID
    ):
        report.add(f"{path}.supervision_arranged", "procedure.supervision_required")
    medication = line["medication"]
    if known.medication_required and medication is None:
        report.add(f"{path}.medication", "medication.required")
    if isinstance(medication, dict):
        route = medication["route"]
        if known.route and _present(route) and route != known.route:
            report.add(f"{path}.medication.route", "medication.route_mismatch")
        if medication["as_needed"] is True and medication["as_needed_condition"] is None:
            report.add(
                f"{path}.medication.as_needed_condition", "medication.as_needed_condition_required"
            )


def _check_period(period: dict[str, Any], report: Report) -> None:
    start, end = period["start_date"], period["end_date"]
    until_notice, evaluation = period["until_further_notice"], period["evaluation_date"]
    if end is None and until_notice is not True and until_notice is not INVALID:
        report.add("period.end_date", "period.end_required")
    if end is not None and until_notice is True:
        report.add("period.until_further_notice", "period.end_conflict")
    if until_notice is True and evaluation is None:
        report.add("period.evaluation_date", "period.evaluation_required")
    if not isinstance(start, date):
        return
    if isinstance(end, date) and end < start:
        report.add("period.end_date", "date.before_start")
    if isinstance(evaluation, date):
        if evaluation <= start:
            report.add("period.evaluation_date", "date.not_after_start")
        elif evaluation > one_year_after(start):
            report.add("period.evaluation_date", "period.evaluation_too_late")


def check_answer(clean: dict[str, Any], report: Report, *, supervision_arranged: bool) -> None:
    """The brief's rules for a team's answer."""
    status = clean.get("status")
    if status == "geaccepteerd":
        if clean["nurse_in_charge"] is None:
            report.add("nurse_in_charge", "answer.nurse_required")
        if clean["nurse_phone"] is None:
            report.add("nurse_phone", "answer.phone_required")
        if clean["care_start"] is None:
            report.add("care_start", "answer.care_start_required")
        if clean["performer_level"] is None:
            report.add("performer_level", "answer.performer_required")
        if (
            clean["competence_confirmed"] is not True
            and clean["competence_confirmed"] is not INVALID
        ):
            report.add("competence_confirmed", "answer.competence_required")
    if clean.get("performer_level") == "vig" and not supervision_arranged:
        report.add("performer_level", "answer.vig_requires_supervision")
    if status in {"afgewezen", "doorbemiddeld"} and clean["reason"] is None:
        report.add("reason", "answer.reason_required")
    if status == "doorbemiddeld" and clean["passed_to"] is None:
        report.add("passed_to", "answer.passed_to_required")
    elif status in {"geaccepteerd", "afgewezen"} and _present(clean["passed_to"]):
        report.add("passed_to", "answer.passed_to_not_allowed")
