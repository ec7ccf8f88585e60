"""The privacy pack: the AVG documents a region needs to adopt the gateway, written from
this installation's own configuration (``securemail privacy-pack``).

Three Dutch documents, Markdown and PDF: the record of processing (``verwerkingsregister``,
AVG art. 30), a DPIA starting point (art. 35: data flow, risks, the measures that exist,
each pointing to the test or document that holds it) and the processor-agreement annex
(``verwerkersovereenkomst-bijlage``). Invariant: every period, address and limit in them
is read from ``Settings`` (and the directory's organisations), never typed in, so
regenerating after a configuration change brings them up to date; each document names
the digest of the settings it was made from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from fpdf import FPDF

from securemail import access
from securemail.config import Settings

#: Settings never printed (secrets), whatever their value.
_SECRET = {("smtp", "password"), ("monitoring", "metrics_token")}


@dataclass(frozen=True, slots=True)
class Organisation:
    code: str
    kind: str  # practice | nursing | region
    name: str


@dataclass(frozen=True, slots=True)
class Measure:
    """A security measure and where it is held (a test or document of this project)."""

    text: str
    evidence: str


def settings_digest(s: Settings) -> str:
    """SHA-256 (first 16 hex) over the settings the pack uses, secrets left out."""
    values = {
        section: {
            k: v for k, v in asdict(getattr(s, section)).items() if (section, k) not in _SECRET
        }
        for section in ("gateway", "web", "smtp", "audit", "retention", "backup", "monitoring")
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def retention_periods(s: Settings) -> list[tuple[str, str]]:
    """(what, how long) in Dutch, from the settings: the one source of every period."""
    return [
        (
            "Inhoud van berichten (ondertekend verzoek, antwoord, redenen, gegevens van een vraag)",
            f"{s.retention.content_days} dagen na de definitieve uitkomst",
        ),
        (
            "Metagegevens (referentie, status, tijden, praktijk, team, BSN als verwijzing)",
            f"{s.retention.metadata_days} dagen na de definitieve uitkomst",
        ),
        ("Sessies (gehashte id, toegangspunt)", f"{s.web.session_max_hours} uur na inloggen"),
        ("Audittrail (NEN 7513)", f"{s.audit.retention_years} jaar na vastlegging"),
        (
            "Toestemmingen en bezwaren",
            f"zolang van kracht, daarna {s.audit.retention_years} jaar na het einde en zolang "
            "een bewaarde auditregel ernaar verwijst",
        ),
        ("Metingen beschikbaarheid (NTA 7516)", f"{s.monitoring.health_retention_days} dagen"),
    ]


def measures(s: Settings) -> list[Measure]:
    """The security measures that exist, with their configured values and their evidence."""
    return [
        Measure(
            "Eind-tot-eind versleuteling (PGP/MIME) naar de sleutels van het ontvangende team;"
            " huisarts ondertekent met persoonlijke sleutel",
            "tests/e2e/test_send_path.py, docs/keys.md",
        ),
        Measure(
            f"Transport naar de relay alleen met TLS (smtp.starttls = {s.smtp.starttls});"
            " platte tekst wordt geweigerd",
            "tests/e2e/test_delivery_outcomes.py, docs/delivery.md",
        ),
        Measure(
            "Geen patiëntgegevens buiten de versleuteling (onderwerp, headers, logregels, URL's)",
            "tests/test_mime.py, tests/e2e/test_json_logs.py",
        ),
        Measure(
            "Inhoud in rust versleuteld (AES-256-GCM) onder een sleutel apart van de database",
            "tests/test_retention.py, docs/retention.md",
        ),
        Measure(
            f"Inlog met tweede factor (TOTP); sessie eindigt na {s.web.session_idle_minutes} min"
            f" inactiviteit en na {s.web.session_max_hours} uur; blokkade na"
            f" {s.web.login_max_failures} mislukte pogingen ({s.web.lockout_minutes} min)",
            "tests/test_auth.py, docs/accounts.md",
        ),
        Measure(
            f"Autorisatie per rol en organisatie op één plek (beleid {access.POLICY_ID}"
            f" versie {access.POLICY_VERSION}, vastgelegd op elke auditregel)",
            "tests/test_web_security.py, tests/test_audit_policy.py, docs/audit.md",
        ),
        Measure(
            "Audittrail volgens NEN 7513: onveranderbaar, hash-keten, ondertekende controlepunten"
            f" elke {s.audit.checkpoint_every} regels, onafhankelijk te verifiëren",
            "tests/test_audit.py, tests/e2e/test_audit_trail.py, docs/audit.md",
        ),
        Measure(
            "Toestemmingsregister: verzenden alleen met geldige toestemming; intrekking stopt"
            " wachtende verzoeken",
            "tests/test_consent.py, docs/consent.md",
        ),
        Measure(
            "Uitzonderingsrapportage en periodieke controle door de privacyfunctionaris"
            f" (werktijden {s.audit.working_hours}; per rol/team instelbaar)",
            "tests/test_audit_policy.py, docs/audit.md",
        ),
        Measure(
            "Bewaartermijnen automatisch toegepast, met auditregel per opschoning",
            "tests/test_retention.py, tests/test_consent_retention.py, docs/retention.md",
        ),
        Measure(
            "Versleutelde back-up naar een aparte sleutel, met herstelproef",
            "tests/test_backup.py, docs/backup.md",
        ),
        Measure(
            "Beschikbaarheid gemeten en verantwoord (NTA 7516-verklaring),"
            f" streefwaarde {s.monitoring.availability_target_percent}%",
            "tests/e2e/test_nta_declaration.py, docs/monitoring.md",
        ),
    ]


#: (risk, measures that address it by index into measures(), residual note)
RISKS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("Onbevoegde inzage tijdens transport of bij de relay", (0, 1, 2), "laag"),
    ("Bericht bij het verkeerde team", (0, 5), "laag: adresboek en sleutels per team"),
    ("Inzage door een medewerker zonder behandelrelatie", (5, 6, 8), "middel: achteraf controle"),
    ("Diefstal of kopie van de database of back-up", (3, 10), "laag"),
    ("Overnemen van een account", (4, 6), "laag"),
    ("Verzenden zonder of na ingetrokken toestemming", (7,), "laag"),
    ("Langer bewaren dan nodig", (9,), "laag"),
    ("Onvoldoende verantwoording (wie zag wat)", (6, 8), "laag"),
    ("Onbeschikbaarheid bij spoed", (11,), "middel: telefonische terugval"),
)


def _md_table(head: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return out


def _footer(s: Settings) -> list[str]:
    return [
        "",
        f"_Gemaakt door `securemail privacy-pack` uit de configuratie van {s.gateway.name}"
        f" (instellingen-digest `{settings_digest(s)}`). Maak opnieuw na elke wijziging"
        " van de configuratie._",
    ]


def register_md(s: Settings, orgs: list[Organisation]) -> str:
    """Verwerkingsregister (AVG art. 30) for the gateway's processing."""
    practices = [o for o in orgs if o.kind == "practice"]
    nursing = [o for o in orgs if o.kind == "nursing"]
    lines = [
        f"# Verwerkingsregister (AVG art. 30): {s.gateway.name}",
        "",
        "## Verwerking",
        "",
        "Veilige overdracht van uitvoeringsverzoeken van huisartsen aan wijkverpleging,"
        " met toestemmingsregistratie en verantwoording (NEN 7513).",
        "",
        f"- Adres van de dienst: {s.gateway.base_url or '(niet ingesteld)'}",
        f"- Afzender van berichten: {s.gateway.from_address}",
        f"- Bron-id in de audittrail: {s.gateway.source_id}",
        "- Verwerkingsverantwoordelijken: de aangesloten huisartsenpraktijken (verzenden,"
        " toestemming) en zorgaanbieders wijkverpleging (ontvangen, beantwoorden)",
        "- Verwerker: de beheerder van deze gateway (zie de bijlage verwerkersovereenkomst)",
        "",
        "## Doeleinden en grondslag",
        "",
        "- Uitvoeringsverzoek en antwoord overdragen voor de zorg aan de patiënt"
        " (doel `TREAT`); grondslag AVG art. 6 lid 1 sub c/e en art. 9 lid 2 sub h,"
        " Wgbo art. 7:457 (toestemming of veronderstelde toestemming bij verwijzing)",
        "- Verantwoording van toegang (NEN 7513, Wabvpz art. 15e): audittrail",
        "- Vastleggen van toestemming en bezwaar van de patiënt",
        "",
        "## Categorieën betrokkenen",
        "",
        "- Patiënten (cliënten) en hun vertegenwoordigers",
        "- Huisartsen, verpleegkundigen, privacyfunctionarissen, beheerders en"
        " regiocoördinatoren (gebruikers)",
        "",
        "## Categorieën persoonsgegevens",
        "",
        "- Patiënt: BSN, naam, geboortedatum, adres, indicatie en handelingen"
        " (gegevens over gezondheid: bijzondere persoonsgegevens)",
        "- Toestemming: beslissing, ontvanger, geldigheid, wijze en datum, vertegenwoordiger",
        "- Gebruikers: naam, rol (gecodeerd: UZI-rolcode of lokaal), organisatie (AGB/URA),"
        " BIG-nummer, tweede factor, IP-adres en tijdstip van handelingen",
        "",
        "## Ontvangers",
        "",
        f"- Teams wijkverpleging in het adresboek: {len(nursing)} organisatie(s)"
        + (": " + ", ".join(f"{o.name} ({o.code})" for o in nursing) if nursing else ""),
        f"- Huisartsenpraktijken (antwoorden, statusberichten): {len(practices)}",
        f"- Mailrelay (alleen versleutelde berichten): {s.smtp.host}:{s.smtp.port}",
        "- Geen doorgifte buiten de EER door de gateway",
        "",
        "## Bewaartermijnen",
        "",
        *_md_table(("Gegevens", "Bewaartermijn"), retention_periods(s)),
        "",
        "## Beveiligingsmaatregelen",
        "",
        *_md_table(("Maatregel", "Vastgelegd in"), ((m.text, m.evidence) for m in measures(s))),
        *_footer(s),
    ]
    return "\n".join(lines) + "\n"


