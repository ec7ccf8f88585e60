"""The audit trail in plain Dutch: one sentence per audit action, roles by their Dutch name,
the request reference of a row and a reason without internal ids.

Owns ``SENTENCES`` (event code -> Dutch sentence) and the words the privacy console and the
patient's disclosure report use for a row.

Invariants: every event code of ``trail.EVENT_CODES`` has a sentence (tests/test_audit_plain.py
fails on one without); what this module returns never carries a UUID, a key fingerprint, a
user id or a BSN (``scrub``), so the officer can hand it to a patient.
"""

from __future__ import annotations

import re
from typing import Any

from securemail.access import ROLE_CODES

#: A request's reference (UVZ-2026-000123) and the like: what a person quotes on the phone.
REFERENCE_RE = re.compile(r"\b[A-Z]{2,5}-\d{4}-\d{3,}\b")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HEX_RE = re.compile(r"\b[0-9A-Fa-f]{16,}\b")  # key ids and fingerprints
_DIGITS_RE = re.compile(r"\b\d{8,}\b")  # BSNs, AGB and URA codes

#: {verzoek}/{Verzoek}: "verzoek UVZ-..." (or "een verzoek"); {naar}/{bij}/{van}: " naar X"
#: for the row's receiving team or organisation ("" when none); {controle}: the consent
#: check's result in words.
SENTENCES: dict[str, str] = {
    "request.create": "{Verzoek} aangemaakt{naar}",
    "draft.save": "Concept van een verzoek opgeslagen",
    "draft.view": "Concept van een verzoek geopend",
    "draft.delete": "Concept van een verzoek verwijderd",
    "request.view": "{Verzoek} ingezien",
    "request.list": "{Verzoek} in een werklijst getoond (naam en kenmerk)",
    "request.sign": "{Verzoek} ondertekend",
    "request.send": "{Verzoek} ondertekend en verstuurd{naar}",
    "request.deliver": "{Verzoek} afgeleverd{bij}",
    "request.retry": "Aflevering van {verzoek} tijdelijk mislukt, wordt opnieuw geprobeerd",
    "request.uncertain": "Aflevering van {verzoek} onzeker, opnieuw verstuurd",
    "request.fail": "Aflevering van {verzoek} definitief mislukt",
    "request.stop": "Verzending van {verzoek} gestopt voordat het vertrok",
    "request.answer": "{Verzoek} beantwoord door het wijkteam",
    "request.pass_on": "{Verzoek} doorgezet{naar}",
    "request.reply": "Versleuteld antwoord op {verzoek} ontvangen",
    "request.answer_copy": "Antwoord op {verzoek} versleuteld naar de praktijk gestuurd",
    "request.record_export": "{Verzoek} met antwoord opgeslagen voor het dossier",
    "request.withdraw": "{Verzoek} ingetrokken",
    "request.overdue": "Termijn van {verzoek} verstreken, doorgemeld",
    "request.remind": "Herinnering aan de huisarts over {verzoek} (evaluatie- of einddatum)",
    "request.expire": "{Verzoek} verlopen; het wijkteam is gevraagd te stoppen",
    "ask.create": "Vraag aan de praktijk om een uitvoeringsverzoek gesteld",
    "ask.view": "Vraag van de wijkverpleging ingezien",
    "ask.fulfil": "Gevraagd {verzoek} verstuurd",
    "ask.answer": "Vraag van de wijkverpleging beantwoord door de huisarts",
    "ask.overdue": "Termijn van een vraag verstreken, doorgemeld",
    "thread.post": "Bericht geschreven in het gesprek over {verzoek}",
    "thread.read": "Gesprek over {verzoek} gelezen",
    "order.end_by_team": "Opdracht {verzoek} beëindigd door het wijkteam",
    "consent.record": "Toestemming of bezwaar van de patiënt vastgelegd",
    "consent.withdraw": "Toestemming van de patiënt ingetrokken",
    "consent.check": "Toestemmingscontrole: {controle}",
    "consent.view": "Toestemmingen van de patiënt ingezien",
    "consent.purge": "Verlopen toestemmingsgegevens verwijderd",
    "consent.export": "Toestemmingen van de patiënt geëxporteerd",
    "adherence.view": "Overzicht van afspraken en termijnen bekeken (geen patiëntgegevens)",
    "adherence.export": "Overzicht van afspraken en termijnen geëxporteerd (geen patiëntgegevens)",
    "audit.view": "Inzageoverzicht (auditlog) geraadpleegd",
    "audit.export": "Inzageoverzicht (auditlog) gedownload",
    "audit.verify": "Auditlog gecontroleerd op volledigheid",
    "audit.checkpoint": "Controlepunt van het auditlog ondertekend",
    "audit.purge": "Verlopen regels van het auditlog verwijderd",
    "retention.purge": "Verlopen inhoud verwijderd (bewaartermijn)",
    "audit.review": "Beoordeling door de privacyfunctionaris vastgelegd",
    "privacy.disclosure_pdf": "Inzageoverzicht voor de patiënt gedownload (PDF)",
    "key.import": "Sleutel ingelezen",
    "key.generate": "Sleutelpaar aangemaakt",
    "key.revoke": "Sleutel ingetrokken",
    "key.confirm": "Gewijzigde sleutel telefonisch bevestigd",
    "key.quarantine": "Gewijzigde sleutel apart gezet tot telefonische bevestiging",
    "key.remove": "Sleutel bij een team verwijderd",
    "key.passphrase": "Wachtwoordzin voor ondertekenen gewijzigd",
    "org.create": "Organisatie aangemaakt",
    "team.create": "Team aangemaakt",
    "team.map_update": "Gegevens van het team op de regiokaart gewijzigd",
    "team.map_confirm": "Gegevens van het team op de regiokaart bevestigd",
    "team.contact_nurse": "Vaste contactverpleegkundige voor een praktijk ingesteld",
    "practice.entry_update": "Aanmeldpunt van de praktijk gewijzigd",
    "practice.preferred_update": "Voorkeursteams van de praktijk gewijzigd",
    "user.create": "Gebruiker aangemaakt",
    "user.update": "Gebruiker gewijzigd (wachtwoord, ontgrendeling of deactivering)",
    "role.change": "Rol van een gebruiker gewijzigd",
    "auth.login": "Ingelogd",
    "auth.fail": "Inloggen mislukt",
    "auth.logout": "Uitgelogd",
    "auth.lockout": "Account geblokkeerd na herhaalde mislukte pogingen",
    "auth.totp_enrol": "Tweede factor ingesteld",
    "auth.token": "Koppelsleutel (API) aangemaakt of ingetrokken",
    "access.denied": "Toegang geweigerd",
    "outbox.retry": "Bericht over {verzoek} opnieuw in de wachtrij gezet door de beheerder",
    "outbox.cancel": "Bericht over {verzoek} uit de wachtrij gehaald door de beheerder",
    "notice.send": "Statusbericht over {verzoek} klaargezet (zonder patiëntgegevens)",
    "notice.deliver": "Statusbericht over {verzoek} afgeleverd{bij}",
    "notice.retry": "Statusbericht over {verzoek} tijdelijk niet afgeleverd, nieuwe poging",
    "notice.uncertain": "Statusbericht over {verzoek} mogelijk afgeleverd, opnieuw verstuurd",
    "notice.fail": "Statusbericht over {verzoek} kon niet worden afgeleverd",
    "notice.stop": "Statusbericht over {verzoek} gestopt voordat het vertrok",
    "gateway.init": "Gateway ingericht",
    "gateway.backup": "Versleutelde reservekopie gemaakt",
    "gateway.restore": "Gateway teruggezet uit een reservekopie",
}

