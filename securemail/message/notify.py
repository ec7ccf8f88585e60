"""Status notices: plain mails that tell a practice or team what happened to a request
(or, for ``account_reset``, tell a person that an admin reset their account).

Invariant: a Notice carries a reference, a fixed Dutch text per kind, a link to the
request page and nothing else. It is made only by the functions below, which take no
patient data (no names, BSN, dates of birth, free text) - only a reference in the
gateway's own format, an address, an error *code* and the settings. ``Notice`` cannot
be constructed elsewhere (private token, as ``openpgp.SealedMessage``), so the outbox
can tell a notice from any other plain mail and refuse the latter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from securemail.config import Settings
from securemail.errors import InputError

_NOTICE_TOKEN = object()

#: A reference is a letter prefix and groups of capitals/digits ("UVZ-2026-000123").
#: A bare number (a BSN) or anything with lower-case letters or spaces cannot pass.
REFERENCE_RE = re.compile(r"^[A-Z]{2,8}(-[A-Z0-9]{1,12}){1,4}$")
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){0,4}$")
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")

#: kind -> (subject status word, Dutch body line). Fixed texts: nothing is interpolated
#: into them but the reference, the link, the gateway name and (failed/stopped) a code.
KINDS: dict[str, tuple[str, str]] = {
    "delivered": (
        "afgeleverd",
        "Uw verzoek {reference} is versleuteld afgegeven aan de mailserver. Of het team het "
        "al heeft, ziet u aan zijn antwoord op de pagina van het verzoek.",
    ),
    "failed": (
        "niet afgeleverd",
        "Uw verzoek {reference} kon niet worden afgeleverd. Neem contact op met het team "
        "of met de beheerder van de gateway.",
    ),
    "stopped": (
        "gestopt",
        "Uw verzoek {reference} is niet verzonden: het is vóór verzending gestopt.",
    ),
    "overdue": (
        "termijn verstreken",
        "Op verzoek {reference} is binnen de afgesproken termijn geen antwoord gekomen.",
    ),
    "answered": (
        "beantwoord",
        "Het wijkteam heeft gereageerd op uw verzoek {reference}. De reactie staat op de "
        "pagina van het verzoek.",
    ),
    "replied": (
        "antwoord",
        "Het wijkteam heeft een bericht gestuurd over uw verzoek {reference}. Het staat op de "
        "pagina van het verzoek.",
    ),
    "passed_on": (
        "doorbemiddeld",
        "Uw verzoek {reference} is doorbemiddeld naar een ander team. Op de pagina van het "
        "verzoek ziet u waar het nu ligt.",
    ),
    "declined_to_desk": (
        "afgewezen, naar doorbemiddeling",
        "{team} heeft uw verzoek {reference} afgewezen zonder een ander team te noemen. De "
        "gateway heeft het daarom doorgezet naar het doorbemiddelingspunt van de regio, dat "
        "een team zoekt; de reactietermijn loopt door. De reden staat op de pagina van het "
        "verzoek.",
    ),
    "ask": (
        "gevraagd",
        "Een wijkteam vraagt uw praktijk om een uitvoeringsverzoek ({reference}). Het staat "
        "in uw werklijst met de termijn waarbinnen het verwacht wordt.",
    ),
    "ask_contact": (
        "gevraagd",
        "Een wijkteam vraagt uw praktijk om een consult of huisbezoek ({reference}). Het staat "
        "in uw werklijst met de termijn waarbinnen een antwoord verwacht wordt.",
    ),
    "ask_answered": (
        "beantwoord",
        "De huisartsenpraktijk heeft geantwoord op uw vraag {reference}. Het antwoord staat op "
        "de pagina van de vraag.",
    ),
    # A new message on a request's or ask's conversation (securemail.exchange.thread): to the
    # practice for a nurse's message, to the team when the practice's could not be sealed.
    "thread": (
        "nieuw bericht",
        "Er is een nieuw bericht in het gesprek over {reference}. Het staat op de pagina "
        "van {reference}.",
    ),
    "ask_overdue": (
        "termijn verstreken",
        "Het gevraagde uitvoeringsverzoek {reference} is niet binnen de afgesproken termijn "
        "door de praktijk opgesteld.",
    ),
    "order_evaluation": (
        "evaluatie nadert",
        "De evaluatiedatum van uitvoeringsverzoek {reference} nadert. Evalueer met het "
        "wijkteam en stuur zo nodig een wijziging of verlenging.",
    ),
    "order_end": (
        "einddatum nadert",
        "De einddatum van uitvoeringsverzoek {reference} nadert. Is de zorg daarna nog "
        "nodig, stuur dan een verlenging.",
    ),
    "order_expired": (
        "verlopen",
        "Uitvoeringsverzoek {reference} is verlopen: de einddatum is voorbij. Het wijkteam "
        "is gevraagd de uitvoering te stoppen.",
    ),
    # To the team's entry address, for an order it accepted: talk to the GP in time.
    "order_end_team": (
        "einddatum nadert",
        "De einddatum van uitvoeringsverzoek {reference} nadert. Is de zorg daarna nog "
        "nodig, overleg dan met de huisarts over een verlenging; zonder verlenging stopt "
        "de uitvoering na de einddatum.",
    ),
    # To the team's entry address: stop, unless an extension has arrived.
    "order_stop": (
        "verlopen: stoppen",
        "Uitvoeringsverzoek {reference} is verlopen: de einddatum is voorbij. Stop de "
        "uitvoering, tenzij u een verlenging hebt ontvangen; neem bij twijfel contact op met "
        "de huisarts.",
    ),
    # To the practice: the team ended an order it accepted. Who ended it (the team's
    # directory name), never why: the reason ("overleden") is health data and reaches the
    # practice sealed, and on the request page after login.
    "order_ended": (
        "beëindigd",
        "Uitvoeringsverzoek {reference} is beëindigd door {team}. De reden staat op de pagina "
        "van het verzoek (na inloggen) en in het versleutelde bericht aan de praktijk.",
    ),
    # To the operator (admin_address); the reference is the check's (KEYS-20260112).
    "key_expiring": (
        "sleutels verlopen",
        "Sleutelcontrole {reference}: sleutels in de regionale sleutelmap verlopen binnenkort, "
        "of een wijkteam dreigt zijn laatste bruikbare sleutel te verliezen. Welke sleutels "
        "het zijn staat op de beheerpagina en in `securemail keys check`.",
    ),
    # To the person whose account it is (their e-mail, else their organisation's notice
    # address); the reference is the account's (ACCT-20261203-7), not a request's.
    "account_reset": (
        "account hersteld",
        "Een beheerder heeft het wachtwoord van uw account ({reference}) opnieuw ingesteld. "
        "Bij de volgende login koppelt u opnieuw een authenticator-app; eerdere sessies, "
        "herstelcodes en API-tokens werken niet meer. Heeft u hier niet om gevraagd? Neem "
        "dan direct contact op met de beheerder van de gateway.",
    ),
}

#: An answer's outcome -> (subject word, Dutch body line): what the team did, by which team
#: (the team's directory name, never a person's name or the team's free text).
OUTCOMES: dict[str, tuple[str, str]] = {
    "geaccepteerd": (
        "geaccepteerd",
        "{team} heeft uw verzoek {reference} geaccepteerd. Wie de handeling uitvoert, staat op "
        "de pagina van het verzoek.",
    ),
    "afgewezen": (
        "afgewezen",
        "{team} heeft uw verzoek {reference} afgewezen. De reden staat op de pagina van het "
        "verzoek; stuur het zo nodig naar een ander team.",
    ),
}
URGENT_WORD = "SPOED"
#: A team's name as the directory holds it: letters, digits and a little punctuation only.
_TEAM_RE = re.compile(r"^\w[\w .,'&()/+-]{0,99}$")

#: kind -> the page a notice links to (default: the page of the reference, see PAGES).
LINKS: dict[str, str] = {"key_expiring": "/admin/keys", "account_reset": "/login"}
#: reference prefix -> the pages that show it (after login); default "requests"
PAGES = {"ASK": "asks"}

#: why-codes with a Dutch explanation; other (well-formed) codes are shown as the code.
WHY_NL: dict[str, str] = {
    "smtp.rejected": "de ontvangende mailserver weigerde het bericht",
    "smtp.gave_up": "de ontvangende mailserver was te lang niet bereikbaar",
    "outbox.not_sealed": "het bericht was niet versleuteld en is daarom tegengehouden",
    "consent.withdrawn": "de toestemming van de patiënt is ingetrokken",
    "consent.missing": "er is geen toestemming van de patiënt geregistreerd",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """A plain status mail with no patient data; made only by this module's functions."""

    kind: str
    reference: str
    sender: str
    recipient: str
    message_id: str
    mime: bytes
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _NOTICE_TOKEN:
            raise TypeError("Notice can only be made by securemail.message.notify functions")


