"""Asks: a nurse asks a GP practice for an execution request for a patient in her care.

The practice sees the ask in its work list with its deadline (``deadlines.due(kind='ask')``:
2 working days, urgent 2 hours) and answers it by sending a request from the form,
prefilled from the ask; that send fulfils the ask in its own transaction.

Invariants:
- an ask is made only by a nurse for one of her own teams (``ask.create``), and read only
  by that team and the asked practice (``ask.view``, audited with the patient's BSN);
- work lists, notices and URLs carry the reference (ASK-2026-000001), never patient data;
- an ask is fulfilled once, by a request of the asked practice for the same patient and
  addressed to the asking team;
- there is no consent check here: the ask travels within the gateway from the team that
  cares for the patient to the patient's own GP; the request that answers it goes through
  the consent register as every request does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox, deadlines
from securemail.access import Actor, Resource, require
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import ConflictError, NotFoundError
from securemail.form import kinds
from securemail.form import request as forms
from securemail.form.fields import clean_text
from securemail.message import notify
from securemail.region import directory
from securemail.services import Services
from securemail.store import next_value

MIGRATIONS = Migrations("securemail.asks")
DATA_CATEGORIES = "execution_request_ask"
URGENCIES = ("regulier", "spoed")
#: What a nurse may ask a practice for: an execution request (fulfilled by a request), or
#: the GP's consult or home visit (the covenant: "beschikbaar voor een consult of
#: huisbezoek"), answered by the GP on the ask (securemail.exchange.ask_answer).
ASK_KINDS = {
    "uitvoeringsverzoek": "Uitvoeringsverzoek",
    "consult": "Consult (overleg met de huisarts)",
    "huisbezoek": "Huisbezoek door de huisarts",
}
REFERENCE_RE = re.compile(r"^ASK-[0-9]{4}-[0-9]{6}$")

#: field -> Dutch label (the nurse's form and the GP's page)
LABELS = {
    "team_address": "Uw team",
    "practice_code": "Huisartsenpraktijk",
    "patient.bsn": "BSN",
    "patient.name": "Naam cliënt",
    "patient.birth_date": "Geboortedatum",
    "ask_kind": "Soort vraag",
    "procedure_code": "Handeling",
    "reason": "Waarom (indicatie)",
    "urgency": "Urgentie",
}


@MIGRATIONS(name="0001_asks")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE asks (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL UNIQUE,
            created_by INTEGER NOT NULL REFERENCES users(id),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            practice_org_id INTEGER NOT NULL REFERENCES organisations(id),
            patient_bsn TEXT NOT NULL,
            patient_name TEXT NOT NULL,
            patient_birth_date TEXT NOT NULL DEFAULT '',
            procedure_code TEXT NOT NULL,
            reason TEXT NOT NULL,
            urgency TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'open',       -- open | fulfilled
            due_at TEXT NOT NULL,                      -- ISO 8601 with offset
            overdue_at TEXT NOT NULL DEFAULT '',       -- set once by the deadline check
            fulfilled_by_reference TEXT NOT NULL DEFAULT '',
            fulfilled_at TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX asks_practice ON asks (practice_org_id, state)")
    db.execute("CREATE INDEX asks_team ON asks (team_id, state)")


@dataclass(frozen=True, slots=True)
class AskResult:
    reference: str
    due_at: str


class _PreparedLike(Protocol):  # exchange.Prepared, without importing the exchange
    @property
    def request(self) -> kinds.RequestDocument: ...
    @property
    def team(self) -> directory.Team: ...


def _err(field: str, code: str, nl: str) -> forms.FieldError:
    return forms.FieldError(field, code, nl, code)


#: Longest text per field of the ask form (others: 200).
TEXT_LIMITS = {"reason": 2000}


def parse_ask(
    definition: forms.FormDefinition, data: dict[str, Any], *, today: date
) -> dict[str, Any]:
    """Validate the nurse's form (flat names); FormInvalidError lists every problem."""
    get = {k: str(data.get(k, "") or "").strip() for k in LABELS}
    errors: list[forms.FieldError] = []
    # The form's own text policy (securemail.form.fields.clean_text) for every text typed here.
    for key in LABELS:
        limit = TEXT_LIMITS.get(key, 200)
        get[key], problem = clean_text(get[key], multiline=key == "reason", max_length=limit)
        if problem == "text.invalid_characters":
            errors.append(_err(key, problem, "Bevat tekens die hier niet zijn toegestaan."))
        elif problem == "text.too_long":
            errors.append(_err(key, "too_long", f"Hoogstens {limit} tekens."))
    if errors:
        raise forms.FormInvalidError(errors)
    for key in ("team_address", "practice_code", "patient.bsn", "patient.name", "reason"):
        if not get[key]:
            errors.append(_err(key, "required", f"{LABELS[key]} is verplicht."))
    if get["patient.bsn"] and not forms.is_valid_bsn(get["patient.bsn"]):
        errors.append(_err("patient.bsn", "bsn.elfproef", "Dit is geen geldig BSN (11-proef)."))
    if len(get["patient.name"]) > 200:
        errors.append(_err("patient.name", "too_long", "Hoogstens 200 tekens."))
    if len(get["reason"]) > 2000:
        errors.append(_err("reason", "too_long", "Hoogstens 2000 tekens."))
    get["ask_kind"] = get["ask_kind"] or "uitvoeringsverzoek"  # older clients: the one kind
    if get["ask_kind"] not in ASK_KINDS:
        errors.append(_err("ask_kind", "ask.kind_unknown", "Kies waar u de praktijk om vraagt."))
    elif get["ask_kind"] != "uitvoeringsverzoek":
        get["procedure_code"] = ""  # a consult or visit names no procedure
    elif get["procedure_code"] not in definition.procedures:
        errors.append(
            _err("procedure_code", "procedure.unknown", "Kies een voorbehouden handeling.")
        )
    if get["urgency"] not in URGENCIES:
        errors.append(_err("urgency", "urgency.unknown", "Kies regulier of spoed."))
    birth = get["patient.birth_date"]
    if birth:
        try:
            born = date.fromisoformat(birth)
        except ValueError:
            errors.append(_err("patient.birth_date", "date.invalid", "Geen geldige datum."))
        else:
            if born > today or born.year < 1900:
                errors.append(
                    _err("patient.birth_date", "date.out_of_range", "Datum valt buiten bereik.")
                )
    if errors:
        raise forms.FormInvalidError(errors)
    return get


