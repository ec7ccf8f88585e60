"""The team's answer to a request: accepted, declined, or passed on to another team.

A nurse of the team the request is with answers on the request's page. Invariants:

- the answer is validated by ``forms.parse_answer`` against the request it answers
  (a VIG may accept only where every line has supervision arranged; accepting needs the
  nurse in charge, the performer's level and the confirmation of competence);
- only a nurse of the team the request is with *now* may answer (``request.answer``),
  only while the request is open, and only once: the answer is written with a check that
  the state and the team are still what the nurse saw (two answers cannot both land);
- accepted / declined: the answer, the hop's outcome, a ``request.answer`` audit row and
  one notice to the practice ('answered': the reference only; the nurse's name is on the
  page after login) commit together;
- passed on: the stored canonical JSON travels to the new team sealed (signed +
  encrypted) by the gateway's own key for the new team's pinned member keys only, with
  the GP's own signed order nested unchanged (RFC 3156 6.1 multipart/signed, verified
  before it leaves), so every team verifies the GP's signature; a request sealed before
  one signature per message carries the GP's detached JSON signature instead. The consent register
  is asked for the new team (audited) before sealing and again inside the transaction that
  moves the request to the new team, adds a hop, audits ``request.pass_on``, queues the
  sealed message and one 'passed_on' notice to the practice. The first team can no longer
  answer it; the reference stays the same, and the hops keep the history.
- declined with no alternative: when the region has a passing-on desk (``[gateway]
  passing_on_address``) that can take it, the request goes there by itself in the same
  way (hop outcome 'afgewezen', ``request.pass_on`` audited as automatic, the answer
  deadline runs on, one 'declined_to_desk' notice to the practice), so the practice is
  never left without an answer; when the desk cannot take it the decline stands.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from securemail import consent, contentbox
from securemail.access import Actor, require
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import ConflictError, SecuremailError
from securemail.exchange import answer_copy
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.exchange.view import RequestRow, record_refusal, resource
from securemail.form import kinds, render
from securemail.form import request as forms
from securemail.message import notify
from securemail.openpgp.keyring import (
    Envelope,
    Fingerprint,
    RecipientKeyError,
    SealError,
    SealInput,
)
from securemail.region import directory
from securemail.region.directory import Team
from securemail.services import Services
from securemail.store import get_meta

log = logging.getLogger("securemail.answer")

PASS_ON = "doorbemiddeld"  # noqa: S105 (an answer status, not a secret)
DECLINED = "afgewezen"


class AnswerClosedError(ConflictError):
    """The request is not (or no longer) open for an answer from this team."""

    code = "answer.closed"
    nl = (
        "Op dit verzoek kan niet (meer) worden gereageerd: het is al beantwoord, "
        "doorbemiddeld, vervangen of ingetrokken."
    )


class PassOnDeniedError(consent.ConsentDeniedError):
    """The patient objected to the team (or its organisation) a nurse chose: say what next."""

    nl = (
        "De cliënt heeft bezwaar gemaakt tegen het delen met {recipient}. Kies een ander team "
        "of het doorbemiddelingspunt, of wijs het verzoek af met de reden: dan zoekt de "
        "huisarts samen met de cliënt verder."
    )


class PassOnMissingError(consent.ConsentMissingError):
    """Explicit-consent region: no permit recorded for the team chosen; say what to record."""

    nl = (
        "Deze regio vraagt vastgelegde toestemming van de cliënt, en die ontbreekt voor "
        "{recipient}. Vraag de huisarts de toestemming van de cliënt voor dit team of deze "
        "organisatie vast te leggen, of kies een team waarvoor die er wel is."
    )


def _raise_pass_on_refusal(decision: consent.ConsentDecision) -> None:
    if decision.permitted:
        return
    if decision.record is None:
        raise PassOnMissingError(decision)
    raise PassOnDeniedError(decision)


@dataclass(frozen=True, slots=True)
class PassOnChoice:
    """A team on the nurse's pass-on list: chosen only when it can receive (a usable pinned
    key); otherwise shown greyed with ``reason_nl``."""

    team: Team
    can_receive: bool
    reason_nl: str = ""
    passing_on_desk: bool = False


@dataclass(frozen=True, slots=True)
class AnswerResult:
    reference: str
    status: str  # geaccepteerd | afgewezen | doorbemiddeld
    team_address: str  # where the request is now
    to_desk: bool = False  # declined with no alternative: now with the passing-on desk


def _field_error(field: str, code: str, nl: str) -> forms.FormInvalidError:
    return forms.FormInvalidError([forms.FieldError(field, code, nl, code)])


async def _require_answerable(svc: Services, actor: Actor, reference: str) -> RequestRow:
    """The open request row, if actor may answer it; a refusal is audited (access.denied)."""

    def check(db: sqlite_utils.Database) -> tuple[RequestRow | None, SecuremailError | None]:
        try:
            row = exchange.require_row(db, reference)
            require(actor, "request.answer", resource(row), hide=True)
        except SecuremailError as exc:
            record_refusal(
                db,
                actor,
                reference,
                f"request.answer: {exc.code}",
            )
            return None, exc
        return row, None

    row, refused = await svc.store.write(check)
    if refused is not None or row is None:
        raise refused or AnswerClosedError("request not found", reference=reference)
    if row["state"] != "open" or row["kind"] == "intrekking":
        raise AnswerClosedError("request is not open for an answer", reference=reference)
    return row


def _audit_answer(
    db: sqlite_utils.Database,
    svc: Services,
    actor: Actor,
    reference: str,
    current: RequestRow,
    event_code: str,
    **columns: str,
) -> None:
    """The audit row of a nurse's answer: permitted only as a nurse of the request's team,
    and it discloses the request's data categories for its patient. The sender is the
    nurse's organisation unless columns say otherwise (a pass-on names the practice)."""
    audit.record(
        db,
        audit.AuditEvent.of(
            actor,
            event_code,
            patient_id=current["patient_bsn"],
            object_type="request",
            object_id=reference,
            data_categories=current["data_categories"],
            check_authz="permit:nurse-of-team",
            **{"sender_org": actor.org_code, **columns},
        ),
    )