#: A refused row whose sentence would say the opposite of what happened.
REFUSED: dict[str, str] = {
    "request.send": "{Verzoek} niet verstuurd{naar}",
    "request.create": "{Verzoek} niet aangemaakt{naar}",
}

#: Refused or failed: what is added to the sentence.
OUTCOME_SUFFIX = {"refused": " (geweigerd)", "error": " (mislukt)"}

#: Known reasons of a refusal, by how their detail starts, in words.
REASONS: tuple[tuple[str, str], ...] = (
    ("permitted by consent", "toestemming aanwezig"),
    ("consent presumed for direct care", "toestemming verondersteld (directe zorg), geen bezwaar"),
    ("no consent of patient", "geen toestemming van de patiënt, verzending gestopt"),
    ("objection", "bezwaar patiënt, verzending gestopt"),
    ("consent.missing", "geen toestemming van de patiënt"),
    ("consent.objection", "bezwaar patiënt"),
    ("consent.", "toestemming ontbreekt"),
    ("access.denied", "geen toegang voor deze rol of organisatie"),
)

SYSTEM_NAME = "Gateway (automatisch)"


def role_nl(role: str | None) -> str:
    """A role by its Dutch name (Huisarts, Verpleegkundige, ...)."""
    return ROLE_CODES.get(role or "system", ROLE_CODES["system"])[2]


def reference(row: dict[str, Any]) -> str:
    """The request reference a row is about, or "" (never a UUID or another internal id)."""
    for text in (row.get("object_id"), row.get("outcome_detail")):
        found = REFERENCE_RE.search(str(text or ""))
        if found:
            return found.group(0)
    return ""


def scrub(text: str) -> str:
    """Text without UUIDs, key ids, fingerprints or long numbers (BSN, AGB, URA)."""
    text = _UUID_RE.sub("…", text)
    text = _HEX_RE.sub("…", text)
    return _DIGITS_RE.sub("…", text).strip()


def known_reason(detail: str) -> str:
    """A refusal's reason in words when it is one we know, else ""."""
    for start, words in REASONS:
        if detail.startswith(start):
            return words
    return ""


def sentence(row: dict[str, Any], names: dict[str, str]) -> str:
    """What happened in one Dutch sentence, with the reference and the receiving team."""
    code = str(row["event_code"])
    ref = reference(row)
    receiver = names.get(str(row.get("recipient_org") or ""), "")
    words = {
        "verzoek": f"verzoek {ref}" if ref else "een verzoek",
        "Verzoek": f"Verzoek {ref}" if ref else "Een verzoek",
        "naar": f" naar {receiver}" if receiver else "",
        "bij": f" bij {receiver}" if receiver else "",
        "controle": known_reason(str(row.get("outcome_detail") or ""))
        or ("in orde" if row.get("outcome") == "success" else "geweigerd"),
    }
    refused = row.get("outcome") == "refused" and code in REFUSED
    text = (REFUSED[code] if refused else SENTENCES.get(code, code)).format(**words)
    if code != "consent.check":
        text += OUTCOME_SUFFIX.get(str(row.get("outcome")), "")
    return text


def reason(row: dict[str, Any], *, for_patient: bool = False) -> str:
    """Why, where the row has a why: the stated reason of a break-the-glass access, or a
    refusal's reason (in words; for the officer, else the detail without internal ids)."""
    parts = []
    if row.get("nature") == "emergency":
        parts.append(f"Noodtoegang: {row.get('emergency_reason') or 'geen reden opgegeven'}")
    if row.get("outcome") != "success" and row.get("event_code") != "consent.check":
        detail = str(row.get("outcome_detail") or "")
        words = known_reason(detail) or ("" if for_patient else scrub(detail))
        if words:
            parts.append(words)
    return "; ".join(parts)
