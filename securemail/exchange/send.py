"""The exchange of execution requests: validate, check consent, sign, seal, queue; then track.

Invariant: a request row, its sealed message in the outbox and its audit rows commit in
one transaction, after the consent register said yes inside that same transaction; a
refusal at any step writes only an audit row that names the reason. Patient content is
read only through ``get_request``, which checks access and audits the view.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import consent, contentbox, deadlines
from securemail.access import SYSTEM, Actor, Resource, org_of, person, require
from securemail.accounts.auth import principal_profile, user_by_id
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import SecuremailError
from securemail.exchange import answer_copy, asks, changes, name_index, orders, thread
from securemail.exchange import idempotency as idem
from securemail.exchange.team_keys import teams_can_receive, usable_recipients
from securemail.form import attachments as attach
from securemail.form import kinds, render
from securemail.form import request as forms
from securemail.form.definition import FormDefinition
from securemail.message import notify
from securemail.openpgp.keyring import (
    Envelope,
    Fingerprint,
    SealInput,
    SigningError,
)
from securemail.region import directory
from securemail.region.directory import Team
from securemail.secretbox import SecretBox
from securemail.services import Services
from securemail.store import insert_row, next_value

log = logging.getLogger("securemail.exchange")


class PassphraseThrottledError(SecuremailError):
    """Too many wrong signing passphrases in a row: refused before gpg is asked."""

    code = "seal.passphrase_throttled"
    nl = (
        "Te vaak een onjuiste ondertekeningswachtzin. Er is niets verzonden; probeer het na "
        "{until} opnieuw."
    )
    http_status = 429


MIGRATIONS = Migrations("securemail.exchange")
DATA_CATEGORIES = "execution_request"
#: A request's reference: its kind's prefix (UVZ execution request, AWV care request), the
#: Dutch year and six digits. Asks (ASK-) have their own table and pages.
REFERENCE_RE = re.compile(r"(?!ASK)[A-Z]{3}-[0-9]{4}-[0-9]{6}")


@MIGRATIONS(name="0001_requests")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)""")
    db.execute(
        """CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            supersedes TEXT NOT NULL DEFAULT '',
            urgency TEXT NOT NULL,
            practice_org_id INTEGER NOT NULL REFERENCES organisations(id),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            patient_bsn TEXT NOT NULL,
            created_by INTEGER NOT NULL REFERENCES users(id),
            signer_fingerprint TEXT NOT NULL,
            recipient_fingerprints TEXT NOT NULL,   -- JSON list
            skipped_members TEXT NOT NULL DEFAULT '[]', -- JSON: [{name, fingerprint, why}]
            document BLOB NOT NULL,                 -- the signed canonical JSON
            message_id TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'open',     -- open | answered | withdrawn | superseded
            answer TEXT NOT NULL DEFAULT '',        -- JSON of the team's answer
            answer_due TEXT NOT NULL DEFAULT '',
            notified TEXT NOT NULL DEFAULT '',      -- final delivery state the practice was told of
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX requests_practice ON requests (practice_org_id, created_at)")
    db.execute("CREATE INDEX requests_team ON requests (team_id, created_at)")
    db.execute("CREATE INDEX requests_patient ON requests (patient_bsn)")


@MIGRATIONS(name="0002_loop")
def _m2(db: sqlite_utils.Database) -> None:
    """Closing the loop: the GP's detached JSON signature (kept so that a passed-on request
    can travel with it), the supersedes chain, overdue marks, and each team a request went
    to (request_hops)."""
    for column in (
        "json_signature BLOB NOT NULL DEFAULT x''",
        "superseded_by TEXT NOT NULL DEFAULT ''",
        "overdue_at TEXT NOT NULL DEFAULT ''",  # set once by the deadline check
        "answered_at TEXT NOT NULL DEFAULT ''",
        "ask_reference TEXT NOT NULL DEFAULT ''",
    ):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column}")
    db.execute("CREATE INDEX requests_open ON requests (state, overdue_at)")
    db.execute(
        """CREATE TABLE request_hops (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL REFERENCES requests(reference),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            message_id TEXT NOT NULL,
            sent_at TEXT NOT NULL,
            sent_by INTEGER REFERENCES users(id),   -- the GP, or the nurse who passed it on
            outcome TEXT NOT NULL DEFAULT '',       -- '' | geaccepteerd | afgewezen | doorbemiddeld
            reason TEXT NOT NULL DEFAULT '',
            outcome_by INTEGER REFERENCES users(id),
            outcome_at TEXT NOT NULL DEFAULT '')"""
    )
    db.execute("CREATE INDEX request_hops_reference ON request_hops (reference, id)")


@MIGRATIONS(name="0003_idempotency")
def _m3(db: sqlite_utils.Database) -> None:
    """Client-chosen keys of sends (securemail.exchange.idempotency)."""
    db.execute(
        """CREATE TABLE idempotency (
            user_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            body_sha256 TEXT NOT NULL,
            reference TEXT NOT NULL DEFAULT '',     -- set in the request's own transaction
            created_at REAL NOT NULL,
            PRIMARY KEY (user_id, key))"""
    )


@MIGRATIONS(name="0004_signed_order")
def _m4(db: sqlite_utils.Database) -> None:
    """The GP's signed order (RFC 3156 6.1 multipart/signed, exactly as encrypted for the
    first team), sealed at rest like the document, so a pass-on can nest it unchanged."""
    db.execute("ALTER TABLE requests ADD COLUMN signed_order TEXT NOT NULL DEFAULT ''")


@MIGRATIONS(name="0005_attachments")
def _m5(db: sqlite_utils.Database) -> None:
    """Attachments of a request (checked by content), sealed like its document, so passing
    it on can carry them; purged with the request's content."""
    db.execute(
        """CREATE TABLE request_attachments (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL REFERENCES requests(reference),
            position INTEGER NOT NULL,
            name TEXT NOT NULL,                     -- neutral: bijlage-1.pdf
            content_type TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '',          -- contentbox-sealed base64; '' purged
            UNIQUE (reference, position))"""
    )