async def _document(svc: Services, row: RequestRow) -> kinds.RequestDocument:
    doc = await svc.store.read(lambda db: requestview.document(db, row))
    return kinds.document_from(doc)  # by its form_id: execution or care request


async def record_answer(
    svc: Services, actor: Actor, reference: str, data: dict[str, Any]
) -> AnswerResult:
    """Validate and record a team's answer (or pass the request on). Raises FormInvalidError
    with every field problem, AnswerClosedError, NotFoundError (also when hidden)."""
    row = await _require_answerable(svc, actor, reference)
    contentbox.require_content(row)  # a failed request past retention: nothing to answer
    req = await _document(svc, row)
    answer = forms.parse_answer(
        exchange.definition_for_document(svc, req),
        data,
        supervision_arranged=req.supervision_arranged,
    )
    if answer.status == PASS_ON:
        target = await svc.store.read(lambda db: _pass_on_target(db, row, answer.passed_to or ""))
        return await _pass_on(svc, actor, row, req, answer, target)
    if answer.status == DECLINED:
        routed = await _decline_to_desk(svc, actor, row, req, answer)
        if routed is not None:
            return routed
    now = svc.now_iso()
    team_now = await svc.store.read(lambda db: directory.team_by_id(db, row["team_id"]))
    stored = {
        **answer.to_document(),
        "answered_by": actor.name,
        "answered_by_user": actor.user_id,
        "team_address": team_now.address,
        "team_name": team_now.name,
        "answered_at": now,
    }
    # The signed copy for the practice's record (securemail.exchange.answer_copy); sealed
    # before the write, queued inside it. _still refuses the write if the team changed.
    copy = await answer_copy.seal_for_practice(svc, row, stored)

    def commit(db: sqlite_utils.Database) -> Team:
        current = _still(db, row)
        team = directory.team_by_id(db, current["team_id"])
        db.table("requests").update(
            current["id"],
            {
                "state": "answered",
                "answer": contentbox.seal(
                    db,
                    "requests",
                    "answer",
                    reference,
                    json.dumps(stored, ensure_ascii=False, sort_keys=True),
                ),
                "answer_status": answer.status,
                "answered_at": now,
                "updated_at": now,
            },
        )
        _close_hop(db, reference, current["team_id"], answer, actor, now)
        practice = directory.org_by_id(db, current["practice_org_id"])
        _audit_answer(
            db,
            svc,
            actor,
            reference,
            current,
            "request.answer",
            recipient_org=practice.code,
            outcome_detail=f"status={answer.status}",
        )
        outbox.enqueue_notice(
            db,
            functools.partial(
                notify.notice_answered,
                outcome=answer.status,
                team=team.name,
                urgent=current["urgency"] == "spoed",
            ),
            reference,
            practice.notify_address,
            svc.settings,
            actor=actor,
            now=svc.now().timestamp(),
        )
        if copy is not None:
            answer_copy.queue(db, svc, actor, current, copy, now)
        return team

    team = await svc.store.write(commit)
    log.info("request %s answered (%s) by user %s", reference, answer.status, actor.user_id)
    return AnswerResult(reference, answer.status, team.address)


