"""The consent register: may this practice share this kind of data about this patient with
this recipient, for this purpose, now? Record, withdraw, evaluate, require.

May import: the frame, the form room (BSN checks) and the audit room.

Invariants (``model``: values, errors, input checks; ``table``: schema and rows;
``register``: record, withdraw, correct; ``evaluate``: evaluate, check, require;
``queries``: lists and counts for the screens; ``fhir``: FHIR R4 export):

- **Append-only, versioned.** Triggers refuse every UPDATE and DELETE of ``consents``. A
  change, a withdrawal or a correction inserts version n+1 of the same ``consent_id``
  with ``supersedes`` = the row id of version n; ``supersedes`` is UNIQUE and an INSERT
  trigger checks it points at version n of the same consent, patient, holder and
  recipient, so each consent's history is one unbroken line.
- **The current version is computed, not flagged:** the row no other row supersedes.
  Nothing ever needs an UPDATE, so no crash can leave two "current" rows, and the check
  finds it through the UNIQUE index on ``supersedes``.
- **'expired' is computed, never stored:** an active record whose ``valid_until`` has
  passed stops counting that instant, without a sweeper job (``status_at(now)``).
- **One policy, applied in ``evaluate``** ([consent] policy): under ``direct_care`` (the
  default) no record means consent presumed within the treatment relationship, the signed
  request its evidence; under ``explicit`` no record means no. Either way the most specific
  matching record decides (team over organisation over category) and at equal specificity
  a deny beats a permit. Risk-reducing sends (NEVER_GATED) are never gated: ``exempt``.
- **Every check is on record:** ``check``/``require`` write a ``consent.check`` audit row
  naming the record used, in the caller's transaction; ``record`` and ``withdraw`` write
  ``consent.record``/``consent.withdraw`` in theirs. Bad input raises ConsentInputError
  naming the field before anything is written.
- Reasons and exception context name ids and fields, never a BSN; the BSN goes only into
  the table and the audit row's ``patient_id``.
"""

from __future__ import annotations

from securemail.consent.evaluate import check, evaluate, exempt, require
from securemail.consent.fhir import export_fhir, to_fhir
from securemail.consent.model import (
    BASES,
    CHANNELS,
    DATA_CATEGORIES,
    DECISIONS,
    NEVER_GATED,
    PERFORMERS,
    POLICIES,
    PURPOSES,
    STATUSES,
    STOP_LABEL_NL,
    STOP_REASON,
    ConsentDecision,
    ConsentDeniedError,
    ConsentInputError,
    ConsentMissingError,
    ConsentRecord,
    ConsentRefusedError,
    NothingToWithdrawError,
    Recipient,
    Specificity,
    StopPending,
    Target,
    WithdrawResult,
)
from securemail.consent.queries import (
    in_force,
    left_standing,
    list_records,
    register_overview,
    view_records,
)
from securemail.consent.register import RecipientKnown, mark_entered_in_error, record, withdraw
from securemail.consent.table import MIGRATIONS

__all__ = [
    "BASES", "CHANNELS", "DATA_CATEGORIES", "DECISIONS", "MIGRATIONS", "NEVER_GATED",
    "PERFORMERS", "POLICIES", "PURPOSES",
    "STATUSES", "STOP_LABEL_NL", "STOP_REASON", "ConsentDecision", "ConsentDeniedError",
    "ConsentInputError", "ConsentMissingError", "ConsentRecord", "ConsentRefusedError",
    "NothingToWithdrawError", "RecipientKnown", "Recipient", "Specificity", "StopPending",
    "Target", "WithdrawResult", "check", "evaluate", "exempt", "export_fhir", "in_force",
    "left_standing", "list_records",
    "mark_entered_in_error", "record", "register_overview", "require", "to_fhir", "view_records",
    "withdraw",
]  # fmt: skip