@MIGRATIONS(name="0006_data_categories")
def _m6(db: sqlite_utils.Database) -> None:
    """What a request carries for the consent register and the audit trail (its form's
    data_category, plus execution_request when a care request holds reserved procedures):
    the delivery worker's last consent check reads it from the row."""
    db.execute(
        "ALTER TABLE requests ADD COLUMN data_categories TEXT NOT NULL DEFAULT 'execution_request'"
    )


def send_categories(svc: Services, req: kinds.RequestDocument) -> tuple[str, ...]:
    """The consent data categories a send carries: its kind's own (the form's data_category)
    and execution_request when it holds reserved procedures (one signature, both checked)."""
    definition = svc.definition_for(req.form_id) or svc.definition
    own = definition.data_category
    return (own, "execution_request") if req.procedures and own != "execution_request" else (own,)


def check_categories(
    categories: tuple[str, ...], check: Callable[[str], consent.ConsentDecision]
) -> consent.ConsentDecision:
    """One register check per category (each audited); the first refusal decides, else the
    kind's own category's permit."""
    decisions = []
    for category in categories:
        decision = check(category)
        if not decision.permitted:
            return decision
        decisions.append(decision)
    return decisions[0]


@MIGRATIONS(name="0007_hop_care_start")
def _m7(db: sqlite_utils.Database) -> None:
    """The planned start of care an accepting team gave (ISO with offset): metadata for the
    adherence figures' time to start of care, kept like the hop's times, not content."""
    db.execute("ALTER TABLE request_hops ADD COLUMN care_start TEXT NOT NULL DEFAULT ''")


@MIGRATIONS(name="0008_worklist_indexes")
def _m8(db: sqlite_utils.Database) -> None:
    """The work lists' order (exchange/worklist.py) from the index alone: a practice's or a
    team's requests by state and deadline (the rowid is in every index), so a page sorts narrow
    entries instead of reading every row of a big practice with its sealed document."""
    db.execute(
        "CREATE INDEX requests_practice_worklist ON requests (practice_org_id, state, answer_due)"
    )
    db.execute("CREATE INDEX requests_team_worklist ON requests (team_id, state, answer_due)")


@MIGRATIONS(name="0009_worklist_closed_walk")
def _m9(db: sqlite_utils.Database) -> None:
    """A page of a big list without sorting the practice (exchange/worklist.py): the requests
    that are no longer open in the list's order, those with a deadline first, then newest
    first, straight from an index; the open ones (few) are sorted apart. Partial (closed
    requests only); ``id DESC`` so one backward-free walk gives the mixed order; answer_due and
    state are carried so the walk never reads a row (sqlite 3.40 needs every column an
    expression or the partial WHERE uses to call an index covering)."""
    for name, column in (("practice", "practice_org_id"), ("team", "team_id")):
        db.execute(
            f"CREATE INDEX requests_{name}_closed ON requests "
            f"({column}, (answer_due = ''), id DESC, answer_due, state) WHERE state <> 'open'"
        )


@MIGRATIONS(name="0010_request_name_tokens")
def _m10(db: sqlite_utils.Database) -> None:
    """The keyed search tokens of each request's patient name (exchange/name_index.py), and
    those of every request stored before them, in one pass (the content key is loaded before
    the migrations run: home.open_services).

    A token row carries its request's practice and team so that a search reads the matches
    in its own scope only (a common word such as "jansen" matches tens of thousands of rows
    across a region, a few hundred in one practice); the scope itself is still decided on
    the requests row. A trigger keeps the team in step when a request is passed on."""
    # The key's columns come first: with a column outside the key between them, SQLite
    # 3.40's integrity_check reports "NULL value in ...team_id" on every row of a WITHOUT
    # ROWID table, and a restore refuses the archive on that (tests/test_backup.py).
    db.execute(
        "CREATE TABLE request_name_tokens (token BLOB NOT NULL, practice_org_id INTEGER NOT "
        "NULL, request_id INTEGER NOT NULL, team_id INTEGER NOT NULL, "
        "PRIMARY KEY (token, practice_org_id, request_id)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE INDEX request_name_tokens_team ON request_name_tokens (token, team_id, request_id)"
    )
    db.execute("CREATE INDEX request_name_tokens_request ON request_name_tokens (request_id)")
    db.execute(
        "CREATE TRIGGER request_name_tokens_team_moves AFTER UPDATE OF team_id ON requests "
        "BEGIN UPDATE request_name_tokens SET team_id = NEW.team_id "
        "WHERE request_id = NEW.id; END"
    )
    db.execute(
        "CREATE TRIGGER request_name_tokens_go_with_the_row AFTER DELETE ON requests "
        "BEGIN DELETE FROM request_name_tokens WHERE request_id = OLD.id; END"
    )
    backfill_name_tokens(db)