def is_notice(obj: object) -> bool:
    """True for a Notice made by this module (the token check survives object.__new__)."""
    return isinstance(obj, Notice) and getattr(obj, "_token", None) is _NOTICE_TOKEN


def _require_reference(reference: str) -> str:
    if not isinstance(reference, str) or not REFERENCE_RE.match(reference):
        raise InputError("a notice needs a reference like UVZ-2026-000123", field="reference")
    return reference


def require_address(address: str, what: str) -> str:
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        raise InputError(f"a notice needs a plain e-mail address as {what}", field=what)
    return address


@dataclass(frozen=True, slots=True)
class Detail:
    """What happened, beyond the kind: the answer's outcome, the team (its directory name:
    who answered, or where a request was passed on to) and whether the request is urgent."""

    outcome: str = ""
    team: str = ""
    urgent: bool = False

    def check(self, kind: str) -> Detail:
        if self.outcome and (kind != "answered" or self.outcome not in OUTCOMES):
            raise InputError("unknown outcome for this notice", field="outcome")
        if self.team and not _TEAM_RE.match(self.team):
            raise InputError("a notice names a team by its directory name only", field="team")
        return self


def _subject_word(kind: str, detail: Detail) -> str:
    word = OUTCOMES[detail.outcome][0] if detail.outcome else KINDS[kind][0]
    return f"{URGENT_WORD} {word}" if detail.urgent else word