def dpia_md(s: Settings) -> str:
    """A DPIA starting point (AVG art. 35): data flow, risks, the measures that exist."""
    ms = measures(s)
    flow = [
        "1. De huisarts vult het uitvoeringsverzoek in en ondertekent het met een"
        " persoonlijke sleutel (portaal of HIS).",
        "2. De gateway controleert toestemming (toestemmingsregister) en legt dat vast.",
        "3. De gateway versleutelt naar de sleutels van het ontvangende team en levert via"
        f" de relay {s.smtp.host} af (TLS verplicht).",
        "4. Het team opent het bericht in het eigen systeem of het portaal en antwoordt;"
        " de huisarts krijgt een statusbericht zonder patiëntgegevens.",
        f"5. Na {s.retention.content_days} dagen verdwijnt de inhoud, na"
        f" {s.retention.metadata_days} dagen de metagegevens, na"
        f" {s.audit.retention_years} jaar de auditregels.",
    ]
    risks = [
        (
            risk,
            "; ".join(ms[i].text.split(";")[0] for i in idx),
            ", ".join(sorted({e for i in idx for e in ms[i].evidence.split(", ")})),
            rest,
        )
        for risk, idx, rest in RISKS
    ]
    lines = [
        f"# DPIA, vertrekpunt (AVG art. 35): {s.gateway.name}",
        "",
        "Dit is een vertrekpunt: de verantwoordelijken vullen noodzaak, proportionaliteit,"
        " het oordeel van de FG en de restrisico's in hun eigen context aan.",
        "",
        "## Gegevensstroom",
        "",
        *flow,
        "",
        "## Risico's en bestaande maatregelen",
        "",
        *_md_table(("Risico", "Maatregel", "Vastgelegd in", "Restrisico"), risks),
        "",
        "## Bewaartermijnen",
        "",
        *_md_table(("Gegevens", "Bewaartermijn"), retention_periods(s)),
        *_footer(s),
    ]
    return "\n".join(lines) + "\n"