def backfill_name_tokens(db: sqlite_utils.Database, *, batch: int = 5000) -> int:
    """Write the name tokens of every request with content and none yet; the count done. A
    document that does not open is skipped (the request page reports it; a search cannot)."""
    if db.execute("SELECT 1 FROM requests LIMIT 1").fetchone() is None:
        return 0  # a new home (its content key may not even be loaded by this migration)
    box = contentbox.box_for(db)
    # retention's migration adds the purge mark after this set's migrations: none yet, none
    purged = (
        "content_purged_at != ''" if "content_purged_at" in db["requests"].columns_dict else "0"
    )
    todo = db.conn.execute(
        "SELECT id, practice_org_id, team_id, reference, document FROM requests r "  # noqa: S608
        f"WHERE NOT ({purged}) AND NOT EXISTS "
        "(SELECT 1 FROM request_name_tokens t WHERE t.request_id = r.id)"
    )
    done, rows = 0, []
    for request_id, practice, team, reference, document in todo:
        try:
            name = _patient_name(_document_text(db, reference, document))
        except (contentbox.ContentUnreadableError, ValueError):
            continue
        rows += [(t, practice, team, request_id) for t in name_index.tokens_with(box, name)]
        done += 1
        if len(rows) >= batch:
            name_index.insert(db, rows)
            rows = []
    name_index.insert(db, rows)
    return done


def _document_text(db: sqlite_utils.Database, reference: str, stored: object) -> str:
    """A stored document's text: opened, or as it is in a home from before the sealing
    (retention's migration seals it after this set's migrations)."""
    if stored is None or stored in ("", b""):
        return "{}"
    if isinstance(stored, bytes | str) and not SecretBox.is_sealed(stored):
        return stored.decode("utf-8") if isinstance(stored, bytes) else stored
    return contentbox.open_value(db, "requests", "document", reference, stored)


def _patient_name(document: bytes | str) -> str:
    """The patient's name in a request document's JSON ('' when it has none)."""
    patient = json.loads(document).get("patient", {})
    return str(patient.get("name", "")) if isinstance(patient, dict) else ""


def store_attachments(
    db: sqlite_utils.Database, reference: str, items: tuple[attach.Attachment, ...]
) -> None:
    for i, item in enumerate(items):
        row_id = insert_row(
            db,
            "request_attachments",
            {
                "reference": reference,
                "position": i,
                "name": item.name,
                "content_type": item.content_type,
            },
        )
        # sealed under its row id (contentbox.SEALED_COLUMNS), so it opens only in its row
        sealed = contentbox.seal(
            db, "request_attachments", "data", row_id, base64.b64encode(item.data).decode("ascii")
        )
        db.execute("UPDATE request_attachments SET data = ? WHERE id = ?", [sealed, row_id])


def stored_attachments(db: sqlite_utils.Database, reference: str) -> tuple[attach.Attachment, ...]:
    """A request's attachments as sent (none once its content is purged)."""
    rows = db.execute(
        "SELECT id, name, content_type, data FROM request_attachments "
        "WHERE reference = ? ORDER BY position",
        [reference],
    ).fetchall()
    out = []
    for row_id, name, kind, data in rows:
        text = contentbox.open_value(db, "request_attachments", "data", row_id, data)
        if text:
            out.append(attach.Attachment(name, kind, base64.b64decode(text)))
    return tuple(out)


def allocate_reference(db: sqlite_utils.Database, year: int, prefix: str = "UVZ") -> str:
    """<prefix>-<year>-<6 digits> (the form's prefix: UVZ, AWV), increasing per prefix and
    year and never reused; a refused send burns its number (audited), a restore skips ahead
    (docs/backup.md)."""
    name = f"{prefix}-{year}"
    return f"{name}-{next_value(db, name):06d}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated request, its receiving team and its renderings: what the preview shows."""

    request: kinds.RequestDocument
    team: Team
    rendered: render.RenderedDocument
    definition: FormDefinition | None = None  # None: the execution request
    attachments: tuple[attach.Attachment, ...] = ()

    @property
    def reference(self) -> str:
        """The gateway's reference: ``prepare`` assigns it before it renders."""
        if self.request.reference is None:
            raise ValueError("a prepared request always has the gateway's reference")
        return self.request.reference


@dataclass(frozen=True, slots=True)
class SendResult:
    reference: str
    team_address: str
    recipient_fingerprints: tuple[str, ...]
    skipped: tuple[dict[str, str], ...] = field(default_factory=tuple)


