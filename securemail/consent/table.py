"""The ``consents`` table: schema, row mapping, the one INSERT.

Invariants: triggers refuse every UPDATE and DELETE; a new version must supersede
version n-1 of the same consent, patient, holder and recipient (INSERT trigger), and
``supersedes`` is UNIQUE, so each consent's history is one unbroken line. The current
version is the row nobody supersedes (``CURRENT``). ``evidence_ref`` (an evidence file's
name, often the patient's name and birth date) is stored sealed by ``contentbox`` and
opened only by ``query``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox
from securemail.consent.model import ConsentRecord, Recipient, ts


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# -- schema ---------------------------------------------------------------------------------
def _migrate(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE consents (
            id INTEGER PRIMARY KEY,
            consent_id TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version >= 1),
            supersedes INTEGER UNIQUE REFERENCES consents(id),
            status TEXT NOT NULL
                CHECK (status IN ('active', 'withdrawn', 'expired', 'entered-in-error')),
            decision TEXT NOT NULL CHECK (decision IN ('permit', 'deny')),
            basis TEXT NOT NULL CHECK (basis IN ('explicit', 'implied_referral', 'objection')),
            patient_bsn TEXT NOT NULL CHECK (length(patient_bsn) = 9),
            source_org_id INTEGER NOT NULL,
            recipient_team_id INTEGER,
            recipient_org_id INTEGER,
            recipient_category TEXT,
            purpose TEXT NOT NULL,
            data_categories TEXT NOT NULL
                CHECK (json_valid(data_categories) AND json_array_length(data_categories) > 0),
            valid_from TEXT NOT NULL,
            valid_until TEXT CHECK (valid_until IS NULL OR valid_until > valid_from),
            given_at TEXT NOT NULL,
            channel TEXT NOT NULL CHECK (channel IN ('in_person', 'phone', 'paper', 'portal')),
            performer TEXT NOT NULL CHECK (performer IN ('patient', 'representative')),
            performer_name TEXT,
            recorded_by INTEGER,
            recorded_at TEXT NOT NULL,
            evidence_ref TEXT,
            evidence_sha256 TEXT CHECK (evidence_sha256 IS NULL OR length(evidence_sha256) = 64),
            withdrawn_at TEXT,
            withdrawn_by INTEGER,
            withdrawal_channel TEXT,
            reason TEXT,
            UNIQUE (consent_id, version),
            CHECK ((recipient_team_id IS NOT NULL) + (recipient_org_id IS NOT NULL)
                   + (recipient_category IS NOT NULL) = 1),
            CHECK ((basis = 'objection') = (decision = 'deny')),
            CHECK (basis <> 'implied_referral' OR recipient_category IS NULL),
            CHECK ((status = 'withdrawn') = (withdrawn_at IS NOT NULL))
        )
        """
    )
    db.execute("CREATE INDEX consents_check ON consents (patient_bsn, source_org_id)")
    db.execute("CREATE INDEX consents_holder ON consents (source_org_id, valid_until)")
    db.execute(
        """
        CREATE TRIGGER consents_version_chain BEFORE INSERT ON consents
        WHEN (NEW.supersedes IS NULL AND NEW.version <> 1)
          OR (NEW.supersedes IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM consents p WHERE p.id = NEW.supersedes
                  AND p.consent_id = NEW.consent_id AND p.version = NEW.version - 1
                  AND p.patient_bsn = NEW.patient_bsn AND p.source_org_id = NEW.source_org_id
                  AND p.recipient_team_id IS NEW.recipient_team_id
                  AND p.recipient_org_id IS NEW.recipient_org_id
                  AND p.recipient_category IS NEW.recipient_category))
        BEGIN
            SELECT RAISE(ABORT, 'consents: a version must supersede the previous version');
        END
        """
    )
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER consents_no_{op.lower()} BEFORE {op} ON consents "
            "BEGIN SELECT RAISE(ABORT, 'consents is append-only: insert a new version'); END"
        )


MIGRATIONS = Migrations("securemail.consent")
MIGRATIONS(name="0001_consents")(_migrate)