def _body(
    kind: str, reference: str, why_code: str, settings: Settings, detail: Detail = Detail()
) -> str:
    """The fixed Dutch text: the only place a notice's words come from."""
    page = PAGES.get(reference.split("-", 1)[0], "requests")
    path = LINKS.get(kind, f"/{page}/{reference}")
    link = f"{settings.gateway.base_url.rstrip('/')}{path}"
    text = OUTCOMES[detail.outcome][1] if detail.outcome else KINDS[kind][1]
    body = ["Dit is een automatisch bericht van " + settings.gateway.name + ".", ""]
    if detail.urgent:
        body.append(f"{URGENT_WORD}: dit verzoek is spoedeisend.")
    body.append(text.format(reference=reference, team=detail.team or "Het wijkteam"))
    if kind == "passed_on" and detail.team:
        body.append(f"Doorgezet naar: {detail.team}.")
    if why_code:
        body.append("Reden: " + WHY_NL.get(why_code, why_code) + f" ({why_code}).")
    body += [
        "",
        "Bekijk de status (na inloggen):",
        link,
        "",
        "Dit bericht bevat bewust geen patiëntgegevens. Beantwoord het niet.",
        "",
    ]
    return "\n".join(body)


def make_notice(
    kind: str,
    reference: str,
    to: str,
    settings: Settings,
    *,
    why_code: str = "",
    detail: Detail = Detail(),
) -> Notice:
    """Build the notice of ``kind`` for ``reference`` to address ``to``.

    why_code is a stable dotted error code (``smtp.rejected``), never free text; detail says
    what happened (outcome, team, urgent), never who or about whom.
    """
    if kind not in KINDS:
        raise InputError(f"unknown notice kind {kind!r}", field="kind")
    detail.check(kind)
    _require_reference(reference)
    require_address(to, "to")
    sender = require_address(settings.gateway.from_address, "from_address")
    if why_code and not _CODE_RE.match(why_code):
        raise InputError("why_code must be a dotted error code", field="why_code")
    msg = EmailMessage(policy=SMTP)
    message_id = make_msgid(idstring="notice", domain=sender.rsplit("@", 1)[1])
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"securemail: {reference} {_subject_word(kind, detail)}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg["X-Securemail-Notice"] = kind
    if why_code:
        msg["X-Securemail-Reason"] = why_code
    if detail.outcome:
        msg["X-Securemail-Outcome"] = detail.outcome
    if detail.team:
        msg["X-Securemail-Team"] = detail.team
    if detail.urgent:
        msg["X-Securemail-Urgent"] = "yes"
    body = _body(kind, reference, why_code, settings, detail)
    msg.set_content(body, subtype="plain", charset="utf-8", cte="quoted-printable")
    return Notice(
        kind=kind,
        reference=reference,
        sender=sender,
        recipient=to,
        message_id=message_id,
        # one header per line (Message-ID unfolded, for receivers that match on it)
        mime=msg.as_bytes(policy=SMTP.clone(max_line_length=998)),
        _token=_NOTICE_TOKEN,
    )