def _field_error(path: str, code: str, nl: str, en: str) -> forms.FormInvalidError:
    return forms.FormInvalidError([forms.FieldError(path, code, nl, en)])


def _with_principal(
    db: sqlite_utils.Database, actor: Actor, data: dict[str, Any]
) -> dict[str, Any]:
    """The principal section comes from the signed-in GP's profile; the form cannot alter it.
    Its function (``principal.role``) is the one enrolled with the account, checked on each
    send: a submission naming another function, or an account with none, is a field error."""
    data = dict(data)
    # a practice assistant prepares under a GP: that GP's profile until a GP signs (the send
    # is a GP's only, and fills in the signing GP's own)
    uid = getattr(actor, "responsible_user_id", None) or actor.user_id
    if uid is not None:
        profile = principal_profile(db, user_by_id(db, uid))
        given = data.get("principal")
        given = given if isinstance(given, dict) else {}
        _check_function(profile.get("role", ""), given.get("role"))
        data["principal"] = {**given, **profile}
    return data


def _check_function(enrolled: str, given: Any) -> None:
    if not enrolled:
        raise _field_error(
            "principal.role",
            "principal.function_missing",
            "Uw account heeft geen functie; vraag de beheerder die vast te leggen.",
            "the account has no enrolled function (user add --function)",
        )
    if isinstance(given, str) and given.strip() and given.strip() != enrolled:
        raise _field_error(
            "principal.role",
            "principal.role_mismatch",
            "De functie op het formulier is niet de functie waarmee u bent ingeschreven.",
            "principal.role differs from the function enrolled with the account",
        )


def _target(db: sqlite_utils.Database, team: Team) -> consent.Target:
    org = directory.org_by_id(db, team.org_id)
    return consent.Target(
        team_id=team.id,
        org_id=team.org_id,
        category=team.category,
        label=team.address,
        org_code=org.code,
    )


def _check_receiver(
    svc: Services, db: sqlite_utils.Database, actor: Actor, address: str, ask: str | None = None
) -> Team:
    team = directory.find_team(db, address)
    if team is None or not team.active:
        raise _field_error(
            "receiver.team_address",
            "team.unknown",
            "Dit wijkteam is niet bekend bij de gateway.",
            "unknown team address",
        )
    allowed = directory.allowed_receivers(
        db, org_of(actor), svc.settings.gateway.passing_on_address
    )
    allowed += asks.asking_teams(db, org_of(actor), ask)  # the team that asked, answered
    if team.id not in {t.id for t in allowed}:
        raise _field_error(
            "receiver.team_address",
            "team.not_preferred",
            "Dit wijkteam is geen voorkeursaanbieder van uw praktijk.",
            "team is not one of the practice's preferred providers",
        )
    return team


def never_gated(req: kinds.RequestDocument, ask: str | None) -> str:
    """Which risk-reducing kind this send is (consent.NEVER_GATED), or '': a withdrawal
    (intrekking) of an earlier order, or the GP's answer to a nurse's ask."""
    if req.kind == "intrekking":
        return "withdrawal"
    if ask:
        return "ask_answer"
    return ""


def consent_for_send(
    svc: Services,
    db: sqlite_utils.Database,
    actor: Actor,
    req: kinds.RequestDocument,
    team: Team,
    *,
    now: datetime,
    ask: str | None,
) -> consent.ConsentDecision:
    """The register's answer for a GP's send under the configured policy (audited), or the
    exemption of a risk-reducing send, which the register never stops."""
    target = _target(db, team)
    why = never_gated(req, ask)
    if why:
        return consent.exempt(target, why)
    return check_categories(
        send_categories(svc, req),
        lambda category: consent.check(
            db,
            actor,
            patient_bsn=req.patient_bsn,
            source_org_id=org_of(actor),
            target=target,
            data_category=category,
            now=now,
            audit_object=("request", req.reference or ""),
            policy=svc.settings.consent.policy,
        ),
    )


async def prepare(
    svc: Services,
    actor: Actor,
    data: dict[str, Any],
    *,
    reference: str,
    to: str | None = None,
    ask: str | None = None,
) -> Prepared:
    """Validate a submission: form rules, receiver, consent (audited). Raises on any no."""
    require(actor, "request.create", Resource("request", org_id=actor.org_id))
    definition = definition_of(svc, data)
    data = dict(data)
    limits = svc.settings.attachments
    # decoding and parsing up to max_bytes takes a few hundred ms: not on the event loop
    files = await asyncio.to_thread(
        attach.check_attachments,
        data.pop("attachments", None),
        max_bytes=limits.max_bytes_per_message,
        max_count=limits.max_count,
    )
    data = await svc.store.read(lambda db: _with_principal(db, actor, data))
    if to:
        given = data.get("receiver")
        data["receiver"] = {**(given if isinstance(given, dict) else {}), "team_address": to}
    signing = svc.now()  # the moment of signing: the request's date (forms.check_issued)
    req = kinds.parse_document(
        definition, data, now=signing, reference=reference, signed_at=signing
    )

    def receiver(db: sqlite_utils.Database) -> Team:
        team = _check_receiver(svc, db, actor, req.team_address, ask)
        changes.require_supersedable(db, org_of(actor), req, team.id)
        return team

    team = await svc.store.read(receiver)
    now = svc.now()

    def check(db: sqlite_utils.Database) -> consent.ConsentDecision:
        return consent_for_send(svc, db, actor, req, team, now=now, ask=ask)

    # The check's audit row commits first; a refusal is raised only after that.
    (await svc.store.write(check)).raise_if_refused()
    # jinja2 renders in a thread: milliseconds per request that other requests' I/O need not
    # wait for (the environment is built once and rendering is thread-safe)
    rendered = await asyncio.to_thread(
        render.render_request,
        definition,
        req,
        link=page_link(svc, req),
        attachments=attach.labels(files),
    )
    return Prepared(req, team, rendered, definition, files)


