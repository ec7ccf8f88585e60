"""The conversation on a request or an ask: short messages between the GP's practice and
the district nursing team, keyed by the reference (UVZ-/AWV-/ASK-...).

Who: the practice of the request or ask (its GPs and assistants) and the nurses of the team
it is with now (``thread.read``/``thread.post``, scoped in securemail.access like the
request view: a team it was passed on from no longer sees it, as its request page does
not). Anyone else gets the same 404 as for no such reference, with an ``access.denied``
row.

Invariants:
- a message's body is sealed at rest (contentbox, keyed by the row id), at most
  ``MAX_BODY`` characters under the form's one text policy (``clean_text``); a thread holds
  at most ``MAX_MESSAGES`` messages, so no work grows with what a poster sends;
- a message, its ``thread.post`` audit row and its notification commit in one
  transaction: a nurse's message tells the practice with a notice that carries the
  reference only; the practice's message goes to the team sealed to its member keys
  (PGP/MIME, signed by the gateway), with a notice carrying the reference only when the
  team has no usable key;
- neither is gated by consent (consent.NEVER_GATED "thread_message"): a question about, or
  an answer to, care already under way reduces risk; the delivery worker knows a thread
  mail by its Message-ID (``is_thread_mail``);
- reading the thread is audited ``thread.read`` in the reading transaction;
- the retention purge (securemail.ops.retention) empties the bodies with the request's or
  ask's content; the fact, author and moment stay as metadata.

On a consult or home-visit ask the thread is where the GP answers: her first message on an
open one answers the ask (its deadline stops, ``ask.answer`` is recorded, the team is
told), and an answer given with the ask's own answer form is shown in the conversation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox
from securemail.access import Actor, HiddenDeniedError, Resource, person, require
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import ConflictError, NotFoundError
from securemail.exchange import answer_copy
from securemail.exchange.team_keys import usable_recipients
from securemail.exchange.view import record_refusal
from securemail.form import request as forms
from securemail.form.fields import clean_text
from securemail.message import notify
from securemail.openpgp.keyring import RecipientKeyError, SealedMessage
from securemail.region import directory
from securemail.services import Services
from securemail.store import get_meta

log = logging.getLogger("securemail.thread")

MIGRATIONS = Migrations("securemail.thread")
#: Longest message, in characters (the ask's answer has the same bound).
MAX_BODY = 2000
#: Most messages in one thread: the page, the purge and the list stay bounded.
MAX_MESSAGES = 200
DATA_CATEGORIES = "conversation"
#: The consent register's exemption (consent.NEVER_GATED) recorded on every post.
EXEMPT = "thread_message"
#: Author roles on the practice's side; a nurse is the team's side.
PRACTICE_ROLES = ("gp", "assistant")
ROLE_NL = {"gp": "huisarts", "assistant": "praktijk", "nurse": "wijkverpleging"}


@MIGRATIONS(name="0001_thread_messages")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE thread_messages (
            id INTEGER PRIMARY KEY,
            reference TEXT NOT NULL,              -- UVZ-/AWV-/ASK-...
            author_id INTEGER REFERENCES users(id),
            author_role TEXT NOT NULL,            -- gp | assistant | nurse
            org_id INTEGER REFERENCES organisations(id),
            team_id INTEGER REFERENCES teams(id), -- the nurse's team; NULL for the practice
            body TEXT NOT NULL DEFAULT '',        -- sealed (contentbox); '' once purged
            message_id TEXT NOT NULL DEFAULT '',  -- the sealed mail to the team, if any
            created_at TEXT NOT NULL,
            purged_at TEXT NOT NULL DEFAULT '')"""
    )
    db.execute("CREATE INDEX thread_messages_reference ON thread_messages (reference, id)")
    db.execute("CREATE INDEX thread_messages_mail ON thread_messages (message_id)")


class ThreadFullError(ConflictError):
    code = "thread.full"
    nl = (
        f"Dit gesprek heeft het maximum van {MAX_MESSAGES} berichten bereikt. Neem op een "
        "andere manier contact op met de andere partij."
    )
    http_status = 409