@MIGRATIONS(name="0002_ask_kinds")
def _m2(db: sqlite_utils.Database) -> None:
    """Consult and home-visit asks, and the GP's answer on them (sealed; purged with the ask)."""
    for column in (
        "ask_kind TEXT NOT NULL DEFAULT 'uitvoeringsverzoek'",
        "gp_answer TEXT NOT NULL DEFAULT ''",
        "answered_by INTEGER REFERENCES users(id)",
    ):
        db.execute(f"ALTER TABLE asks ADD COLUMN {column}")


def _allocate(db: sqlite_utils.Database, year: int) -> str:
    name = f"ASK-{year}"
    return f"{name}-{next_value(db, name):06d}"


def practices(db: sqlite_utils.Database, actor: Actor) -> list[directory.Organisation]:
    """Practices a nurse may ask: those that prefer one of her teams first, then the rest."""
    preferring = {
        r[0]
        for r in db.execute(
            f"SELECT practice_org_id FROM preferred_providers WHERE team_id IN "  # noqa: S608
            f"({','.join('?' for _ in actor.team_ids) or 'NULL'})",
            list(actor.team_ids),
        )
    }
    orgs = [o for o in directory.list_orgs(db) if o.kind == "practice"]
    return sorted(orgs, key=lambda o: (o.id not in preferring, o.name))