def definition_of(svc: Services, data: Any) -> FormDefinition:
    """The form a submission names by ``form_id`` (none: the execution request); an
    unknown one is a field error, never a configuration error."""
    form_id = data.get("form_id") if isinstance(data, dict) else None
    definition = svc.definition_for(form_id)
    if definition is None:
        raise _field_error(
            "form_id",
            "form.unknown",
            "Dit formulier kent de gateway niet.",
            "unknown form_id",
        )
    return definition


def definition_for_document(svc: Services, req: kinds.RequestDocument) -> FormDefinition:
    """The form of a stored request (its definition must still be installed)."""
    definition = svc.definition_for(req.form_id)
    if definition is None:
        raise forms.DocumentInvalidError(f"form {req.form_id} is not installed", field="form_id")
    return definition


def page_link(svc: Services, req: kinds.RequestDocument) -> str | None:
    """The request's page in the web app: the reference only, never patient data (None for
    a preview, which has no reference yet)."""
    if not REFERENCE_RE.fullmatch(req.reference or ""):
        return None
    return f"{svc.settings.gateway.base_url.rstrip('/')}/requests/{req.reference}"


#: How long a repeat waits for the first send under its key before answering "in progress".
BUSY_WAIT_SECONDS = 60.0


async def send(
    svc: Services,
    actor: Actor,
    data: dict[str, Any],
    passphrase: str,
    *,
    to: str | None = None,
    ask: str | None = None,
    idempotency_key: str | None = None,
) -> SendResult:
    """Validate, check consent, sign, seal and queue one request; durable when this returns.
    ``ask`` names a nurse's ask (ASK-...) this request answers; it is fulfilled in the same
    transaction (same practice, patient and team, or a field error). With
    ``idempotency_key``, a repeat of the same send returns the first one's result
    (securemail.exchange.idempotency)."""
    if not idempotency_key:
        return await _send_once(svc, actor, data, passphrase, to=to, ask=ask, key=None)
    user = person(actor).user_id
    key = idem.check_key(idempotency_key)
    digest = idem.body_hash({"request": data, "to": to or "", "ask": ask or ""})
    first = await _claim_key(svc, user, key, digest)
    if first:
        return await svc.store.read(lambda db: _result_of(db, first))
    try:
        return await _send_once(svc, actor, data, passphrase, to=to, ask=ask, key=key)
    except BaseException:
        # Nothing was stored (the key gets its reference in the request's transaction).
        with contextlib.suppress(Exception):  # a full disk: the key is taken over when stale
            await asyncio.shield(svc.store.write(lambda db: idem.release(db, user, key)))
        raise


async def _claim_key(svc: Services, user: int, key: str, digest: str) -> str:
    """Take ``key`` (""), or the reference of the first send under it, waiting for it while
    it is still sealing; IdempotencyBusyError after BUSY_WAIT_SECONDS."""
    waited = 0.0
    while True:
        now = svc.now().timestamp()
        claim = await svc.store.write(
            lambda db, now=now: idem.claim(db, user, key, digest, now)  # type: ignore[misc]
        )
        if claim.state != "busy":
            return claim.reference
        if waited >= BUSY_WAIT_SECONDS:
            raise idem.IdempotencyBusyError("a send under this key is still running", key=key)
        await asyncio.sleep(0.2)  # the first send is sealing: its answer is ours too
        waited += 0.2


def _result_of(db: sqlite_utils.Database, reference: str) -> SendResult:
    """The answer the first send under a key gave, from its stored request."""
    row = db.execute(
        "SELECT team_id, recipient_fingerprints, skipped_members FROM requests WHERE reference = ?",
        [reference],
    ).fetchone()
    team = directory.team_by_id(db, int(row[0]))
    return SendResult(
        reference,
        team.address,
        tuple(json.loads(row[1])),
        tuple(json.loads(row[2])),
    )


