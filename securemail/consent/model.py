"""The consent register's values, errors and input checks.

Invariant: every ``parse_*`` raises ConsentInputError naming the field (and nothing
else: ids and field names, never a BSN) before the caller writes anything; a value that
passed them satisfies the table's CHECK constraints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Protocol

import sqlite_utils

from securemail.errors import InputError, SecuremailError
from securemail.form.fields import TextInputError, is_valid_bsn, require_text

DECISIONS = ("permit", "deny")
BASES = ("explicit", "implied_referral", "objection")
STATUSES = ("active", "withdrawn", "expired", "entered-in-error")
CHANNELS = ("in_person", "phone", "paper", "portal")
PERFORMERS = ("patient", "representative")
PURPOSES = ("TREAT",)
#: [consent] policy values (securemail.config.CONSENT_POLICIES mirrors them): what "no
#: record" means for a direct-care send.
POLICIES = ("direct_care", "explicit")
#: Sends that reduce risk and that the register never gates, whatever the policy and
#: whatever was recorded (docs/consent.md): a withdrawal (intrekking) of an order, a team's
#: stop notice, a GP's answer to a nurse's ask, a message in a request's conversation (a
#: nurse's question or the practice's answer, securemail.exchange.thread). They carry only
#: what the team needs to stop or act; stopping them would leave a team acting on an order
#: it should not, or a nurse without the GP's answer.
NEVER_GATED = ("withdrawal", "stop_notice", "ask_answer", "thread_message")
#: The basis of a direct-care send no record decided: consent presumed within the treatment
#: relationship (WGBO 7:457), the signed request itself the evidence.
PRESUMED_BASIS = "implied_referral"
#: What a send carries (a form's data_category): an execution request, a care request
#: (aanmelding wijkverpleging, issue 22), medication.
DATA_CATEGORIES = ("execution_request", "care_request", "medication")
#: What the outbox/request screens show for a request a withdrawal stopped.
STOP_REASON = "consent.withdrawn"
STOP_LABEL_NL = "gestopt: toestemming ingetrokken"

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_-]{1,63}$")


# -- errors ---------------------------------------------------------------------------------
class ConsentInputError(InputError):
    """Bad input to the register; ``field`` names the argument, nothing was written."""

    code = "consent.invalid"
    nl = "Ongeldige gegevens voor de toestemming: {field}."


class NothingToWithdrawError(ConsentInputError):
    code = "consent.nothing_to_withdraw"
    nl = "Er is geen geldige toestemming of bezwaar voor {recipient} om in te trekken."


class ConsentRefusedError(SecuremailError):
    """A send was refused by the register; ``decision`` says which record (if any) decided."""

    code = "consent.refused"
    http_status = 403

    def __init__(self, decision: ConsentDecision) -> None:
        rec = decision.record
        super().__init__(
            decision.reason,
            recipient=decision.target.display,
            consent_id=rec.consent_id if rec else None,
        )
        self.decision = decision


class ConsentMissingError(ConsentRefusedError):
    code = "consent.missing"
    nl = "Geen toestemming van de cliënt voor het delen met {recipient}."


class ConsentDeniedError(ConsentRefusedError):
    code = "consent.denied"
    nl = "De cliënt heeft bezwaar gemaakt tegen het delen met {recipient}."


# -- value objects --------------------------------------------------------------------------
class Specificity(IntEnum):
    NONE = 0
    CATEGORY = 1
    ORGANISATION = 2
    TEAM = 3


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who a record is about: exactly one of a team, an organisation or a category."""

    team_id: int | None = None
    org_id: int | None = None
    category: str | None = None

    @classmethod
    def of(cls, resolved: Any) -> Recipient:
        """The most specific part of a directory lookup (anything with team_id/org_id/category)."""
        team_id = getattr(resolved, "team_id", None)
        if team_id is not None:
            return cls(team_id=team_id)
        org_id = getattr(resolved, "org_id", None)
        if org_id is not None:
            return cls(org_id=org_id)
        return cls(category=getattr(resolved, "category", None))

    @property
    def level(self) -> Specificity:
        if self.team_id is not None:
            return Specificity.TEAM
        if self.org_id is not None:
            return Specificity.ORGANISATION
        return Specificity.CATEGORY if self.category else Specificity.NONE

    @property
    def label(self) -> str:
        if self.team_id is not None:
            return f"team {self.team_id}"
        if self.org_id is not None:
            return f"organisation {self.org_id}"
        return f"category {self.category}"