@dataclass(frozen=True, slots=True)
class Subject:
    """What a thread is about: its reference, owners and patient (never shown in a notice)."""

    reference: str
    kind: str  # request | ask
    practice_org_id: int
    team_id: int
    patient_bsn: str
    purged: bool
    ask_kind: str = ""
    ask_state: str = ""

    @property
    def resource(self) -> Resource:
        return Resource(
            "thread",
            org_id=self.practice_org_id,
            team_ids=frozenset({self.team_id}),
            ref=self.reference,
        )


def subject_of(db: sqlite_utils.Database, reference: str) -> Subject:
    """The request or ask ``reference`` names; NotFoundError for neither."""
    if reference.startswith("ASK-"):
        row = db.execute(
            "SELECT practice_org_id, team_id, patient_bsn, content_purged_at, ask_kind, state "
            "FROM asks WHERE reference = ?",
            [reference],
        ).fetchone()
        if row is None:
            raise NotFoundError("thread not found", reference=reference)
        return Subject(reference, "ask", row[0], row[1], row[2], bool(row[3]), row[4], row[5])
    row = db.execute(
        "SELECT practice_org_id, team_id, patient_bsn, content_purged_at FROM requests "
        "WHERE reference = ?",
        [reference],
    ).fetchone()
    if row is None:
        raise NotFoundError("thread not found", reference=reference)
    return Subject(reference, "request", row[0], row[1], row[2], bool(row[3]))


def permitted(db: sqlite_utils.Database, actor: Actor, reference: str, action: str) -> Subject:
    """The thread's subject when the policy allows ``action``; otherwise HiddenDeniedError,
    which answers exactly as for no such reference (the web middleware records it as
    access.denied; ``post`` records it in its own commit)."""
    found = subject_of(db, reference)
    require(actor, action, found.resource, hide=True)
    return found


def _record_refusal(db: sqlite_utils.Database, actor: Actor, found: Subject, action: str) -> None:
    record_refusal(db, actor, found.reference, action, object_type=found.kind)


def check_body(text: object) -> str:
    """The message under the form's text policy; FormInvalidError (field ``body``) else."""
    clean, problem = clean_text(
        text if isinstance(text, str) else "", multiline=True, max_length=MAX_BODY
    )
    found = None
    if problem == "text.invalid_characters":
        found = (problem, "Het bericht bevat tekens die hier niet zijn toegestaan.")
    elif problem == "text.too_long":
        found = (problem, f"Het bericht is te lang: hoogstens {MAX_BODY} tekens.")
    elif not clean:
        found = ("required", "Schrijf uw bericht.")
    if found:
        code, nl = found
        raise forms.FormInvalidError([forms.FieldError("body", code, nl, code)])
    return clean


def _audit(db: sqlite_utils.Database, actor: Actor, code: str, found: Subject, detail: str) -> None:
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            code,
            patient_id=found.patient_bsn,
            object_type=found.kind,
            object_id=found.reference,
            data_categories=DATA_CATEGORIES,
            sender_org=actor.org_code,
            check_authz=f"permit:{actor.role}",
            check_consent=f"exempt:{EXEMPT}" if code == "thread.post" else "",
            outcome_detail=detail,
        ),
    )


def messages(db: sqlite_utils.Database, found: Subject) -> list[dict[str, Any]]:
    """The thread's messages, oldest first (newest last), bodies opened ('' once purged);
    on an ask, the GP's answer given with the ask's own form is one of them."""
    cur = db.execute(
        "SELECT m.id, m.author_role, m.body, m.created_at, m.purged_at, u.name, t.name, o.name "
        "FROM thread_messages m LEFT JOIN users u ON u.id = m.author_id "
        "LEFT JOIN teams t ON t.id = m.team_id LEFT JOIN organisations o ON o.id = m.org_id "
        "WHERE m.reference = ? ORDER BY m.id LIMIT ?",
        [found.reference, MAX_MESSAGES],
    )
    out = []
    for mid, role, body, at, purged, author, team, org in cur.fetchall():
        text = contentbox.open_value(db, "thread_messages", "body", mid, body)
        out.append(_entry(role, text, at, bool(purged), author or "", team or org or ""))
    if found.kind == "ask":
        out = _with_ask_answer(db, found, out)
    return out