async def _send_once(
    svc: Services,
    actor: Actor,
    data: dict[str, Any],
    passphrase: str,
    *,
    to: str | None,
    ask: str | None,
    key: str | None,
) -> SendResult:
    year = deadlines.local(svc.now(), svc.settings.deadlines).year  # the Dutch year, not UTC's
    known = svc.definition_for(data.get("form_id") if isinstance(data, dict) else None)
    prefix = (known or svc.definition).reference_prefix  # an unknown form: refused, audited
    # Untrusted input: "patient" may be anything; only a string BSN in an object is used.
    given = data.get("patient") if isinstance(data, dict) else None
    patient = str(given.get("bsn", "")) if isinstance(given, dict) else ""
    taking = asyncio.ensure_future(svc.store.write(lambda db: allocate_reference(db, year, prefix)))
    try:
        reference = await asyncio.shield(taking)
    except asyncio.CancelledError as exc:
        # Cancelled while the number was being taken: the store's thread commits it all the
        # same, so the burnt number gets its refused row like any send that died later.
        async def refuse_when_taken(why: BaseException) -> None:
            await _audit_refusal(svc, actor, await taking, patient, why)

        with contextlib.suppress(Exception):
            await asyncio.shield(refuse_when_taken(exc))
        raise
    try:
        prepared = await prepare(svc, actor, data, reference=reference, to=to, ask=ask)
        if ask:
            await svc.store.read(lambda db: asks.require_fulfillable(db, actor, ask, prepared))
        return await _seal_and_queue(svc, actor, prepared, passphrase, ask, key)
    except SecuremailError as exc:
        await _audit_refusal(svc, actor, reference, patient, exc)
        raise
    except BaseException as exc:
        # Died mid-way (a bug, a full disk, the client gone: cancelled): the number is burnt
        # all the same, and every number taken has its audit row (docs/backup.md).
        with contextlib.suppress(Exception):
            await asyncio.shield(_audit_refusal(svc, actor, reference, patient, exc))
        raise


async def _audit_refusal(
    svc: Services, actor: Actor, reference: str, patient: str, exc: BaseException
) -> None:
    bsn = patient if forms.is_valid_bsn(patient) else ""
    code = exc.code if isinstance(exc, SecuremailError) else f"interrupted:{type(exc).__name__}"
    event = audit.AuditEvent.of(
        actor,
        "request.send",
        outcome="refused",
        outcome_detail=code,
        patient_id=bsn,
        object_type="request",
        object_id=reference,
        data_categories=DATA_CATEGORIES,
        sender_org=actor.org_code,
        recipient_org=str(getattr(exc, "context", {}).get("address", "")),
    )
    await svc.store.write(lambda db: audit.record(db, event))
    log.info("request %s refused: %s", reference, code)


#: words in the protected Subject (inside the encryption only): what kind of request it is
_KIND_WORDS = {"wijziging": "WIJZIGING", "verlenging": "VERLENGING", "intrekking": "INTREKKING"}


def protected_subject(req: kinds.RequestDocument, subject: str = "Uitvoeringsverzoek") -> str:
    """The real Subject, inside the encryption (RFC 9788): urgency, kind and reference, and
    the reference replaced; never patient data. "SPOED WIJZIGING Uitvoeringsverzoek
    UVZ-2026-000124 (vervangt UVZ-2026-000123)"."""
    words = ["SPOED"] if req.urgency == "spoed" else []
    words += [_KIND_WORDS[req.kind]] if req.kind in _KIND_WORDS else []
    words.append(f"{subject} {req.reference}")
    if req.supersedes and REFERENCE_RE.fullmatch(req.supersedes):
        words.append(f"(vervangt {req.supersedes})")
    return " ".join(words)


async def signer_address(svc: Services, signer: Fingerprint, username: str) -> str:
    """The From of what ``signer`` signs: the GP's address at the gateway's domain when it
    is on the key (enrolment adds it), else the key's first user id address; seal() checks
    that it is on the key, so a signer and its From always agree."""
    uids = (await svc.keyring.key_info(signer)).uids
    own = svc.settings.gateway.gp_address(username)
    return own if own in uids else (uids[0] if uids else svc.settings.gateway.from_address)