async def create(svc: Services, actor: Actor, data: dict[str, Any]) -> AskResult:
    """A nurse's ask: validated, scoped to her team, stored, audited, and the practice told
    (a notice with the reference only). Durable when this returns."""
    now = svc.now()
    local_now = deadlines.local(now, svc.settings.deadlines)  # the Dutch day and year
    clean = parse_ask(svc.definition, data, today=local_now.date())

    def tx(db: sqlite_utils.Database) -> AskResult:
        team = directory.find_team(db, clean["team_address"])
        errors = []
        if team is None or team.id not in actor.team_ids:
            errors.append(_err("team_address", "team.not_yours", "Kies een van uw teams."))
        try:
            practice = directory.org_by_code(db, clean["practice_code"])
        except NotFoundError:
            practice = None
        if practice is None or practice.kind != "practice":
            errors.append(_err("practice_code", "practice.unknown", "Onbekende praktijk."))
        if errors or team is None or practice is None:
            raise forms.FormInvalidError(errors)
        require(
            actor, "ask.create", Resource("ask", org_id=practice.id, team_ids=frozenset({team.id}))
        )
        reference = _allocate(db, local_now.year)
        due_at = deadlines.due(now, clean["urgency"], "ask", svc.settings.deadlines)
        due_text = due_at.isoformat(timespec="minutes")
        db.table("asks").insert(
            {
                "reference": reference,
                "created_by": actor.user_id,
                "team_id": team.id,
                "practice_org_id": practice.id,
                "patient_bsn": clean["patient.bsn"],
                "patient_name": _seal(db, "patient_name", reference, clean["patient.name"]),
                "patient_birth_date": _seal(
                    db, "patient_birth_date", reference, clean["patient.birth_date"]
                ),
                "procedure_code": clean["procedure_code"],
                "ask_kind": clean["ask_kind"],
                "reason": _seal(db, "reason", reference, clean["reason"]),
                "urgency": clean["urgency"],
                "due_at": due_text,
                "created_at": svc.now_iso(),
            }
        )
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "ask.create",
                patient_id=clean["patient.bsn"],
                object_type="ask",
                object_id=reference,
                data_categories=DATA_CATEGORIES,
                sender_org=actor.org_code,
                recipient_org=practice.code,
                check_authz="permit:nurse-own-team",
                outcome_detail=f"kind={clean['ask_kind']}; due={due_text}",
            ),
        )
        notice = (
            notify.notice_ask
            if clean["ask_kind"] == "uitvoeringsverzoek"
            else notify.notice_ask_contact
        )
        outbox.enqueue_notice(
            db,
            notice,
            reference,
            practice.notify_address,
            svc.settings,
            actor=actor,
            now=svc.now().timestamp(),
        )
        return AskResult(reference, due_text)

    return await svc.store.write(tx)


#: The ask's patient content, sealed at rest (securemail.contentbox).
SEALED = ("patient_name", "patient_birth_date", "reason", "gp_answer")


def _seal(db: sqlite_utils.Database, column: str, reference: str, value: str) -> str:
    return contentbox.seal(db, "asks", column, reference, value)


def _opened(db: sqlite_utils.Database, row: dict[str, Any]) -> dict[str, Any]:
    """The row with its sealed columns opened ('' once purged)."""
    return row | {c: contentbox.open_value(db, "asks", c, row["reference"], row[c]) for c in SEALED}


def _resource(row: dict[str, Any]) -> Resource:
    return Resource(
        "ask",
        org_id=row["practice_org_id"],
        team_ids=frozenset({row["team_id"]}),
        ref=row["reference"],
    )


def _row(db: sqlite_utils.Database, reference: str) -> dict[str, Any]:
    rows = list(db.table("asks").rows_where("reference = ?", [reference]))
    if not rows:
        raise NotFoundError("ask not found", reference=reference)
    return rows[0]


def get_ask(db: sqlite_utils.Database, actor: Actor, reference: str) -> dict[str, Any]:
    """One ask with its patient data, for the asked practice or the asking team; audited
    ask.view (a refusal as access.denied). Must run in a write."""
    row = _row(db, reference)
    try:
        require(actor, "ask.view", _resource(row), hide=True)
    except NotFoundError:
        audit.record(
            db,
            audit.AuditEvent.of(
                actor, "access.denied", outcome="refused", object_type="ask", object_id=reference
            ),
        )
        raise
    team = directory.team_by_id(db, row["team_id"])
    practice = directory.org_by_id(db, row["practice_org_id"])
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "ask.view",
            patient_id=row["patient_bsn"],
            object_type="ask",
            object_id=reference,
            data_categories=DATA_CATEGORIES,
            sender_org=directory.org_by_id(db, team.org_id).code,
            recipient_org=practice.code,
            check_authz=f"permit:{actor.role}",
        ),
    )
    asker = db.execute("SELECT name FROM users WHERE id = ?", [row["created_by"]]).fetchone()
    return {
        **_opened(db, row),
        "purged": bool(row["content_purged_at"]),
        "team": team,
        "practice": practice,
        "asked_by": asker[0] if asker else "",
        "overdue": bool(row["overdue_at"]) and row["state"] == "open",
    }


