"""The GP's consent screens: find a patient, see every version of their consents, record a
consent or an objection, withdraw one with one action.

Routes (each declares its policy action; the domain functions check the organisation):

- ``GET /consents`` (consent.view): the search form.
- ``POST /consents/patient`` (consent.view): the patient's page, audited ``consent.view``.
- ``POST /consents/record`` (consent.record): record, then the patient's page again.
- ``POST /consents/withdraw`` (consent.withdraw): withdraw, then the patient's page again,
  naming the requests the withdrawal stopped.
- ``POST /consents/withdraw-narrower`` (consent.withdraw): withdraw every narrower permit
  an objection leaves standing (the page lists them under the objection), in one action.

Invariants:

- **The BSN never appears in a URL.** It travels only in POST bodies (the search form, and
  a hidden field of every form on the patient's page) and in page content. After a POST
  the patient's page is rendered directly, not redirected to: a redirect would need the
  BSN in its Location or server-side state keyed by the session; rendering needs neither.
  (A browser refresh asks before re-posting; a repeated record is a new version, a
  repeated withdrawal answers "nothing to withdraw".)
- **Bad input writes nothing.** Dates and the recipient are checked here, the rest by
  ``consent.record``/``consent.withdraw`` before their first INSERT, inside one write
  transaction with the audit row; an error re-renders the page (422) with the Dutch
  message next to the field.
- **Evidence is a reference and a hash.** An uploaded file is read once to compute its
  SHA-256 (``consent.record`` keeps the hash and the file name as reference); its bytes
  are never stored or logged.
- The holder is always the actor's own organisation; the record/withdraw forms are shown
  to GPs only (a privacy officer may view the page; the policy refuses the writes).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import PurePosixPath, PureWindowsPath
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail import consent
from securemail.access import org_of
from securemail.accounts import auth
from securemail.consent import ConsentInputError, ConsentRecord, Recipient
from securemail.exchange import send as exchange
from securemail.region import directory
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

STATUS_NL = {
    "active": "actief",
    "withdrawn": "ingetrokken",
    "expired": "verlopen",
    "entered-in-error": "foutief ingevoerd",
}
DECISION_NL = {"permit": "toestemming", "deny": "bezwaar"}
BASIS_NL = {
    "explicit": "uitdrukkelijke toestemming",
    "implied_referral": "veronderstelde toestemming (verwijzing)",
    "objection": "bezwaar",
}
CHANNEL_NL = {
    "in_person": "persoonlijk",
    "phone": "telefonisch",
    "paper": "op papier",
    "portal": "via het portaal",
}
PERFORMER_NL = {"patient": "de cliënt zelf", "representative": "een vertegenwoordiger"}
CATEGORY_NL = {"wijkverpleging": "alle wijkverpleging (categorie)"}
LABELS = {
    "status": STATUS_NL,
    "decision": DECISION_NL,
    "basis": BASIS_NL,
    "channel": CHANNEL_NL,
    "performer": PERFORMER_NL,
}

#: Dutch text next to a field, by the field a ConsentInputError names.
FIELD_NL = {
    "bsn": "Dit is geen geldig BSN (9 cijfers die de elfproef doorstaan).",
    "recipient": "Kies een ontvanger uit de lijst.",
    "decision": "Kies toestemming of bezwaar.",
    "basis": "Deze grondslag past niet bij de keuze: bezwaar hoort bij bezwaar, en alleen "
    "daarbij; veronderstelde toestemming geldt alleen voor een genoemd team of "
    "een genoemde organisatie.",
    "valid_from": "Geef de begindatum als dag (jjjj-mm-dd).",
    "valid_until": "De einddatum ligt vóór de begindatum.",
    "channel": "Kies hoe de cliënt het aangaf.",
    "performer": "Kies wie het aangaf.",
    "performer_name": "Vul de naam van de vertegenwoordiger in (alleen bij een "
    "vertegenwoordiger, één regel van hoogstens 500 tekens, zonder stuur- of richtingstekens).",
    "evidence": "Het bewijsbestand is leeg of onleesbaar.",
    "evidence_ref": "Veronderstelde toestemming wordt vastgelegd met de verwijzing als bewijs "
    "(bestand of vindplaats, één regel van hoogstens 255 tekens, zonder stuur- of "
    "richtingstekens).",
    "reason": "De reden is één regel van hoogstens 500 tekens, zonder stuur- of richtingstekens.",
}
#: The register's argument names that are called differently in the form.
FORM_FIELD = {"patient_bsn": "bsn", "given_at": "valid_from"}
RECORD_FIELDS = (
    "recipient",
    "decision",
    "basis",
    "valid_from",
    "valid_until",
    "channel",
    "performer",
    "performer_name",
    "evidence_ref",
)


@dataclass(frozen=True, slots=True)
class RecipientOption:
    value: str  # "team:<id>", "org:<id>" or "category:<code>": ids only, never patient data
    label: str


def recipient_value(r: Recipient) -> str:
    if r.team_id is not None:
        return f"team:{r.team_id}"
    if r.org_id is not None:
        return f"org:{r.org_id}"
    return f"category:{r.category}"


def parse_recipient_value(value: str) -> Recipient:
    kind, _, ident = value.partition(":")
    if kind in ("team", "org") and ident.isdigit() and len(ident) <= 12:
        return Recipient(team_id=int(ident)) if kind == "team" else Recipient(org_id=int(ident))
    if kind == "category" and ident in directory.CATEGORIES:
        return Recipient(category=ident)
    raise ConsentInputError("recipient is not one of the form's options", field="recipient")


def recipient_options(
    db: sqlite_utils.Database, org_id: int, passing_on: str
) -> list[RecipientOption]:
    """The practice's allowed teams, then the nursing organisations, then the categories."""
    teams = [
        RecipientOption(f"team:{t.id}", f"{t.name} ({t.address})")
        for t in directory.allowed_receivers(db, org_id, passing_on)
    ]
    orgs = [
        RecipientOption(f"org:{o.id}", f"{o.name} (hele organisatie, {o.code})")
        for o in directory.list_orgs(db)
        if o.kind == "nursing"
    ]
    cats = [RecipientOption(f"category:{c}", CATEGORY_NL.get(c, c)) for c in directory.CATEGORIES]
    return teams + orgs + cats


