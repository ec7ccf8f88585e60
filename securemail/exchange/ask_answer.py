"""The GP's answer to a nurse's consult or home-visit ask (ASK-...): the covenant's "de
huisarts is op verzoek van de wijkverpleegkundige beschikbaar voor een consult of
huisbezoek", on the same deadlines as every ask (urgent 2 hours, regular 2 working days).

Invariant: only a GP of the asked practice answers (``ask.answer``, scoped in
securemail.access), only an open consult or home-visit ask (an execution-request ask is
fulfilled by a request), once; the answer is sealed at rest like the ask's other content
and purged with it; the answer, its audit row and the notice to the asking team (the
reference only) commit in one transaction.
"""

from __future__ import annotations

import sqlite_utils

from securemail.access import Actor, is_allowed
from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import ConflictError, NotFoundError
from securemail.exchange import asks
from securemail.form import request as forms
from securemail.form.fields import _BAD_TEXT
from securemail.message import notify
from securemail.region import directory
from securemail.services import Services

MAX_ANSWER = 2000


def _check_text(text: object) -> str:
    clean = text.strip() if isinstance(text, str) else ""
    problem = None
    if not clean:
        problem = ("required", "Schrijf uw antwoord, bijvoorbeeld wanneer u langskomt.")
    elif len(clean) > MAX_ANSWER:
        problem = ("text.too_long", f"Maximaal {MAX_ANSWER} tekens.")
    elif _BAD_TEXT.search(clean):
        problem = ("text.invalid_characters", "De tekst bevat niet-toegestane tekens.")
    if problem:
        code, nl = problem
        raise forms.FormInvalidError([forms.FieldError("answer", code, nl, code)])
    return clean


async def answer_ask(svc: Services, actor: Actor, reference: str, text: object) -> None:
    """Record the GP's answer on a consult or home-visit ask and tell the asking team.
    NotFoundError for an ask of another practice (as for none), ConflictError when it is
    not open, FormInvalidError for an empty or too long answer or an execution-request ask."""
    answer = _check_text(text)
    now = svc.now_iso()

    def allowed(db: sqlite_utils.Database) -> bool:
        # A refusal is audited in its own commit: the raise below must not roll it back.
        row = asks._row(db, reference)
        if is_allowed(actor, "ask.answer", asks._resource(row)):
            return True
        audit.record(
            db,
            audit.AuditEvent.of(
                actor, "access.denied", outcome="refused", object_type="ask", object_id=reference
            ),
        )
        return False

    if not await svc.store.write(allowed):
        raise NotFoundError("ask not found", reference=reference)  # as for no such ask

    def tx(db: sqlite_utils.Database) -> None:
        row = asks._row(db, reference)
        if row["ask_kind"] == "uitvoeringsverzoek":
            raise forms.FormInvalidError(
                [
                    forms.FieldError(
                        "answer",
                        "ask.needs_request",
                        "Op deze vraag antwoordt u met een uitvoeringsverzoek.",
                        "this ask is answered by sending an execution request",
                    )
                ]
            )
        changed = db.execute(
            "UPDATE asks SET state = 'fulfilled', fulfilled_at = ?, answered_by = ?, "
            "gp_answer = ? WHERE reference = ? AND state = 'open'",
            [now, actor.user_id, asks._seal(db, "gp_answer", reference, answer), reference],
        ).rowcount
        if changed != 1:
            raise ConflictError("ask is no longer open", reference=reference)
        team = directory.team_by_id(db, row["team_id"])
        audit.record(
            db,
            audit.AuditEvent.of(
                actor,
                "ask.answer",
                patient_id=row["patient_bsn"],
                object_type="ask",
                object_id=reference,
                data_categories=asks.DATA_CATEGORIES,
                sender_org=actor.org_code,
                recipient_org=team.address,
                check_authz="permit:gp-own-practice",
                outcome_detail=f"kind={row['ask_kind']}",
            ),
        )
        outbox.enqueue_notice(
            db,
            notify.notice_ask_answered,
            reference,
            team.address,
            svc.settings,
            actor=actor,
            now=svc.now().timestamp(),
        )

    await svc.store.write(tx)
    svc.queued()