async def _seal_and_queue(
    svc: Services,
    actor: Actor,
    prepared: Prepared,
    passphrase: str,
    ask: str | None,
    key: str | None = None,
) -> SendResult:
    req, team = prepared.request, prepared.team
    reference = prepared.reference
    words = (prepared.definition or svc.definition).subject  # neutral: the kind, no patient
    recipients, skipped = await usable_recipients(svc, team)
    gp = await svc.store.read(lambda db: user_by_id(db, person(actor).user_id))
    signer = Fingerprint(gp.signing_fingerprint)
    replaces = ""
    if req.supersedes:
        earlier = await svc.store.read(lambda db: request_row(db, req.supersedes or ""))
        replaces = str(earlier["message_id"]) if earlier else ""
    envelope = Envelope(
        sender=svc.settings.gateway.from_address,
        author=await signer_address(svc, signer, gp.username),
        recipient=team.address,
        subject=f"{words} {reference}",
        protected_subject=protected_subject(req, words),
        in_reply_to=replaces,
        reply_to=svc.settings.gateway.reply_to(),
        extra_headers=(("X-Securemail-Reference", reference),),
    )
    doc = prepared.rendered
    guard = str(signer)  # one key per GP: the guesses against that key
    blocked = svc.passphrase_guesses.blocked_until(guard, svc.now())
    if blocked is not None:
        until = deadlines.local(blocked, svc.settings.deadlines).strftime("%H:%M:%S")
        raise PassphraseThrottledError("signing passphrase throttled", until=until)
    try:
        sealed = await svc.keyring.seal(
            SealInput(
                reference=reference,
                text=doc.text,
                html=doc.html,
                json=doc.json,
                signer_public_key=await svc.keyring.export_public(signer),
                attachments=tuple((a.name, a.content_type, a.data) for a in prepared.attachments),
            ),
            signer=signer,
            passphrase=passphrase,
            recipients=recipients,
            envelope=envelope,
            keep_signed_order=True,  # RFC 3156 6.1: the GP's signature survives passing on
        )
    except SigningError:
        svc.passphrase_guesses.fail(guard, svc.now())
        raise
    svc.passphrase_guesses.succeed(guard)
    now = svc.now_iso()
    answer_due = ""  # set by deadlines once the relay accepted it

    categories = ",".join(send_categories(svc, req))

    def commit(db: sqlite_utils.Database) -> consent.ConsentDecision:
        # Consent again, inside the transaction that queues: a withdrawal cannot slip between.
        decision = consent_for_send(svc, db, actor, req, team, now=svc.now(), ask=ask)
        if not decision.permitted:
            return decision
        changes.require_supersedable(db, org_of(actor), req, team.id)  # no race either
        if ask:
            asks.require_fulfillable(db, actor, ask, prepared)
        db.table("requests").insert(
            {
                "reference": reference,
                "data_categories": categories,
                "kind": req.kind,
                "supersedes": req.supersedes or "",
                "urgency": req.urgency,
                "practice_org_id": actor.org_id,
                "team_id": team.id,
                "patient_bsn": req.patient_bsn,
                "created_by": actor.user_id,
                "signer_fingerprint": sealed.signer_fingerprint,
                "recipient_fingerprints": json.dumps(list(sealed.recipient_fingerprints)),
                "skipped_members": json.dumps(skipped),
                "document": contentbox.seal(
                    db, "requests", "document", reference, doc.json.decode("utf-8")
                ),
                "message_id": sealed.message_id,
                "answer_due": answer_due,
                "json_signature": sealed.json_signature,
                "signed_order": contentbox.seal(
                    db, "requests", "signed_order", reference, sealed.signed_order.decode("ascii")
                ),
                "ask_reference": ask or "",
                "created_at": now,
                "updated_at": now,
            }
        )
        # the name as the stored document holds it (what a search confirms against)
        name_index.store(db, reference, _patient_name(doc.json))
        db.table("request_hops").insert(
            {
                "reference": reference,
                "team_id": team.id,
                "message_id": sealed.message_id,
                "sent_at": now,
                "sent_by": actor.user_id,
            }
        )
        store_attachments(db, reference, prepared.attachments)
        common: dict[str, Any] = {
            "patient_id": req.patient_bsn,
            "object_type": "request",
            "object_id": reference,
            "data_categories": categories,
            "sender_org": actor.org_code,
            "recipient_org": team.address,
            "consent_id": decision.consent_ref,
            "check_consent": decision.audit_value,
            "check_authz": "permit:gp-own-practice",
        }
        src = svc.settings.gateway.source_id
        created = f"supersedes={req.supersedes}" if req.supersedes else ""
        created += f"{'; ' if created else ''}ask={ask}" if ask else ""
        audit.record(
            db,
            audit.AuditEvent.of(actor, "request.create", **common, outcome_detail=created),
        )
        changes.apply(db, actor, req, now=now, source_id=src, audit_common=common)
        orders.record(db, reference, req, now)  # end/evaluation dates outlive the content
        if ask:
            asks.fulfil(db, actor, ask, reference, now=now)
        if key:  # the key names its request in the same commit
            idem.finish(db, person(actor).user_id, key, reference)
        audit.record(
            db,
            audit.AuditEvent.of(actor, "request.sign", **common, outcome_detail=f"signer={signer}"),
        )
        outbox.enqueue(
            db,
            sealed,
            actor=actor,
            now=svc.now().timestamp(),
            patient_id=req.patient_bsn,
            sender_org=actor.org_code,
            recipient_org=team.address,
            consent_id=common["consent_id"],
            data_categories=categories,
        )
        detail = "to=" + ",".join(f[-16:] for f in sealed.recipient_fingerprints)
        if skipped:
            detail += "; left out=" + ",".join(
                s["fingerprint"][-16:] + ":" + s["why"] for s in skipped
            )
        audit.record(
            db,
            audit.AuditEvent.of(actor, "request.send", **common, outcome_detail=detail),
        )
        return decision

    (await svc.store.write(commit)).raise_if_refused()
    svc.queued()
    log.info("request %s sealed and queued for %s", reference, team.address)
    return SendResult(reference, team.address, tuple(sealed.recipient_fingerprints), tuple(skipped))


# -- reading (securemail.exchange.view; re-exported for callers of the exchange) --------------