def annex_md(s: Settings) -> str:
    """Bijlage bij de verwerkersovereenkomst: what the operator processes and how."""
    lines = [
        f"# Bijlage verwerkersovereenkomst: {s.gateway.name}",
        "",
        "## Wat de verwerker verwerkt",
        "",
        "- Versleutelde berichten in doorgifte en, tot het einde van de bewaartermijn,"
        " de inhoud versleuteld in rust; de verwerker ziet de inhoud niet in de normale"
        " bedrijfsvoering",
        "- Metagegevens, toestemmingsregister, gebruikersaccounts en de audittrail",
        "",
        "## Subverwerkers en locaties",
        "",
        f"- Mailrelay: {s.smtp.host}:{s.smtp.port} (TLS: {s.smtp.starttls})",
        "- Back-up: versleuteld naar "
        + (s.backup.recipient or s.backup.public_key_file or "(niet ingesteld)"),
        "",
        "## Bewaartermijnen",
        "",
        *_md_table(("Gegevens", "Bewaartermijn"), retention_periods(s)),
        "",
        "Bij het einde van de overeenkomst levert de verwerker de audittrail (CSV en FHIR"
        " AuditEvent) en het toestemmingsregister aan en verwijdert daarna de gegevens.",
        "",
        "## Beveiliging",
        "",
        *_md_table(("Maatregel", "Vastgelegd in"), ((m.text, m.evidence) for m in measures(s))),
        "",
        "## Datalekken",
        "",
        "De verwerker meldt een (vermoedelijk) datalek zonder onnodige vertraging aan de"
        " verantwoordelijken, zodat zij binnen 72 uur kunnen melden (AVG art. 33);"
        " `/privacy/breach` bepaalt de omvang uit de audittrail.",
        *_footer(s),
    ]
    return "\n".join(lines) + "\n"