#: The current version of a consent is the row no other row supersedes.
CURRENT = "NOT EXISTS (SELECT 1 FROM consents n WHERE n.supersedes = c.id)"
SPECIFICITY_SQL = (
    "CASE WHEN c.recipient_team_id IS NOT NULL THEN 3 "
    "WHEN c.recipient_org_id IS NOT NULL THEN 2 ELSE 1 END"
)
RECIPIENT_IS_SQL = (
    "c.recipient_team_id IS ? AND c.recipient_org_id IS ? AND c.recipient_category IS ?"
)


def from_row(row: dict[str, Any]) -> ConsentRecord:
    """A ConsentRecord from a ``consents`` row (a dict of its columns)."""
    return ConsentRecord(
        row_id=row["id"],
        consent_id=row["consent_id"],
        version=row["version"],
        supersedes=row["supersedes"],
        status=row["status"],
        decision=row["decision"],
        basis=row["basis"],
        patient_bsn=row["patient_bsn"],
        source_org_id=row["source_org_id"],
        recipient=Recipient(
            row["recipient_team_id"], row["recipient_org_id"], row["recipient_category"]
        ),
        purpose=row["purpose"],
        data_categories=tuple(json.loads(row["data_categories"])),
        valid_from=datetime.fromisoformat(row["valid_from"]),
        valid_until=_dt(row["valid_until"]),
        given_at=datetime.fromisoformat(row["given_at"]),
        channel=row["channel"],
        performer=row["performer"],
        performer_name=row["performer_name"],
        recorded_by=row["recorded_by"],
        recorded_at=datetime.fromisoformat(row["recorded_at"]),
        evidence_ref=row["evidence_ref"],
        evidence_sha256=row["evidence_sha256"],
        withdrawn_at=_dt(row["withdrawn_at"]),
        withdrawn_by=row["withdrawn_by"],
        withdrawal_channel=row["withdrawal_channel"],
        reason=row["reason"],
    )


def _opened(db: sqlite_utils.Database, row: dict[str, Any]) -> dict[str, Any]:
    """row with its sealed evidence name opened (None stays None)."""
    if row.get("evidence_ref") is not None:
        row["evidence_ref"] = contentbox.open_value(
            db, "consents", "evidence_ref", row["consent_id"], row["evidence_ref"]
        )
    return row


def query(db: sqlite_utils.Database, sql: str, params: Iterable[Any]) -> list[ConsentRecord]:
    """Run a SELECT over ``consents c`` and map its rows to records (evidence names opened)."""
    cur = db.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    return [from_row(_opened(db, row)) for row in rows]


def insert_version(db: sqlite_utils.Database, row: dict[str, Any]) -> ConsentRecord:
    """Insert one version; its evidence name is stored sealed (contentbox), never plain."""
    row = dict(row)
    if row.get("evidence_ref"):
        row["evidence_ref"] = contentbox.seal(
            db, "consents", "evidence_ref", row["consent_id"], row["evidence_ref"]
        )
    cols = list(row)
    cur = db.execute(
        f"INSERT INTO consents ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",  # noqa: S608 (column names are ours)
        [row[c] for c in cols],
    )
    return query(db, "SELECT c.* FROM consents c WHERE c.id = ?", [cur.lastrowid])[0]


def columns_of(rec: ConsentRecord) -> dict[str, Any]:
    """The columns of rec, for copying into its next version."""
    return {
        "consent_id": rec.consent_id,
        "decision": rec.decision,
        "basis": rec.basis,
        "patient_bsn": rec.patient_bsn,
        "source_org_id": rec.source_org_id,
        "recipient_team_id": rec.recipient.team_id,
        "recipient_org_id": rec.recipient.org_id,
        "recipient_category": rec.recipient.category,
        "purpose": rec.purpose,
        "data_categories": json.dumps(list(rec.data_categories)),
        "valid_from": ts(rec.valid_from),
        "valid_until": None if rec.valid_until is None else ts(rec.valid_until),
        "given_at": ts(rec.given_at),
        "channel": rec.channel,
        "performer": rec.performer,
        "performer_name": rec.performer_name,
        "evidence_ref": rec.evidence_ref,
        "evidence_sha256": rec.evidence_sha256,
    }