from securemail.exchange.view import (  # noqa: E402  (after the migrations it reads)
    follow_up_source,
    get_request,
    list_requests,
    request_row,
    require_row,
    status,
)

__all__ = [
    "Hooks", "Prepared", "SendResult", "allocate_reference", "consent_target_for",
    "follow_up_source", "get_request", "list_requests", "prepare", "render_text", "request_row",
    "require_row", "send", "status", "stop_for_consent", "teams_can_receive", "usable_recipients",
]  # fmt: skip


# -- hooks for the delivery worker and the consent register ------------------------------------


def stop_for_consent(
    db: sqlite_utils.Database,
    patient_bsn: str,
    recipient: consent.Recipient,
    /,
    *,
    source_org_id: int,
    still_permitted: Callable[..., bool],
    now: float,
) -> list[str]:
    """Stop this practice's requests for the patient that have not left and that the register,
    after a withdrawal, no longer permits; each stop is audited by outbox.stop. A
    risk-reducing send (a withdrawal of an order, an answer to an ask) is never stopped."""
    del recipient  # still_permitted decides per request, whatever level was withdrawn
    stopped = []
    rows = db.execute(
        "SELECT r.reference, r.team_id FROM requests r WHERE r.patient_bsn = ? "
        "AND r.practice_org_id = ? AND r.kind != 'intrekking' AND r.ask_reference = ''",
        [patient_bsn, source_org_id],
    ).fetchall()
    for reference, team_id in rows:
        team = directory.team_by_id(db, team_id)
        if still_permitted(_target(db, team)):
            continue
        if outbox.stop(db, reference, reason=consent.STOP_REASON, actor=SYSTEM, now=now):
            stopped.append(reference)
    return stopped


def consent_target_for(
    db: sqlite_utils.Database, reference: str
) -> tuple[str, int, consent.Target]:
    row = require_row(db, reference)
    team = directory.team_by_id(db, row["team_id"])
    return row["patient_bsn"], row["practice_org_id"], _target(db, team)


def render_text(svc: Services, view: dict[str, Any]) -> str:
    """The Dutch text rendering of a stored request (for its page)."""
    req = kinds.document_from(view["document"])
    definition = definition_for_document(svc, req)
    return render.render_request(definition, req, link=page_link(svc, req)).text


class Hooks:
    """The delivery worker's hooks for request rows: consent again just before the relay, and
    after a final outcome the answer deadline and one notice to the practice (idempotent)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def before_send(self, row: outbox.OutboxRow) -> None:
        if row.kind != "request":
            return
        svc = self.svc
        now = svc.now()

        def check(db: sqlite_utils.Database) -> consent.ConsentDecision | None:
            found = request_row(db, row.reference)
            if found is None or answer_copy.is_answer_copy(db, row.message_id):
                return None  # an answer going home to its practice: never gated
            if thread.is_thread_mail(db, row.message_id):
                return None  # a message in the request's conversation (NEVER_GATED)
            if found["kind"] == "intrekking" or found["ask_reference"]:
                return None  # risk-reducing: never gated (consent.NEVER_GATED)
            bsn, practice, target = consent_target_for(db, row.reference)
            return check_categories(
                tuple(found["data_categories"].split(",")),
                lambda category: consent.check(
                    db,
                    SYSTEM,
                    patient_bsn=bsn,
                    source_org_id=practice,
                    target=target,
                    data_category=category,
                    now=now,
                    audit_object=("request", row.reference),
                    sender_org=directory.org_by_id(db, practice).code,
                    policy=svc.settings.consent.policy,
                ),
            )

        decision = await svc.store.write(check)
        if decision is not None:
            decision.raise_if_refused()

    async def on_final(self, row: outbox.OutboxRow) -> None:
        if row.kind != "request":
            return
        svc = self.svc
        now = svc.now()

        def finish(db: sqlite_utils.Database) -> None:
            req = request_row(db, row.reference)
            if req is None or req["notified"] == row.status:
                return
            if row.message_id != req["message_id"]:
                return  # an earlier hop's message: the request has moved on to another team
            changes: dict[str, Any] = {"notified": row.status, "updated_at": svc.now_iso()}
            if row.status == "sent" and not req["answer_due"]:
                due_at = deadlines.due(now, req["urgency"], "answer", svc.settings.deadlines)
                changes["answer_due"] = due_at.isoformat(timespec="minutes")
            db.table("requests").update(req["id"], changes)
            practice = directory.org_by_id(db, req["practice_org_id"])
            if not practice.notify_address:
                return
            if row.status == "sent":
                notice = notify.notice_delivered(
                    row.reference, practice.notify_address, svc.settings
                )
            elif row.status == "stopped":
                notice = notify.notice_stopped(
                    row.reference, practice.notify_address, row.stop_reason, svc.settings
                )
            else:
                notice = notify.notice_failed(
                    row.reference,
                    practice.notify_address,
                    row.stop_reason or "smtp.rejected",
                    svc.settings,
                )
            outbox.enqueue(
                db, notice, actor=SYSTEM, now=svc.now().timestamp(), sender_org=practice.code
            )

        await svc.store.write(finish)
        svc.queued()  # the practice's notice