@dataclass(frozen=True, slots=True)
class Target:
    """The receiving team of a send, as the directory knows it (the caller builds this)."""

    team_id: int | None
    org_id: int | None
    category: str | None = None
    label: str = ""  # display name for messages (a team name), never patient data
    org_code: str = ""  # AGB/URA of the receiving organisation, for the audit row

    @property
    def description(self) -> str:
        parts = [
            f"team {self.team_id}" if self.team_id is not None else "",
            f"organisation {self.org_id}" if self.org_id is not None else "",
            f"category {self.category}" if self.category else "",
        ]
        return " / ".join(p for p in parts if p)

    @property
    def display(self) -> str:
        return self.label or self.description


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One version of one consent, as stored."""

    row_id: int
    consent_id: str
    version: int
    supersedes: int | None
    status: str
    decision: str
    basis: str
    patient_bsn: str = field(repr=False)
    source_org_id: int
    recipient: Recipient
    purpose: str
    data_categories: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None
    given_at: datetime
    channel: str
    performer: str
    performer_name: str | None = field(repr=False)
    recorded_by: int | None
    recorded_at: datetime
    evidence_ref: str | None
    evidence_sha256: str | None
    withdrawn_at: datetime | None
    withdrawn_by: int | None
    withdrawal_channel: str | None
    reason: str | None

    def status_at(self, now: datetime) -> str:
        """Stored status, with 'expired' for an active record whose period has ended."""
        if self.status == "active" and self.valid_until is not None and self.valid_until <= now:
            return "expired"
        return self.status

    def counts_at(self, now: datetime) -> bool:
        return self.status_at(now) == "active" and self.valid_from <= now

    @property
    def ref(self) -> str:
        return f"{self.consent_id}@v{self.version}"

    def as_json(self, now: datetime) -> dict[str, Any]:
        """Plain JSON for the API and ``consent list --json`` (status as of now)."""

        def t(dt: datetime | None) -> str | None:
            return None if dt is None else ts(dt)

        return {
            "consent_id": self.consent_id,
            "version": self.version,
            "status": self.status_at(now),
            "decision": self.decision,
            "basis": self.basis,
            "patient_bsn": self.patient_bsn,
            "source_org_id": self.source_org_id,
            "recipient": {
                "team_id": self.recipient.team_id,
                "org_id": self.recipient.org_id,
                "category": self.recipient.category,
            },
            "purpose": self.purpose,
            "data_categories": list(self.data_categories),
            "valid_from": t(self.valid_from),
            "valid_until": t(self.valid_until),
            "given_at": t(self.given_at),
            "channel": self.channel,
            "performer": self.performer,
            "performer_name": self.performer_name,
            "recorded_by": self.recorded_by,
            "recorded_at": t(self.recorded_at),
            "evidence_ref": self.evidence_ref,
            "evidence_sha256": self.evidence_sha256,
            "withdrawn_at": t(self.withdrawn_at),
            "withdrawn_by": self.withdrawn_by,
            "withdrawal_channel": self.withdrawal_channel,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The answer of the register for one send, with the record it used (None: no record)."""

    permitted: bool
    record: ConsentRecord | None
    reason: str
    specificity: Specificity
    target: Target
    purpose: str
    data_category: str
    policy: str = "explicit"
    #: the evidence of a presumed consent (the request reference): '' when a record decided
    evidence: str = ""
    #: one of NEVER_GATED when the register was not asked at all (a risk-reducing send)
    exempt: str = ""

    @property
    def basis(self) -> str:
        """The legal basis the send used: the record's basis, 'implied_referral' when
        presumed under the direct-care policy, '' for a refusal without a record."""
        if self.record is not None:
            return self.record.basis
        return PRESUMED_BASIS if self.permitted else ""

    @property
    def audit_value(self) -> str:
        """The audit row's check_consent (its NEN 7513 consent profile): 'permit:<id>@v<n>',
        'deny:<id>@v<n>', 'implied_referral:<evidence>' (presumed, direct care) or 'none'."""
        if self.exempt:
            return f"exempt:{self.exempt}"
        if self.record is not None:
            return f"{self.record.decision}:{self.record.ref}"
        if self.permitted:
            return f"{PRESUMED_BASIS}:{self.evidence or 'request'}"
        return "none"

    @property
    def consent_ref(self) -> str:
        """The audit row's consent_id: the record's id, or the presumed basis' evidence."""
        if self.exempt:
            return ""
        if self.record is not None:
            return self.record.consent_id
        return f"{PRESUMED_BASIS}:{self.evidence or 'request'}" if self.permitted else ""

    def raise_if_refused(self) -> None:
        if self.permitted:
            return
        if self.record is None:
            raise ConsentMissingError(self)
        raise ConsentDeniedError(self)