def _still(db: sqlite_utils.Database, seen: RequestRow) -> RequestRow:
    """The row again, inside the write: still open and with the same team, or a conflict."""
    current = exchange.require_row(db, seen["reference"])
    if current["state"] != "open" or current["team_id"] != seen["team_id"]:
        raise AnswerClosedError(
            "request changed while it was being answered", reference=seen["reference"]
        )
    return current


def _close_hop(
    db: sqlite_utils.Database,
    reference: str,
    team_id: int,
    answer: forms.TeamAnswer,
    actor: Actor,
    now: str,
) -> None:
    hop = db.execute(
        "SELECT MAX(id) FROM request_hops WHERE reference = ? AND team_id = ?",
        [reference, team_id],
    ).fetchone()[0]
    if hop is None:
        return
    reason = contentbox.seal(db, "request_hops", "reason", hop, answer.reason or "")
    db.execute(
        "UPDATE request_hops SET outcome = ?, reason = ?, outcome_by = ?, outcome_at = ?, "
        "care_start = ? WHERE id = ?",
        [answer.status, reason, actor.user_id, now, _care_start(answer), hop],
    )


def _care_start(answer: forms.TeamAnswer) -> str:
    """The planned start of care as ISO with its offset (a form's local time is the
    deadline calendar's, Amsterdam), for the adherence figures; '' when not given."""
    start = answer.care_start
    if start is None:
        return ""
    if start.tzinfo is None:
        start = start.replace(tzinfo=ZoneInfo("Europe/Amsterdam"))
    return start.isoformat(timespec="seconds")


def _pass_on_target(db: sqlite_utils.Database, row: RequestRow, address: str) -> Team:
    team = directory.find_team(db, address)
    if team is None or not team.active:
        raise _field_error(
            "passed_to", "team.unknown", "Dit wijkteam is niet bekend bij de gateway."
        )
    if team.id == row["team_id"]:
        raise _field_error(
            "passed_to",
            "answer.passed_to_same",
            "Kies een ander team dan het team waar het verzoek nu ligt.",
        )
    return team


def _consent(
    svc: Services, db: sqlite_utils.Database, actor: Actor, row: RequestRow, team: Team
) -> consent.ConsentDecision:
    practice = directory.org_by_id(db, row["practice_org_id"])
    return exchange.check_categories(
        tuple(row["data_categories"].split(",")),  # what the passed-on request carries
        lambda category: consent.check(
            db,
            actor,
            patient_bsn=row["patient_bsn"],
            source_org_id=row["practice_org_id"],
            target=exchange._target(db, team),
            data_category=category,
            now=svc.now(),
            audit_object=("request", row["reference"]),
            sender_org=practice.code,
            policy=svc.settings.consent.policy,
        ),
    )


def _desk(svc: Services, db: sqlite_utils.Database, row: RequestRow) -> Team | None:
    """The region's passing-on desk a declined request goes to: the active team at
    ``[gateway] passing_on_address``, unless there is none or it is the desk that declines."""
    address = svc.settings.gateway.passing_on_address
    desk = directory.find_team(db, address) if address else None
    if desk is None or not desk.active or desk.id == row["team_id"]:
        return None
    return desk