def _entry(role: str, text: str, at: str, purged: bool, author: str, side: str) -> dict[str, Any]:
    return {
        "role": role,
        "role_nl": ROLE_NL.get(role, role),
        "text": text,
        "created_at": at,
        "purged": purged or not text,
        "author": author,
        "side": side,
        "from_practice": role in PRACTICE_ROLES,
        "ask_answer": False,  # the GP's answer given with the ask's own answer form
    }


def _with_ask_answer(
    db: sqlite_utils.Database, found: Subject, out: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    row = db.execute(
        "SELECT a.gp_answer, a.fulfilled_at, u.name, o.name, a.content_purged_at FROM asks a "
        "LEFT JOIN users u ON u.id = a.answered_by "
        "JOIN organisations o ON o.id = a.practice_org_id WHERE a.reference = ?",
        [found.reference],
    ).fetchone()
    if row is None or not row[0]:
        return out  # no answer on the form (or purged: the thread's own entries remain)
    text = contentbox.open_value(db, "asks", "gp_answer", found.reference, row[0])
    answer = _entry("gp", text, row[1], bool(row[4]), row[2] or "", row[3]) | {"ask_answer": True}
    return sorted([*out, answer], key=lambda m: str(m["created_at"]))


def read(db: sqlite_utils.Database, actor: Actor, reference: str) -> list[dict[str, Any]]:
    """The thread for someone allowed to read it; audited thread.read. Run in a write."""
    found = permitted(db, actor, reference, "thread.read")
    shown = messages(db, found)
    _audit(db, actor, "thread.read", found, f"messages={len(shown)}")
    return shown


def is_thread_mail(db: sqlite_utils.Database, message_id: str) -> bool:
    """True for a practice's thread message going to the team (never gated by consent)."""
    if not message_id:
        return False
    return (
        db.execute("SELECT 1 FROM thread_messages WHERE message_id = ?", [message_id]).fetchone()
        is not None
    )


async def post(svc: Services, actor: Actor, reference: str, text: object) -> int:
    """Store a message on the thread and notify the other side; durable when it returns.
    NotFoundError for a thread the actor may not see (as for none), FormInvalidError for an
    empty, too long or unclean body, ThreadFullError at MAX_MESSAGES, ContentPurgedError
    after the retention purge."""
    body = check_body(text)
    author = person(actor)

    def allowed(db: sqlite_utils.Database) -> Subject | None:
        # A refusal is audited in its own commit: the raise after it must not roll it back.
        try:
            return permitted(db, author, reference, "thread.post")
        except HiddenDeniedError:
            _record_refusal(db, author, subject_of(db, reference), "thread.post")
            return None

    found = await svc.store.write(allowed)
    if found is None:
        raise NotFoundError("thread not found", reference=reference)
    if found.purged:
        contentbox.require_content({"content_purged_at": "purged", "reference": reference})
    sealed = await _sealed_for_team(svc, found, author, body) if author.role != "nurse" else None

    def tx(db: sqlite_utils.Database) -> int:
        count = db.execute(
            "SELECT COUNT(*) FROM thread_messages WHERE reference = ?", [reference]
        ).fetchone()[0]
        if count >= MAX_MESSAGES:
            raise ThreadFullError("thread is full", reference=reference, limit=MAX_MESSAGES)
        team_id = found.team_id if author.role == "nurse" else None
        cur = db.execute(
            "INSERT INTO thread_messages (reference, author_id, author_role, org_id, team_id, "
            "message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                reference, author.user_id, author.role, author.org_id, team_id,
                sealed.message_id if sealed else "", svc.now_iso(),
            ],
        )  # fmt: skip
        mid = int(cur.lastrowid or 0)
        stored = contentbox.seal(db, "thread_messages", "body", mid, body)
        db.execute("UPDATE thread_messages SET body = ? WHERE id = ?", [stored, mid])
        _audit(db, author, "thread.post", found, f"message={mid}; to={_other_side(author)}")
        _notify(db, svc, author, found, sealed)
        if found.kind == "ask" and author.role == "gp":
            _answers_ask(db, svc, author, found)
        return mid

    mid = await svc.store.write(tx)
    svc.queued()
    return mid