def notice_delivered(reference: str, to: str, settings: Settings) -> Notice:
    """The relay took the sealed request (2xx)."""
    return make_notice("delivered", reference, to, settings)


def notice_failed(reference: str, to: str, why_code: str, settings: Settings) -> Notice:
    """The request failed for good; why_code says why (``smtp.rejected``, ``smtp.gave_up``)."""
    return make_notice("failed", reference, to, settings, why_code=why_code)


def notice_stopped(reference: str, to: str, why_code: str, settings: Settings) -> Notice:
    """The request was stopped before it left (``consent.withdrawn``)."""
    return make_notice("stopped", reference, to, settings, why_code=why_code)


def notice_overdue(reference: str, to: str, settings: Settings) -> Notice:
    """No answer within the agreed time."""
    return make_notice("overdue", reference, to, settings)


def notice_answered(
    reference: str,
    to: str,
    settings: Settings,
    *,
    outcome: str = "",
    team: str = "",
    urgent: bool = False,
) -> Notice:
    """The team answered: geaccepteerd or afgewezen, by which team, urgent flagged; the nurse
    in charge and the team's reason are on the page, not here."""
    detail = Detail(outcome if outcome in OUTCOMES else "", _named(team), urgent)
    return make_notice("answered", reference, to, settings, detail=detail)


def notice_replied(reference: str, to: str, settings: Settings) -> Notice:
    return make_notice("replied", reference, to, settings)


def notice_passed_on(
    reference: str, to: str, settings: Settings, *, team: str = "", urgent: bool = False
) -> Notice:
    """The team passed the request on (doorgezet) to another team, named here."""
    detail = Detail("", _named(team), urgent)
    return make_notice("passed_on", reference, to, settings, detail=detail)


def notice_declined_to_desk(
    reference: str, to: str, settings: Settings, *, team: str = "", urgent: bool = False
) -> Notice:
    """The team (named here) declined with no alternative; the gateway passed the request
    on to the region's passing-on desk, and the deadline runs on."""
    detail = Detail("", _named(team), urgent)
    return make_notice("declined_to_desk", reference, to, settings, detail=detail)


def _named(team: str) -> str:
    """The team's name if it fits a notice; else none ("Het wijkteam"): a notice about an
    answer must never stop the answer from being recorded."""
    name = " ".join(team.split())
    return name if _TEAM_RE.match(name) else ""


def notice_ask(reference: str, to: str, settings: Settings) -> Notice:
    """A nurse asked the practice for an execution request (ASK-...)."""
    return make_notice("ask", reference, to, settings)


def notice_ask_contact(reference: str, to: str, settings: Settings) -> Notice:
    """A nurse asked the practice for a consult or a home visit (ASK-...)."""
    return make_notice("ask_contact", reference, to, settings)


def notice_ask_answered(reference: str, to: str, settings: Settings) -> Notice:
    """The GP answered a consult or home-visit ask (to the asking team)."""
    return make_notice("ask_answered", reference, to, settings)


def notice_thread(reference: str, to: str, settings: Settings) -> Notice:
    """A new message in the conversation on a request or ask (reference only)."""
    return make_notice("thread", reference, to, settings)


def notice_ask_overdue(reference: str, to: str, settings: Settings) -> Notice:
    """The practice did not deliver an asked-for request in time (to the asking team)."""
    return make_notice("ask_overdue", reference, to, settings)


def notice_order_evaluation(reference: str, to: str, settings: Settings) -> Notice:
    """To the practice: an order's evaluation date is near."""
    return make_notice("order_evaluation", reference, to, settings)


def notice_order_end(reference: str, to: str, settings: Settings) -> Notice:
    """To the practice: an order's end date is near."""
    return make_notice("order_end", reference, to, settings)


def notice_order_expired(reference: str, to: str, settings: Settings) -> Notice:
    """To the practice: an order ran past its end date (verlopen)."""
    return make_notice("order_expired", reference, to, settings)


def notice_order_end_team(reference: str, to: str, settings: Settings) -> Notice:
    """To the team that accepted the order: its end date is near."""
    return make_notice("order_end_team", reference, to, settings)


def notice_order_stop(reference: str, to: str, settings: Settings) -> Notice:
    """To the team: the order ran out; stop unless an extension arrived."""
    return make_notice("order_stop", reference, to, settings)