def recipient_names(db: sqlite_utils.Database) -> dict[str, str]:
    """Display names for every possible recipient value (teams, organisations, categories)."""
    names = {
        f"team:{t.id}": f"{t.name} ({t.address})"
        for t in directory.list_teams(db, active_only=False)
    }
    names.update({f"org:{o.id}": o.name for o in directory.list_orgs(db)})
    names.update({f"category:{c}": CATEGORY_NL.get(c, c) for c in directory.CATEGORIES})
    return names


def user_names(db: sqlite_utils.Database, rows: list[ConsentRecord]) -> dict[int, str]:
    ids = {i for r in rows for i in (r.recorded_by, r.withdrawn_by) if i is not None}
    return {i: auth.user_by_id(db, i).name for i in ids}


def field_of(exc: ConsentInputError) -> str:
    name = str(exc.context.get("field") or "")
    return FORM_FIELD.get(name, name)


def message_of(exc: ConsentInputError, form_field: str) -> str:
    if isinstance(exc, consent.NothingToWithdrawError):
        return "Er is geen geldige toestemming of bezwaar voor deze ontvanger om in te trekken."
    return FIELD_NL.get(form_field, exc.message_nl())


def day_formatters(tz: ZoneInfo) -> dict[str, Any]:
    """day(dt): the local calendar day; last_day(until): the last day a period counts (a
    stored end is the start of the day after, as the CLI's --until)."""

    def day(dt: datetime | None) -> str:
        return dt.astimezone(tz).strftime("%d-%m-%Y") if dt else "—"

    def last_day(dt: datetime | None) -> str:
        return (dt.astimezone(tz) - timedelta(microseconds=1)).strftime("%d-%m-%Y") if dt else "—"

    return {"day": day, "last_day": last_day}