async def _decline_to_desk(
    svc: Services,
    actor: Actor,
    row: RequestRow,
    req: kinds.RequestDocument,
    answer: forms.TeamAnswer,
) -> AnswerResult | None:
    """A decline names no alternative, so the request goes on to the region's passing-on
    desk by itself (the covenant: a practice always gets an answer). The team's decline is
    its hop's outcome; the request stays open, its answer deadline runs on, the practice is
    told. None when the desk cannot take it (no desk, the desk declines, no usable key, the
    patient objected, no permit in an explicit-consent region): then the decline stands and
    the practice is told as for any decline, to look further with the patient. A gateway
    that cannot seal (no key of its own) never keeps a team from declining either."""
    desk = await svc.store.read(lambda db: _desk(svc, db, row))
    if desk is None:
        return None
    try:
        return await _pass_on(svc, actor, row, req, answer, desk, declined=True)
    except (consent.ConsentRefusedError, forms.FormInvalidError, SealError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        log.warning(
            "request %s declined; the passing-on desk cannot take it (%s): the decline stands",
            row["reference"],
            code,
        )
        return None


async def _pass_on(
    svc: Services,
    actor: Actor,
    row: RequestRow,
    req: kinds.RequestDocument,
    answer: forms.TeamAnswer,
    new_team: Team,
    *,
    declined: bool = False,
) -> AnswerResult:
    """Pass the request on to ``new_team``: the nurse's choice, or (``declined``) the
    passing-on desk after a decline with no alternative, where the deadline runs on."""
    reference = row["reference"]
    # The register first (its audit row commits even when it says no), then the keys.
    decision = await svc.store.write(lambda db: _consent(svc, db, actor, row, new_team))
    _raise_pass_on_refusal(decision)
    try:
        recipients, skipped = await exchange.usable_recipients(svc, new_team)
    except RecipientKeyError:
        raise _field_error(
            "passed_to",
            "answer.team_cannot_receive",
            f"{new_team.name} kan nu geen versleutelde berichten ontvangen (geen bruikbare "
            "sleutel). Kies een ander team of het doorbemiddelingspunt; het verzoek blijft "
            "bij uw team tot u een keuze maakt.",
        ) from None
    # The GP's own signed order (RFC 3156 6.1, kept sealed at rest since it was sent)
    # travels unchanged, nested under the gateway's seal: each team verifies the GP's
    # signature. A request from the short time of one combined signature has none and
    # travels under the gateway's seal alone; older ones keep the GP's JSON signature.
    order = await svc.store.read(
        lambda db: contentbox.open_value(
            db, "requests", "signed_order", reference, row.get("signed_order", "")
        )
    )
    forwarded_order = order.encode("ascii") if order else None
    signature = None if forwarded_order else (bytes(row["json_signature"] or b"") or None)
    gateway_fpr = await svc.store.read(lambda db: get_meta(db, "gateway_fingerprint"))
    if not gateway_fpr:
        raise SealError("the gateway has no key; run securemail init")
    old_team = await svc.store.read(lambda db: directory.team_by_id(db, row["team_id"]))
    # The reason is the nurse's own text: quoted and attributed, never part of the order.
    note = render.pass_on_note(
        from_team=f"{old_team.name} ({old_team.address})",
        to_team=f"{new_team.name} ({new_team.address})",
        nurse=actor.name or actor.username,
        reason=answer.reason or "",
        declined=declined,
    )
    files = await svc.store.read(lambda db: exchange.stored_attachments(db, reference))
    rendered = render.render_request(
        exchange.definition_for_document(svc, req),
        req,
        link=exchange.page_link(svc, req),
        forwarded=note,
        attachments=tuple(f.label for f in files),
    )
    gp_fpr = Fingerprint(row["signer_fingerprint"])
    sealed = await svc.keyring.seal(
        SealInput(
            reference=reference,
            text=rendered.text,
            html=rendered.html,
            json=await svc.store.read(lambda db: requestview.document_bytes(db, row)),
            signer_public_key=await svc.keyring.export_public(gp_fpr),
            # Once: inside the GP's nested signed order when it travels, else here.
            attachments=()
            if forwarded_order
            else tuple((f.name, f.content_type, f.data) for f in files),
        ),
        signer=Fingerprint(gateway_fpr),
        passphrase=None,  # the gateway's key has none; its homedir is the protection
        recipients=recipients,
        envelope=Envelope(
            sender=svc.settings.gateway.from_address,
            recipient=new_team.address,
            subject=f"{exchange.definition_for_document(svc, req).subject} {reference}",
            extra_headers=(("X-Securemail-Reference", reference),),
        ),
        json_signature=signature,
        json_signer=gp_fpr if signature or forwarded_order else None,
        forwarded_order=forwarded_order,
    )
    now = svc.now_iso()
    # The team's passing on (its reason, the next team) goes home sealed too, like any
    # answer: the practice's record shows why the first team did not take it.
    copy = await answer_copy.seal_for_practice(
        svc, row, _pass_on_answer(answer, actor, old_team, new_team, now, declined=declined)
    )

    def commit(db: sqlite_utils.Database) -> consent.ConsentDecision:
        current = _still(db, row)
        decision = _consent(svc, db, actor, current, new_team)
        if not decision.permitted:
            return decision
        if copy is not None:
            answer_copy.queue(db, svc, actor, current, copy, now)
        _close_hop(db, reference, current["team_id"], answer, actor, now)
        db.table("requests").update(
            current["id"],
            {
                "team_id": new_team.id,
                "recipient_fingerprints": json.dumps(list(sealed.recipient_fingerprints)),
                "skipped_members": json.dumps(skipped),
                "message_id": sealed.message_id,
                **_deadline_changes(current, declined),
                "notified": "",
                "updated_at": now,
            },
        )
        db.table("request_hops").insert(
            {
                "reference": reference,
                "team_id": new_team.id,
                "message_id": sealed.message_id,
                "sent_at": now,
                "sent_by": actor.user_id,
            }
        )
        practice = directory.org_by_id(db, current["practice_org_id"])
        consent_id = decision.consent_ref
        _audit_answer(
            db,
            svc,
            actor,
            reference,
            current,
            "request.pass_on",
            # The practice's order goes on (sealed by the gateway on its behalf, as the
            # outbox row says): the practice is the sender, so its disclosure report shows
            # the hop; the nurse's organisation sees it as the actor's (org_id).
            sender_org=practice.code,
            recipient_org=new_team.address,
            consent_id=consent_id,
            check_consent=decision.audit_value,
            outcome_detail=(
                ("declined; to passing-on desk automatically; " if declined else "")
                + f"from={old_team.address}; sealed_by={gateway_fpr[-16:]}; to="
                + ",".join(f[-16:] for f in sealed.recipient_fingerprints)
            ),
        )
        outbox.enqueue(
            db,
            sealed,
            actor=actor,
            now=svc.now().timestamp(),
            patient_id=current["patient_bsn"],
            sender_org=practice.code,
            recipient_org=new_team.address,
            consent_id=consent_id,
            data_categories=current["data_categories"],
        )
        outbox.enqueue_notice(
            db,
            functools.partial(
                notify.notice_declined_to_desk if declined else notify.notice_passed_on,
                team=old_team.name if declined else new_team.name,
                urgent=current["urgency"] == "spoed",
            ),
            reference,
            practice.notify_address,
            svc.settings,
            actor=actor,
            now=svc.now().timestamp(),
        )
        return decision

    _raise_pass_on_refusal(await svc.store.write(commit))
    if declined:
        log.info("request %s declined, passed on to the desk %s", reference, new_team.address)
        return AnswerResult(reference, DECLINED, new_team.address, to_desk=True)
    log.info("request %s passed on to %s", reference, new_team.address)
    return AnswerResult(reference, PASS_ON, new_team.address)


def _pass_on_answer(
    answer: forms.TeamAnswer,
    actor: Actor,
    old_team: Team,
    new_team: Team,
    now: str,
    *,
    declined: bool,
) -> dict[str, Any]:
    """The answer document of a passing on (or a decline routed to the desk), for the
    practice's sealed copy: the first team's status and reason, and where it went."""
    return {
        **answer.to_document(),
        "status": DECLINED if declined else PASS_ON,
        "passed_to": new_team.address,
        "answered_by": actor.name,
        "answered_by_user": actor.user_id,
        "team_address": old_team.address,
        "team_name": old_team.name,
        "answered_at": now,
    }


def _deadline_changes(current: RequestRow, declined: bool) -> dict[str, str]:
    """A nurse's pass-on starts the new team's clock when its relay takes the message
    (answer_due empty until then). A decline sent on to the desk keeps the deadline the
    practice was given, and its escalation: a decline does not buy time."""
    if declined and current["answer_due"]:
        return {}
    return {"answer_due": "", "overdue_at": ""}


def answer_teams(db: sqlite_utils.Database, row: Mapping[str, Any]) -> list[Team]:
    """Teams a request may be passed on to: every other active team (pass_on_choices says
    which of them can receive)."""
    return [t for t in directory.list_teams(db) if t.id != row["team_id"] and t.active]


async def pass_on_choices(svc: Services, row: dict[str, Any]) -> list[PassOnChoice]:
    """The nurse's pass-on list: the region's passing-on desk first, then every other
    active team; a team without a usable pinned key is listed greyed with the reason (one
    store read and one gpg listing for all the region's teams, never a number from the
    request)."""
    teams = await svc.store.read(lambda db: answer_teams(db, row))
    desk = svc.settings.gateway.passing_on_address.lower()
    usable = await exchange.teams_can_receive(svc, teams)
    choices: list[PassOnChoice] = []
    for team in teams:
        is_desk = bool(desk) and team.address.lower() == desk
        if not usable[team.id]:
            reason = "kan nu geen versleutelde berichten ontvangen: geen bruikbare sleutel"
            choices.append(PassOnChoice(team, False, reason, is_desk))
            continue
        choices.append(PassOnChoice(team, True, "", is_desk))
    choices.sort(key=lambda c: (not c.passing_on_desk, not c.can_receive, c.team.name))
    return choices


__all__ = [
    "AnswerClosedError", "AnswerResult", "PassOnChoice", "PassOnDeniedError",
    "PassOnMissingError", "answer_teams", "pass_on_choices", "record_answer",
]  # fmt: skip