@dataclass(frozen=True, slots=True)
class WithdrawResult:
    records: tuple[ConsentRecord, ...]  # the new 'withdrawn' versions
    stopped: tuple[str, ...]  # references of the requests the withdrawal stopped


class StopPending(Protocol):
    """Stops this practice's not-yet-sent requests for the patient to recipient that the
    register no longer permits; writes one ``request.stop`` audit row per request (reason
    STOP_REASON, shown as STOP_LABEL_NL); returns their references.

    ``still_permitted(target, purpose="TREAT", data_category="execution_request")``
    evaluates the register as it stands after the withdrawal, in the same transaction;
    ``now`` (the withdrawal's moment, epoch seconds) stamps the stops.
    """

    def __call__(
        self,
        db: sqlite_utils.Database,
        patient_bsn: str,
        recipient: Recipient,
        /,
        *,
        source_org_id: int,
        still_permitted: Callable[..., bool],
        now: float,
    ) -> list[str]: ...


# -- validation -----------------------------------------------------------------------------
def bad(field_name: str, reason: str) -> ConsentInputError:
    return ConsentInputError(reason, field=field_name)


def parse_bsn(bsn: object) -> str:
    if not isinstance(bsn, str) or not is_valid_bsn(bsn):
        raise bad("patient_bsn", "patient_bsn is not a valid BSN (9 digits, 11-test)")
    return str(bsn)


def parse_choice(field_name: str, value: object, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise bad(field_name, f"{field_name} must be one of {', '.join(allowed)}")
    return str(value)


def parse_id(field_name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise bad(field_name, f"{field_name} must be a positive id")
    return value


def parse_recipient(r: object) -> Recipient:
    if not isinstance(r, Recipient):
        raise bad("recipient", "recipient must be a Recipient")
    if sum(v is not None for v in (r.team_id, r.org_id, r.category)) != 1:
        raise bad("recipient", "recipient must name exactly one team, organisation or category")
    if r.team_id is not None:
        parse_id("recipient", r.team_id)
    elif r.org_id is not None:
        parse_id("recipient", r.org_id)
    elif not isinstance(r.category, str) or not _CATEGORY_RE.match(r.category):
        raise bad("recipient", "recipient category must be a lower-case code")
    return r


def parse_target(t: object) -> Target:
    if not isinstance(t, Target):
        raise bad("target", "target must be a Target")
    if t.team_id is None and t.org_id is None and not t.category:
        raise bad("target", "target must name a team, an organisation or a category")
    return t


def parse_categories(value: object) -> tuple[str, ...]:
    """A non-empty set of known data categories, as a sorted tuple (the stored form)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise bad("data_categories", "data_categories must be a list of categories")
    try:
        cats = tuple(sorted(set(value)))
    except TypeError:
        raise bad("data_categories", "data_categories must be a list of categories") from None
    if not cats or any(c not in DATA_CATEGORIES for c in cats):
        raise bad(
            "data_categories", "data_categories must be some of " + ", ".join(DATA_CATEGORIES)
        )
    return cats


def parse_text(field_name: str, value: object, *, required: bool, limit: int = 500) -> str | None:
    """Optional or required one-line text, cleaned by the one text policy (NFC, trimmed; no
    control, bidi-override or separator characters; at most ``limit`` characters): the one
    gate for the register's free text, from the web and the CLI alike."""
    try:
        text = require_text(field_name, value, max_length=limit)
    except TextInputError as exc:
        raise bad(field_name, f"{exc.reason} (one line of at most {limit} characters)") from None
    if not text:
        if required:
            raise bad(field_name, f"{field_name} is required")
        return None
    return text


def ts(dt: datetime, field_name: str = "time") -> str:
    """UTC, milliseconds, 'Z': the one text form of a time in this table (sorts as text)."""
    if not isinstance(dt, datetime) or dt.tzinfo is None or dt.utcoffset() is None:
        raise bad(field_name, f"{field_name} must be a datetime with a time zone")
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