def _other_side(actor: Actor) -> str:
    return "practice" if actor.role == "nurse" else "team"


def _notify(
    db: sqlite_utils.Database,
    svc: Services,
    actor: Actor,
    found: Subject,
    sealed: SealedMessage | None,
) -> None:
    """The other side learns of the message: the practice by a notice (reference only), the
    team by the sealed message itself (or a notice when it has no usable key)."""
    now = svc.now().timestamp()
    if actor.role == "nurse":
        practice = directory.org_by_id(db, found.practice_org_id)
        outbox.enqueue_notice(
            db, notify.notice_thread, found.reference, practice.notify_address, svc.settings,
            actor=actor, now=now,
        )  # fmt: skip
        return
    team = directory.team_by_id(db, found.team_id)
    if sealed is None:
        outbox.enqueue_notice(
            db, notify.notice_thread, found.reference, team.address, svc.settings,
            actor=actor, now=now,
        )  # fmt: skip
        return
    outbox.enqueue(
        db,
        sealed,
        actor=actor,
        now=now,
        patient_id=found.patient_bsn,
        sender_org=actor.org_code,
        recipient_org=team.address,
        data_categories=DATA_CATEGORIES,
    )


def _answers_ask(db: sqlite_utils.Database, svc: Services, actor: Actor, found: Subject) -> None:
    """A GP's message on an open consult or home-visit ask answers it: the deadline stops."""
    if found.ask_kind == "uitvoeringsverzoek" or found.ask_state != "open":
        return
    changed = db.execute(
        "UPDATE asks SET state = 'fulfilled', fulfilled_at = ?, answered_by = ? "
        "WHERE reference = ? AND state = 'open'",
        [svc.now_iso(), actor.user_id, found.reference],
    ).rowcount
    if changed == 1:
        _audit(db, actor, "ask.answer", found, f"kind={found.ask_kind}; on=thread")


async def _sealed_for_team(
    svc: Services, found: Subject, actor: Actor, body: str
) -> SealedMessage | None:
    """The practice's message sealed to the team's usable member keys and signed by the
    gateway; None when the team has no usable key (then the team gets a notice)."""

    def lookup(db: sqlite_utils.Database) -> tuple[directory.Team, str]:
        return directory.team_by_id(db, found.team_id), get_meta(db, "gateway_fingerprint") or ""

    team, gateway_fpr = await svc.store.read(lookup)
    if not gateway_fpr:
        return None
    try:
        recipients, _skipped = await usable_recipients(svc, team)
    except RecipientKeyError as exc:
        log.warning("thread %s: team has no usable key (%s)", found.reference, exc.code)
        return None
    doc = {
        "reference": found.reference,
        "type": "thread_message",
        "author": getattr(actor, "name", ""),
        "author_role": actor.role,
        "moment": svc.now_iso(),
        "text": body,
    }
    text = (
        f"Bericht in het gesprek over {found.reference}\n"
        f"Van: {doc['author']} ({ROLE_NL.get(actor.role, actor.role)})\n"
        f"Moment: {doc['moment']}\n\n{body}\n"
    )
    return await answer_copy.seal_by_gateway(
        svc, found.reference, doc, text, gateway_fpr, recipients, team.address,
        f"Bericht {found.reference}",
    )  # fmt: skip


__all__ = [
    "MAX_BODY", "MAX_MESSAGES", "MIGRATIONS", "ThreadFullError", "is_thread_mail", "messages",
    "permitted", "post", "read", "subject_of",
]  # fmt: skip