def _day(text: str, form_field: str, tz: ZoneInfo, *, next_day: bool = False) -> datetime | None:
    """'' -> None; 'YYYY-MM-DD' -> the start of that day (or of the next) in tz."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ConsentInputError(f"{form_field} is not a date", field=form_field) from None
    return datetime.combine(day + timedelta(days=1 if next_day else 0), time(0), tzinfo=tz)


# -- the pages ---------------------------------------------------------------------------------
def _search(
    request: web.Request,
    bsn: str = "",
    errors: dict[str, list[str]] | None = None,
    status: int = 200,
) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "consents/search.html", request, {"bsn": bsn, "errors": errors or {}}, status=status
    )


async def patient_page(
    request: web.Request,
    bsn: str,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
    withdrawn: consent.WithdrawResult | None = None,
    recorded: ConsentRecord | None = None,
) -> web.StreamResponse:
    """Render one patient's consents (every version), audited consent.view; a bad BSN
    gives the search form with the error next to the field, nothing written."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    now = svc.now()

    def load(db: sqlite_utils.Database) -> dict[str, Any]:
        rows = consent.view_records(
            db, actor, source_org_id=org_of(actor), patient_bsn=bsn, now=now, history=True
        )
        superseded = {r.supersedes for r in rows if r.supersedes is not None}
        current = [r for r in rows if r.row_id not in superseded]
        return {
            "current": current,
            "standing": _standing(db, current, now),
            "past": [r for r in rows if r.row_id in superseded],
            "users": user_names(db, rows),
            "names": recipient_names(db),
            "options": recipient_options(
                db, org_of(actor), svc.settings.gateway.passing_on_address
            ),
        }

    try:
        data = await svc.store.write(load)
    except ConsentInputError as exc:
        if field_of(exc) != "bsn":
            raise
        return _search(request, bsn, {"bsn": [FIELD_NL["bsn"]]}, status=422)
    tz = ZoneInfo(svc.settings.deadlines.timezone)
    today = now.astimezone(tz).date().isoformat()
    ctx = {
        **data,
        "bsn": bsn,
        "now": now,
        "labels": LABELS,
        "errors": errors or {},
        "values": values
        or {
            "decision": "permit",
            "basis": "",
            "valid_from": today,
            "channel": "in_person",
            "performer": "patient",
        },
        "withdrawn": withdrawn,
        "recorded": recorded,
        "value_of": recipient_value,
        "can_write": actor.role == "gp",
        "stop_label": consent.STOP_LABEL_NL,
        **day_formatters(tz),
    }
    return aiohttp_jinja2.render_template("consents/patient.html", request, ctx, status=status)


def _standing(
    db: sqlite_utils.Database, current: list[ConsentRecord], now: datetime
) -> list[tuple[ConsentRecord, list[ConsentRecord]]]:
    """Each objection in force with the narrower permits it leaves standing (only those
    that leave some): the GP sees them and may withdraw them in one action."""
    pairs = [
        (o, consent.left_standing(current, o, now, lambda b, n: directory.covers(db, b, n)))
        for o in current
        if o.decision == "deny"
    ]
    return [(o, left) for o, left in pairs if left]


@requires("consent.view")
async def search_form(request: web.Request) -> web.StreamResponse:
    return _search(request)


@requires("consent.view")
async def patient(request: web.Request) -> web.StreamResponse:
    post = await request.post()
    bsn = str(post.get("bsn", "") or "").strip()
    return await patient_page(request, bsn)


def _evidence(post: Any) -> tuple[bytes | None, str]:
    """The uploaded proof's bytes (to hash, then dropped) and its file name (the reference)."""
    item = post.get("evidence")
    if not isinstance(item, web.FileField) or not item.filename:
        return None, ""
    try:
        content = item.file.read()
    finally:
        item.file.close()
    name = PureWindowsPath(PurePosixPath(item.filename).name).name  # no client paths
    return content, name[-255:]