def _latin1(text: str) -> str:
    return text.replace("’", "'").encode("latin-1", "replace").decode("latin-1")


def to_pdf(markdown: str) -> bytes:
    """A plain PDF of one of the documents (headings, paragraphs, table rows as lines)."""
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    for line in markdown.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            pdf.set_font("Helvetica", "B", 16 if level == 1 else 13)
            pdf.multi_cell(0, 8, _latin1(line.lstrip("# ")), new_x="LMARGIN", new_y="NEXT")
            continue
        pdf.set_font("Helvetica", "", 9)
        text = line.strip("|").replace(" | ", "  -  ") if line.startswith("|") else line
        pdf.multi_cell(0, 5, _latin1(text.replace("`", "").replace("_", " ").strip()) or " ",
                       new_x="LMARGIN", new_y="NEXT")  # fmt: skip
    return bytes(pdf.output())


DOCUMENTS = ("verwerkingsregister", "dpia", "verwerkersovereenkomst-bijlage")


def write(s: Settings, orgs: list[Organisation], out: Path, *, pdf: bool = True) -> list[Path]:
    """Write the three documents (.md, and .pdf unless pdf=False) into out; return paths."""
    out.mkdir(parents=True, exist_ok=True)
    texts = dict(zip(DOCUMENTS, (register_md(s, orgs), dpia_md(s), annex_md(s)), strict=True))
    written: list[Path] = []
    for name, text in texts.items():
        md = out / f"{name}.md"
        md.write_text(text, encoding="utf-8")
        written.append(md)
        if pdf:
            target = out / f"{name}.pdf"
            target.write_bytes(to_pdf(text))
            written.append(target)
    return written