def notice_order_ended(reference: str, to: str, team: str, settings: Settings) -> Notice:
    """To the practice: the team (its directory name) ended an order it accepted."""
    return make_notice("order_ended", reference, to, settings, detail=Detail(team=_named(team)))


def notice_key_expiring(reference: str, to: str, settings: Settings) -> Notice:
    """To the operator: keys expire soon or a team is about to lose its last usable key."""
    return make_notice("key_expiring", reference, to, settings)


def account_reference(user_id: int, now: datetime) -> str:
    """The reference of an account notice: the day and the account's number (no name)."""
    return f"ACCT-{now:%Y%m%d}-{int(user_id)}"


def notice_account_reset(reference: str, to: str, settings: Settings) -> Notice:
    """To the person: an admin reset their password and second factor (no request involved)."""
    return make_notice("account_reset", reference, to, settings)


_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-securemail-notice",
    "x-securemail-reason",
    "autocrypt",  # added at the SMTP edge: the gateway's public key (message.autocrypt)
    "x-securemail-outcome",
    "x-securemail-team",
    "x-securemail-urgent",
}


def require_notice_mime(raw: bytes, settings: Settings) -> None:
    """Refuse bytes that are not exactly a notice this module would build (the SMTP-edge
    check): our headers only, a neutral subject, and a body equal, word for word, to the
    fixed text for its kind, reference and reason under these settings. Raises InputError.
    """
    msg = BytesParser(policy=SMTP).parsebytes(raw)
    kind = str(msg.get("X-Securemail-Notice", ""))
    why = str(msg.get("X-Securemail-Reason", ""))
    parts = str(msg.get("Subject", "")).split(" ", 2)
    try:
        detail = Detail(
            str(msg.get("X-Securemail-Outcome", "")),
            str(msg.get("X-Securemail-Team", "")),
            str(msg.get("X-Securemail-Urgent", "")) == "yes",
        ).check(kind)
    except InputError:
        detail = None
    ok = (
        detail is not None
        and str(msg.get("X-Securemail-Urgent", "")) in ("", "yes")
        and kind in KINDS
        and not msg.defects
        and not msg.is_multipart()
        and msg.get_content_type() == "text/plain"
        and not {k.lower() for k in msg} - _HEADERS
        and len(parts) == 3
        and parts[0] == "securemail:"
        and bool(REFERENCE_RE.match(parts[1]))
        and parts[2] == _subject_word(kind, detail)
        and (not why or bool(_CODE_RE.match(why)))
        and str(msg.get("From", "")) == settings.gateway.from_address
    )
    if ok:
        body = msg.get_content().replace("\r\n", "\n")
        ok = body == _body(kind, parts[1], why, settings, detail or Detail())
    if not ok:
        raise InputError("not a securemail status notice", field="mime")


# -- the gateway's signature (RFC 3156 6.1, RFC 9788 header protection) -----------------------

#: Header fields a reader shows, also inside the signed part (RFC 9788, hp="clear").
_PROTECTED = ("from", "to", "subject", "date", "message-id")
_CONTENT = ("content-type", "content-transfer-encoding")


def _fields(head: bytes) -> list[bytes]:
    """The header fields of a header block, continuation lines kept with their field."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", errors="replace").lower()


def signable(raw: bytes) -> tuple[bytes, bytes]:
    """(the outer header block without the content fields, the entity to sign) of a checked
    notice: the entity is its text part with From, To, Subject, Date and Message-ID repeated
    inside (``hp="clear"``), so a reader sees them covered by the gateway's signature."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise InputError("a notice without a body", field="mime")
    fields = _fields(head)
    content = [f for f in fields if _name(f) in _CONTENT]
    if len(content) != 2 or not _name(content[0]) == "content-type":
        raise InputError("a notice without its content fields", field="mime")
    content[0] = content[0] + b'; hp="clear"'
    protected = [f for f in fields if _name(f) in _PROTECTED]
    outer = [f for f in fields if _name(f) not in _CONTENT]
    entity = b"\r\n".join(content + protected) + b"\r\n\r\n" + body
    return b"\r\n".join(outer) + b"\r\n", entity


def with_signature(outer: bytes, signed: bytes) -> bytes:
    """The notice as it goes: its outer header block and the multipart/signed entity
    (``Keyring.sign_multipart`` of the second half of ``signable``)."""
    return outer + signed