@requires("consent.record")
async def record(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    bsn = str(post.get("bsn", "") or "").strip()
    values = {k: str(post.get(k, "") or "").strip() for k in RECORD_FIELDS}
    evidence, file_name = _evidence(post)
    tz = ZoneInfo(svc.settings.deadlines.timezone)
    now = svc.now()
    errors: dict[str, list[str]] = {}
    try:
        recipient = parse_recipient_value(values["recipient"])
        valid_from = _day(values["valid_from"], "valid_from", tz)
        valid_until = _day(values["valid_until"], "valid_until", tz, next_day=True)
    except ConsentInputError as exc:
        errors[field_of(exc)] = [message_of(exc, field_of(exc))]
    decision = values["decision"]
    basis = values["basis"] or ("objection" if decision == "deny" else "explicit")

    def write(db: sqlite_utils.Database) -> ConsentRecord:
        allowed = {
            o.value
            for o in recipient_options(db, org_of(actor), svc.settings.gateway.passing_on_address)
        }
        if values["recipient"] not in allowed:
            raise ConsentInputError("recipient not offered to this practice", field="recipient")
        return consent.record(
            db,
            actor,
            patient_bsn=bsn,
            source_org_id=org_of(actor),
            recipient=recipient,
            decision=decision,
            basis=basis,
            valid_from=valid_from or now,
            valid_until=valid_until,
            given_at=now,
            channel=values["channel"],
            performer=values["performer"],
            performer_name=values["performer_name"] or None,
            evidence=evidence,
            evidence_ref=values["evidence_ref"] or file_name or None,
            now=now,
        )

    rec = None
    if not errors:
        try:
            rec = await svc.store.write(write)
        except ConsentInputError as exc:
            errors[field_of(exc)] = [message_of(exc, field_of(exc))]
    if errors.get("bsn"):
        return _search(request, bsn, errors, status=422)
    if errors:
        return await patient_page(request, bsn, status=422, values=values, errors=errors)
    return _see_done(request, bsn, recorded=rec)


@requires("consent.withdraw")
async def withdraw(request: web.Request) -> web.StreamResponse:
    form = await _withdrawal_form(request)
    recipient = str(form.post.get("recipient", "") or "")

    def write(db: sqlite_utils.Database) -> consent.WithdrawResult:
        return form.withdraw(db, parse_recipient_value(recipient))

    return await form.run(write)


@dataclass(frozen=True)
class _WithdrawalForm:
    """What both withdrawal routes read from the form, and the one way they withdraw and
    answer: the register's withdraw (audited, stopping what it no longer permits), errors
    shown next to the patient's field."""

    request: web.Request
    post: Any
    bsn: str
    channel: str
    reason: str | None
    now: datetime  # one moment for the whole action

    def withdraw(self, db: sqlite_utils.Database, recipient: Recipient) -> consent.WithdrawResult:
        svc, actor = self.request.app[services_key], self.request[ACTOR]
        return consent.withdraw(
            db,
            actor,
            patient_bsn=self.bsn,
            source_org_id=org_of(actor),
            recipient=recipient,
            channel=self.channel,
            reason=self.reason,
            now=self.now,
            stop_pending=exchange.stop_for_consent,
            policy=svc.settings.consent.policy,
        )

    async def run(
        self, write: Callable[[sqlite_utils.Database], consent.WithdrawResult]
    ) -> web.StreamResponse:
        request, bsn = self.request, self.bsn
        try:
            result = await request.app[services_key].store.write(write)
        except ConsentInputError as exc:
            name = field_of(exc)
            if name == "bsn":
                return _search(request, bsn, {"bsn": [FIELD_NL["bsn"]]}, status=422)
            key = "withdraw_" + (name if name in ("channel", "reason") else "recipient")
            errors = {key: [message_of(exc, name)]}
            return await patient_page(request, bsn, status=422, errors=errors)
        return _see_done(request, bsn, withdrawn=result)


async def _withdrawal_form(request: web.Request) -> _WithdrawalForm:
    post = await request.post()
    return _WithdrawalForm(
        request,
        post,
        bsn=str(post.get("bsn", "") or "").strip(),
        channel=str(post.get("channel", "") or ""),
        reason=str(post.get("reason", "") or "").strip() or None,
        now=request.app[services_key].now(),
    )


@requires("consent.withdraw")
async def withdraw_narrower(request: web.Request) -> web.StreamResponse:
    """Withdraw, in one action and one transaction, every narrower permit an objection
    leaves standing. The list is computed again here from the objection's id within the
    actor's own organisation (never taken from the form); each record's withdrawal is
    audited ``consent.withdraw`` by the register, and stops what it no longer permits."""
    form = await _withdrawal_form(request)
    actor, now = request[ACTOR], form.now
    objection_id = str(form.post.get("objection", "") or "")[:64]

    def write(db: sqlite_utils.Database) -> consent.WithdrawResult:
        current = consent.list_records(
            db, source_org_id=org_of(actor), patient_bsn=form.bsn, now=now
        )
        objection = next(
            (r for r in current if r.consent_id == objection_id and r.decision == "deny"), None
        )
        left = (
            consent.left_standing(current, objection, now, lambda b, n: directory.covers(db, b, n))
            if objection is not None
            else []
        )
        if not left:
            raise consent.NothingToWithdrawError(
                "no narrower permit left standing by this objection", field="recipient"
            )
        records: list[ConsentRecord] = []
        stopped: list[str] = []
        for recipient in dict.fromkeys(r.recipient for r in left):  # one withdrawal each
            result = form.withdraw(db, recipient)
            records += result.records
            stopped += [ref for ref in result.stopped if ref not in stopped]
        return consent.WithdrawResult(records=tuple(records), stopped=tuple(stopped))

    return await form.run(write)


# -- Post/Redirect/Get: a refresh shows the outcome again and records nothing twice ----------
#: What a record or withdraw did, for the page the browser is sent to next (GET). Kept in
#: this process's memory only (never in a URL, a cookie or the database: it holds a BSN),
#: per person, for DONE_SECONDS, at most DONE_MAX entries; after a restart the page sends the
#: GP back to the search.
DONE_SECONDS = 15 * 60
DONE_MAX = 1000
done_key = web.AppKey("consents_done", dict)


@dataclass(frozen=True, slots=True)
class _Done:
    user_id: int
    bsn: str
    at: float
    recorded: ConsentRecord | None = None
    withdrawn: consent.WithdrawResult | None = None


def _see_done(
    request: web.Request,
    bsn: str,
    *,
    recorded: ConsentRecord | None = None,
    withdrawn: consent.WithdrawResult | None = None,
) -> web.StreamResponse:
    done: dict[str, _Done] = request.app[done_key]
    now = monotonic()
    for token in [t for t, d in done.items() if now - d.at > DONE_SECONDS]:
        del done[token]
    while len(done) >= DONE_MAX:
        del done[next(iter(done))]
    token = secrets.token_urlsafe(18)
    done[token] = _Done(request[ACTOR].user_id, bsn, now, recorded, withdrawn)
    raise web.HTTPSeeOther(f"/consents/done/{token}")


@requires("consent.view")
async def done_page(request: web.Request) -> web.StreamResponse:
    """The patient's consents after a record or withdraw, with what was done (GET: a refresh
    shows it again, audited as a view, and writes no consent)."""
    entry = request.app[done_key].get(request.match_info["token"])
    if (
        entry is None
        or entry.user_id != request[ACTOR].user_id
        or monotonic() - entry.at > DONE_SECONDS
    ):
        raise web.HTTPSeeOther("/consents")
    return await patient_page(
        request, entry.bsn, recorded=entry.recorded, withdrawn=entry.withdrawn
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/consents", search_form, name="consents")
    app.router.add_post("/consents/patient", patient, name="consents_patient")
    app.router.add_post("/consents/record", record, name="consents_record")
    app.router.add_post("/consents/withdraw", withdraw, name="consents_withdraw")
    app.router.add_post(
        "/consents/withdraw-narrower", withdraw_narrower, name="consents_withdraw_narrower"
    )
    app[done_key] = {}
    app.router.add_get(r"/consents/done/{token:[A-Za-z0-9_-]{24}}", done_page, name="consents_done")
