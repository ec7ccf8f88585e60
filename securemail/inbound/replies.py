"""A nurse's reply to a request: accepted only encrypted to the gateway, signed by a pinned
member of the team that holds the request, about a request the gateway knows.

Invariants:

- ``accept`` decides before anything is written: a reply that is plaintext, does not open
  with the gateway's key, is unsigned (or signed by a key the gateway does not hold), is
  signed by anyone but an active pinned member of the team the request is with *now*, or
  names no known request raises a ``ReplyRefusedError`` and leaves no row, no file and no
  audit row (the SMTP dialogue's 5xx is its only answer, in Dutch and English); a gpg that
  fails on the gateway's side (``DecryptUnavailableError``, ``AgentUnavailableError``, a
  timeout) is no refusal: it propagates, the listener answers 451 and the sender retries;
- an accepted reply is one write: the ``replies`` row (its text sealed by the contentbox
  like all content), a ``request.reply`` audit row naming the patient, and one patient-free
  notice ('replied': the reference only) to the practice;
- the request is found from In-Reply-To/References (the Message-IDs the gateway sent) and
  else from the reference in the Subject (outer or, for PGP/MIME with header protection,
  inner); at most ``MAX_IDS`` Message-IDs are looked at, whatever the header holds;
- replies leave the database only through ``for_request``, called in the same write that
  records the request's ``request.view`` (the page that shows them).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any, ClassVar

import sqlite_utils
from sqlite_utils import Migrations

from securemail import contentbox
from securemail.access import KeyHolder
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import SecuremailError
from securemail.exchange import view as requestview
from securemail.message import armor, notify
from securemail.openpgp.keyring import DecryptionError, Fingerprint
from securemail.region import directory
from securemail.services import Services

log = logging.getLogger("securemail.inbound")

MIGRATIONS = Migrations("securemail.inbound")
#: Message-IDs looked up per reply, at most (References may list hundreds).
MAX_IDS = 20
#: Characters of reply text kept (a reply is a short message, not an attachment store).
MAX_TEXT = 20_000
REFERENCE_RE = re.compile(r"\bUVZ-[0-9]{4}-[0-9]{6}\b")
_MESSAGE_ID_RE = re.compile(r"<[^<>\s]{1,250}>")


@MIGRATIONS(name="0001_replies")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            reply_id TEXT NOT NULL UNIQUE,
            reference TEXT NOT NULL REFERENCES requests(reference),
            team_id INTEGER NOT NULL REFERENCES teams(id),
            signer_fingerprint TEXT NOT NULL,
            signer_name TEXT NOT NULL,
            message_id TEXT NOT NULL,
            received_at TEXT NOT NULL,
            body TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX replies_reference ON replies (reference, id)")


class ReplyRefusedError(SecuremailError):
    """A reply the gateway will not take; ``smtp`` is the whole SMTP reply line."""

    code = "inbound.refused"
    status: ClassVar[str] = "550 5.7.1"
    nl = "Antwoord geweigerd."
    en: ClassVar[str] = "Reply refused."

    @property
    def smtp(self) -> str:
        return f"{self.status} {self.nl} / {self.en}"


class ReplyPlaintextError(ReplyRefusedError):
    code = "inbound.plaintext"
    nl = (
        "Niet versleuteld: stuur uw antwoord versleuteld (OpenPGP) met de sleutel van de "
        "gateway; er is niets bewaard"
    )
    en = "Not encrypted: encrypt your reply (OpenPGP) to the gateway's key; nothing was kept"


class ReplyUndecryptableError(ReplyRefusedError):
    code = "inbound.undecryptable"
    nl = "Niet te openen met de sleutel van de gateway; er is niets bewaard"
    en = "Not encrypted to the gateway's key; nothing was kept"


class ReplyUnsignedError(ReplyRefusedError):
    code = "inbound.unsigned"
    nl = "Niet (geldig) ondertekend met een bekende sleutel; er is niets bewaard"
    en = "Not signed (validly) by a known key; nothing was kept"


class ReplySignerError(ReplyRefusedError):
    code = "inbound.signer"
    nl = (
        "De ondertekenaar is geen vastgelegd lid van het team dat dit verzoek heeft; er is "
        "niets bewaard"
    )
    en = "The signer is not a pinned member of the team that holds this request; nothing was kept"


class ReplyUnknownRequestError(ReplyRefusedError):
    code = "inbound.unknown_request"
    status = "550 5.1.0"
    nl = "Onbekend verzoek: antwoord op het bericht van de gateway zelf; er is niets bewaard"
    en = "Unknown request: reply to the gateway's own message; nothing was kept"


class ReplyRecipientError(ReplyRefusedError):
    code = "inbound.recipient"
    status = "550 5.1.1"
    nl = "Dit adres neemt geen post aan; antwoord aan het antwoordadres van de gateway"
    en = "This address takes no mail; reply to the gateway's reply address"


@dataclass(frozen=True, slots=True)
class Accepted:
    reference: str
    reply_id: str


def reply_addresses(svc: Services) -> frozenset[str]:
    """The addresses the listener takes mail for (both user ids on the gateway's key)."""
    g = svc.settings.gateway
    return frozenset({g.reply_to().lower(), g.from_address.lower()})


def require_recipient(svc: Services, address: str) -> None:
    if address.strip().lower() not in reply_addresses(svc):
        raise ReplyRecipientError("mail for an address the gateway does not take", rcpt=address)


def _ciphertext(msg: EmailMessage) -> bytes:
    """The OpenPGP message of a PGP/MIME (RFC 3156) or inline-armoured reply; else refused."""
    if msg.get_content_type() == "multipart/encrypted":
        parts = msg.get_payload()
        if isinstance(parts, list) and len(parts) == 2 and isinstance(parts[1], Message):
            body = parts[1].get_payload(decode=True)
            if isinstance(body, bytes) and armor.BEGIN_MESSAGE.encode() in body:
                return body
    elif not msg.is_multipart() and msg.get_content_maintype() in ("text", "application"):
        body = msg.get_payload(decode=True)
        if isinstance(body, bytes) and body.strip().startswith(armor.BEGIN_MESSAGE.encode()):
            return body
    raise ReplyPlaintextError("a reply that is not OpenPGP-encrypted")


def _inner(data: bytes) -> tuple[str, str]:
    """(text, protected subject) of the decrypted content: a MIME entity (PGP/MIME, with or
    without RFC 9788 headers) or plain text (inline PGP)."""
    head = data[:2000].lower()
    if b"content-type:" not in head:
        return data.decode("utf-8", errors="replace"), ""
    inner = BytesParser(policy=policy.default).parsebytes(data)
    subject = str(inner.get("Subject", ""))
    part = inner.get_body(preferencelist=("plain",))
    if part is None:
        return "", subject
    text = part.get_payload(decode=True)
    if not isinstance(text, bytes):
        return "", subject
    charset = part.get_content_charset() or "utf-8"
    try:
        return text.decode(charset, errors="replace"), subject
    except LookupError:
        return text.decode("utf-8", errors="replace"), subject


def _message_ids(msg: EmailMessage) -> list[str]:
    found: list[str] = []
    for name in ("In-Reply-To", "References"):
        for value in msg.get_all(name, []) or []:
            found += _MESSAGE_ID_RE.findall(str(value))
    return list(dict.fromkeys(found))[:MAX_IDS]


def _find_reference(db: sqlite_utils.Database, ids: list[str], subjects: list[str]) -> str:
    for mid in ids:
        row = db.execute("SELECT reference FROM outbox WHERE message_id = ?", [mid]).fetchone()
        if row and requestview.request_row(db, row[0]) is not None:
            return str(row[0])
    for subject in subjects:
        for ref in REFERENCE_RE.findall(subject)[:2]:
            if requestview.request_row(db, ref) is not None:
                return str(ref)
    raise ReplyUnknownRequestError("a reply about no request the gateway knows")


def _member(db: sqlite_utils.Database, team_id: int, signer: Fingerprint) -> directory.Member:
    for member in directory.members(db, team_id):
        if member.fingerprint == signer:
            return member
    raise ReplySignerError(
        "the reply's signer is not a pinned member of the request's team", signer=signer
    )


def _actor(db: sqlite_utils.Database, member: directory.Member, peer: str) -> KeyHolder:
    team = directory.team_by_id(db, member.team_id)
    org = directory.org_by_id(db, team.org_id)
    return KeyHolder(
        username=member.email or f"key:{member.fingerprint}",
        name=member.name,
        role="nurse",
        org_id=org.id,
        org_code=org.code,
        team_ids=frozenset({team.id}),
        access_point=peer or "smtp",
    )


async def accept(svc: Services, raw: bytes, *, peer: str = "") -> Accepted:
    """Take one reply (the whole RFC 5322 message), or raise ReplyRefusedError having
    written nothing."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    ciphertext = _ciphertext(msg)
    try:
        opened = await svc.keyring.decrypt(ciphertext, None)
    except DecryptionError:
        raise ReplyUndecryptableError("a reply the gateway's key does not open") from None
    if opened.signer is None:
        raise ReplyUnsignedError("a reply without a good signature by a key the gateway holds")
    signer = opened.signer
    text, inner_subject = _inner(opened.data)
    text = text[:MAX_TEXT]
    ids = _message_ids(msg)
    subjects = [inner_subject, str(msg.get("Subject", ""))]
    message_id = str(msg.get("Message-ID", ""))[:250]
    reply_id = uuid.uuid4().hex
    now = svc.now_iso()

    def commit(db: sqlite_utils.Database) -> str:
        reference = _find_reference(db, ids, subjects)
        row = requestview.require_row(db, reference)
        member = _member(db, row["team_id"], signer)
        actor = _actor(db, member, peer)
        practice = directory.org_by_id(db, row["practice_org_id"])
        team = directory.team_by_id(db, row["team_id"])
        db.table("replies").insert(
            {
                "reply_id": reply_id,
                "reference": reference,
                "team_id": team.id,
                "signer_fingerprint": signer,
                "signer_name": member.name,
                "message_id": message_id,
                "received_at": now,
                "body": contentbox.seal(db, "replies", "body", reply_id, text),
            }
        )
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "request.reply",
                patient_id=row["patient_bsn"],
                object_type="request",
                object_id=reference,
                data_categories=requestview.DATA_CATEGORIES,
                sender_org=team.address,
                recipient_org=practice.code,
                outcome_detail=f"signer {signer}",
            ),
        )
        outbox.enqueue_notice(
            db,
            notify.notice_replied,
            reference,
            practice.notify_address,
            svc.settings,
            actor=actor,
            now=svc.now().timestamp(),
        )
        return reference

    reference = await svc.store.write(commit)
    log.info("reply %s to %s taken (signer %s)", reply_id, reference, signer)
    return Accepted(reference, reply_id)


def for_request(db: sqlite_utils.Database, reference: str) -> list[dict[str, Any]]:
    """The replies on a request's thread, oldest first, opened. Call only in the write that
    records the page's ``request.view`` (get_request), after it allowed the look."""
    out = []
    for r in db["replies"].rows_where("reference = ?", [reference], order_by="id"):
        body = contentbox.open_value(db, "replies", "body", r["reply_id"], r["body"])
        out.append(
            {
                "received_at": r["received_at"],
                "signer_name": r["signer_name"],
                "signer_fingerprint": r["signer_fingerprint"],
                "text": body,
            }
        )
    return out