def list_asks(db: sqlite_utils.Database, actor: Actor, *, limit: int = 200) -> list[dict[str, Any]]:
    """The work list: references, procedure codes, urgency, deadlines and states; no patient
    data. A GP sees her practice's asks, a nurse her teams' asks; open and overdue first."""
    if actor.role == "gp" and actor.org_id is not None:
        require(actor, "ask.view", Resource("ask", org_id=actor.org_id))
        where, params = "a.practice_org_id = ?", [actor.org_id]
    elif actor.role == "nurse" and actor.team_ids:
        require(actor, "ask.view", Resource("ask", team_ids=actor.team_ids))
        where = f"a.team_id IN ({','.join('?' for _ in actor.team_ids)})"
        params = list(actor.team_ids)
    else:
        return []
    cur = db.execute(
        "SELECT a.reference, a.ask_kind, a.procedure_code, a.urgency, a.state, a.due_at, "  # noqa: S608
        "a.overdue_at, a.created_at, a.fulfilled_by_reference, t.name AS team_name, "
        "o.name AS practice_name "
        "FROM asks a JOIN teams t ON t.id = a.team_id "
        "JOIN organisations o ON o.id = a.practice_org_id "
        f"WHERE {where} ORDER BY (a.state = 'open') DESC, (a.overdue_at != '') DESC, "
        "a.id DESC LIMIT ?",
        [*params, limit],
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur]
    for r in rows:
        r["overdue"] = bool(r["overdue_at"]) and r["state"] == "open"
    return rows


def prefill(ask: dict[str, Any]) -> dict[str, Any]:
    """The request form's values from an ask (nested, as parse_form_post makes them)."""
    patient = {"bsn": ask["patient_bsn"], "name": ask["patient_name"]}
    if ask["patient_birth_date"]:
        patient["birth_date"] = ask["patient_birth_date"]
    return {
        "kind": "nieuw",
        "urgency": ask["urgency"],
        "patient": patient,
        "receiver": {"team_address": ask["team"].address},
        "procedures": [{"code": ask["procedure_code"], "indication": ask["reason"]}],
    }


def require_fulfillable(
    db: sqlite_utils.Database, actor: Actor, reference: str, prepared: _PreparedLike
) -> None:
    """The request in ``prepared`` may fulfil this ask: same practice, patient and team,
    and the ask still open; otherwise a form error (the same for a foreign ask)."""
    rows = list(db.table("asks").rows_where("reference = ?", [reference]))
    row = rows[0] if rows else None
    problem = None
    if row is None or row["practice_org_id"] != actor.org_id:
        problem = ("ask.unknown", "Uw praktijk heeft geen vraag met dit kenmerk.")
    elif row["state"] != "open":
        problem = ("ask.closed", "Op deze vraag is al een verzoek verstuurd.")
    elif row["ask_kind"] != "uitvoeringsverzoek":
        problem = (
            "ask.not_a_request",
            "Deze vraag om een consult of huisbezoek beantwoordt u op de pagina van de vraag.",
        )
    elif row["patient_bsn"] != prepared.request.patient_bsn:
        problem = ("ask.other_patient", "Het verzoek gaat over een andere patiënt dan de vraag.")
    elif row["team_id"] != prepared.team.id:
        problem = ("ask.other_team", "Het verzoek moet naar het team dat erom vroeg.")
    if problem:
        raise forms.FormInvalidError([_err("", *problem)])


def fulfil(
    db: sqlite_utils.Database,
    actor: Actor,
    reference: str,
    request_reference: str,
    *,
    now: str,
) -> None:
    """Mark the ask fulfilled by a request (inside the request's sending transaction)."""
    changed = db.execute(
        "UPDATE asks SET state = 'fulfilled', fulfilled_by_reference = ?, fulfilled_at = ? "
        "WHERE reference = ? AND state = 'open'",
        [request_reference, now, reference],
    ).rowcount
    if changed != 1:
        raise ConflictError("ask is no longer open", reference=reference)
    row = _row(db, reference)
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            "ask.fulfil",
            patient_id=row["patient_bsn"],
            object_type="ask",
            object_id=reference,
            data_categories=DATA_CATEGORIES,
            outcome_detail=f"request={request_reference}",
        ),
    )


def asking_teams(
    db: sqlite_utils.Database, practice_org_id: int, ask: str | None = None
) -> list[directory.Team]:
    """The team of the open ask ``ask`` to this practice: the practice may address it for the
    request that answers that ask. Without an ask, none: an ask must not put a team on a
    practice's receiver list for every other patient."""
    if not ask:
        return []
    ids = [
        r[0]
        for r in db.execute(
            "SELECT team_id FROM asks WHERE practice_org_id = ? AND state = 'open' "
            "AND reference = ?",
            [practice_org_id, ask],
        )
    ]
    return [directory.team_by_id(db, i) for i in ids]
