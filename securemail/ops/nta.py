"""The NTA 7516 provider declaration: the criteria a communication service provider declares
(NTA 7516:2019, table 2), each with the value THIS installation achieves, read from its
configuration and measured state, and the instructions the care organisation must follow.

Invariants: every value comes from the settings, the keyring, the database or a live check
made now - nothing is claimed that this installation cannot show; a criterion it does not
meet (or cannot measure) says so; the declaration carries no patient data (counts, key
algorithms, settings; team entry addresses only where a team cannot receive). Generating it
verifies the audit chain in full and records that as an ``audit.verify`` row.

Sources for the structure (cited in the document): the criteria of table 2 and their
clause numbers, the availability limit of 6.1.2 (99,8 % per year) and the duty to publish
which criteria are met, as quoted from NTA 7516:2019 on webtoolmanagementsystemen.nl (see
SOURCES). Limits we could not source are not reproduced: the document says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securemail.access import SYSTEM
from securemail.audit import integrity as audit_integrity
from securemail.audit import review as audit_review
from securemail.audit import trail as audit
from securemail.errors import NotFoundError, SecuremailError
from securemail.keys import foresight as keycheck
from securemail.openpgp.keyinfo import encryption_subkey
from securemail.ops import health
from securemail.region import directory
from securemail.services import Services
from securemail.store import get_meta

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
REPORTED, NOT_OFFERED, NOT_ASSESSED = "reported", "not offered", "not assessed"

SOURCES = (
    ("NTA 7516:2019, section 7, table 2 'Criteria voor communicatiedienstenaanbieders' and the "
     "duty to publish which criteria are met",
     "https://www.webtoolmanagementsystemen.nl/en/ViewDocumentSection/"
     "b9618c8d-0e78-4be5-b4a5-a1d4764daa78/b9618c8d-0e78-4be5-b4a5-a1d4764daa78/"
     "7d1d75dd-4644-4079-9a4b-bdf6b1aa5989"),
    ("NTA 7516:2019, 6.1, table 1 'Criteria' and 6.1.2 'Minimale beschikbaarheid' "
     "(grenswaarde 99,8 % per jaar; no fallback to insecure e-mail)",
     "https://www.webtoolmanagementsystemen.nl/en/ViewDocumentSection/"
     "b9618c8d-0e78-4be5-b4a5-a1d4764daa78/b9618c8d-0e78-4be5-b4a5-a1d4764daa78/"
     "3e8292e5-ce73-4074-bdad-a41f55bc1711"),
    ("NTA 7516:2019, introduction: provider lists its criteria with achieved values and the "
     "way the service must be used; authentication levels 'substantieel' and 'hoog'",
     "https://www.webtoolmanagementsystemen.nl/en/ViewDocumentSection/"
     "b9618c8d-0e78-4be5-b4a5-a1d4764daa78/b9618c8d-0e78-4be5-b4a5-a1d4764daa78/"
     "0babe112-68c0-4fb9-8ab4-56e536733b1f"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Criterion:
    clause: str  # NTA 7516:2019 clause, "" for the further facts this declaration adds
    name: str  # the criterion's name as the standard gives it (Dutch), or our heading
    group: str
    achieved: str  # what this installation achieves (English)
    status: str  # met | not met | not measured | reported | not offered | not assessed
    basis: str  # where the value comes from


@dataclass(frozen=True, slots=True)
class LoggingDuty:
    """One logging duty a communication service provider has, and the audit events that
    meet it, with how many this installation holds (clause numbers not reproduced)."""

    duty: str
    events: tuple[str, ...]
    counts: tuple[int, ...]
    status: str
    note: str = ""


#: duty -> (the audit events that meet it, what the gateway cannot see). Every event named
#: here is an audit event code (tests/e2e/test_nta_declaration.py checks).
LOGGING_DUTIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Sending: a message was offered for sending (who, to whom, when, outcome)",
     ("request.send", "notice.send", "consent.check"), ""),
    ("Delivery: the message was handed to the receiving side's mail server",
     ("request.deliver", "notice.deliver"), ""),
    ("Failed delivery and retries, with the reason",
     ("request.retry", "request.uncertain", "request.fail", "notice.retry",
      "notice.uncertain", "notice.fail"), ""),
    ("Opening: the recipient took note of the message",
     ("request.view", "request.answer", "ask.view"),
     "opening in the team's own mail client (PGP/MIME) is outside the gateway and not logged; "
     "views in the portal and the team's answer are"),
    ("Withdrawal and stopping of a message",
     ("request.withdraw", "request.stop", "notice.stop", "outbox.cancel"), ""),
    ("Authentication and refused access of users",
     ("auth.login", "auth.fail", "auth.lockout", "access.denied"), ""),
    ("Integrity and review of the log itself",
     ("audit.verify", "audit.checkpoint", "audit.review", "audit.export"), ""),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Declaration:
    gateway_name: str
    source_id: str
    generated_at: datetime
    criteria: tuple[Criterion, ...]
    facts: tuple[Criterion, ...]
    instructions: tuple[str, ...]
    sources: tuple[tuple[str, str], ...] = SOURCES
    logging: tuple[LoggingDuty, ...] = ()

    def by_clause(self, clause: str) -> Criterion:
        return next(c for c in self.criteria if c.clause == clause)


@dataclass
class _State:
    """What the declaration measured, before it is put into words."""

    settings: Any
    relay: health.CheckResult
    gateway_key: str = "missing"
    gateway_key_ok: bool = False
    team_algorithms: Counter[str] = field(default_factory=Counter)
    teams: list[str] = field(default_factory=list)
    teams_without_key: list[str] = field(default_factory=list)
    earliest_team_key_end: datetime | None = None
    gps_with_key: int = 0
    gps_without_key: int = 0
    users: Counter[str] = field(default_factory=Counter)
    users_unpaired: int = 0
    api_tokens: int = 0
    chain_ok: bool = False
    chain_detail: str = ""
    audit_rows: int = 0
    checkpoints: int = 0
    last_checkpoint: str = ""
    last_backup: str = ""  # when the last successful backup finished (audit trail)
    availability: dict[int, health.Availability] = field(default_factory=dict)
    event_counts: Counter[str] = field(default_factory=Counter)


def _pct(a: health.Availability) -> str:
    p = a.percent
    if p is None:
        return f"{a.days} d: no recorded checks"
    return (
        f"{a.days} d: {p:.3f} % ({a.checks} checks, {a.failed_checks} failed, "
        f"{a.unmonitored_seconds / 3600:.1f} h unmonitored)"
    )


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


async def _measure(svc: Services, now: datetime) -> _State:
    st = _State(svc.settings, await health.check_relay(svc.settings))
    fpr = await svc.store.read(lambda db: get_meta(db, "gateway_fingerprint"))
    if fpr:
        try:
            info = await svc.keyring.key_info(fpr)
            st.gateway_key = f"{info.algorithm}" + (
                f" {info.bits} bit" if info.bits and info.algorithm == "rsa" else ""
            )
            st.gateway_key += (
                f", expires {info.expires:%Y-%m-%d}" if info.expires else ", no expiry"
            )
            st.gateway_key_ok = info.can_sign
        except (NotFoundError, SecuremailError):
            st.gateway_key = "not in the keyring"
    foresight = await keycheck.foresee(svc, now=now)
    st.teams = await svc.store.read(lambda db: [t.address for t in directory.list_teams(db)])
    served: set[str] = set()
    for k in foresight.keys:
        if k.kind == "gp":
            if k.why is None:
                st.gps_with_key += 1
            else:
                st.gps_without_key += 1
            continue
        if k.why is not None:
            continue
        served.add(k.owner)
        info = await svc.keyring.key_info(k.fingerprint)
        sub = encryption_subkey(info, now)
        st.team_algorithms[sub.algorithm + (f"{sub.bits}" if sub.algorithm == "rsa" else "")] += 1
        if k.usable_until is not None and (
            st.earliest_team_key_end is None or k.usable_until < st.earliest_team_key_end
        ):
            st.earliest_team_key_end = k.usable_until
    st.teams_without_key = [t for t in st.teams if t not in served]

    def people(db: Any) -> None:
        for role, n in db.execute(
            "SELECT role, count(*) FROM users WHERE active = 1 GROUP BY role"
        ):
            st.users[role] = int(n)
        st.users_unpaired = int(
            db.execute(
                "SELECT count(*) FROM users u LEFT JOIN user_security s ON s.user_id = u.id "
                "WHERE u.active = 1 AND coalesce(s.totp_secret, '') = ''"
            ).fetchone()[0]
        )
        st.api_tokens = int(
            db.execute(
                "SELECT count(*) FROM api_tokens WHERE revoked_at = '' AND expires_at > ?",
                [now.isoformat()],
            ).fetchone()[0]
        )
        st.availability = {
            d: health.availability(db, now.timestamp(), d) for d in health.WINDOWS_DAYS
        }
        for code, n in db.execute(
            "SELECT event_code, count(*) FROM audit_events GROUP BY event_code"
        ):
            st.event_counts[str(code)] = int(n)

    await svc.store.read(people)
    st.last_backup = await svc.store.read(
        lambda db: audit.last_success_at(db, "gateway.backup") or ""
    )
    try:
        keys = audit_integrity.trusted_keys(svc.settings.home)
        report = await svc.store.read(lambda db: audit_integrity.verify(db, keys))
        st.chain_ok, st.chain_detail = True, report.summary()
        st.audit_rows, st.checkpoints = report.rows, report.checkpoints
        cp = report.last_checkpoint
        st.last_checkpoint = f"row {cp.seq}, signed {cp.signed_at}" if cp else "none yet"
    except SecuremailError as exc:  # a broken chain, or an unusable checkpoint key
        st.chain_ok, st.chain_detail = False, f"{exc.code}: {exc.reason}"
    ok, detail = st.chain_ok, st.chain_detail
    await svc.store.write(
        lambda db: audit_review.record_verification(
            db,
            SYSTEM,
            ok=ok,
            detail=f"nta-declaration: {detail}",
        )
    )
    return st


def _criteria(st: _State) -> list[Criterion]:
    s = st.settings
    target = s.monitoring.availability_target_percent
    year = st.availability[365]
    measured = [a for a in st.availability.values() if a.percent is not None]
    if not measured:
        avail_status = NOT_MEASURED
    else:
        avail_status = MET if (year.percent or 0) >= target else NOT_MET
    tls_now = dict(st.relay.facts).get("tls_version", "")
    web_tls = s.gateway.base_url.startswith("https://") and s.web.secure_cookies
    # Without TLS to the browser it is not met whatever the relay does; with it, the relay
    # decides (a relay that cannot be reached now cannot show its TLS).
    comm_status = NOT_MET if not web_tls else (MET if st.relay.ok else NOT_MEASURED)
    mode = (
        "STARTTLS required (no session without it)"
        if s.smtp.starttls == "required"
        else "implicit TLS from the first byte"
    )
    relay_now = (
        f"relay now: {tls_now}, certificate verified"
        if st.relay.ok
        else f"relay now: {st.relay.reason}"
    )
    web = (
        "web app: served over https with Secure cookies"
        if web_tls
        else "web app: NOT configured for TLS ([gateway] base_url is not https:// or "
        "[web] secure_cookies is false)"
    )
    algos = ", ".join(f"{a} x{n}" for a, n in sorted(st.team_algorithms.items())) or "none"
    unpaired = (
        f"; {st.users_unpaired} still to pair an authenticator (they can open nothing "
        "until they do)"
        if st.users_unpaired
        else ""
    )
    users = ", ".join(f"{n} {r}" for r, n in sorted(st.users.items())) or "none"
    g = "Beschikbaarheid"
    return [
        Criterion("6.1.2", "Minimale beschikbaarheid", g,
                  "; ".join(_pct(a) for a in st.availability.values())
                  + f". Compared with {target:g} % per year (NTA 7516 6.1.2 grenswaarde: 99,8 %"
                  " per year). Time no check covered counts as unavailable.",
                  avail_status, "recorded health checks (health_checks table)"),
        Criterion("6.1.3", "Maximale uitvalduur", g,
                  f"longest span without an ok health check in the last 365 days: "
                  f"{_hours(year.longest_outage_seconds)}" if year.checks else
                  "no recorded checks", REPORTED if year.checks else NOT_MEASURED,
                  "recorded health checks; compare with the limit in NTA 7516 6.1.3 "
                  "(not reproduced here)"),
        Criterion("6.1.4", "Maximaal gegevensverlies", g,
                  "0 accepted messages while the server lives: a request is accepted only "
                  "once committed to disk (sqlite WAL, synchronous=FULL) together with its "
                  "audit row, and kept in the outbox until its final outcome; loss of the "
                  "server: " + _backup_text(st),
                  MET if st.last_backup else NOT_MET,
                  "design (docs/delivery.md); [backup]; gateway.backup audit rows"),
        Criterion("6.1.5", "Herkomstbevestiging", "Integriteit",
                  f"every request is signed with the GP's personal OpenPGP key "
                  f"({st.gps_with_key} GPs with a usable signing key, {st.gps_without_key} "
                  "without: they cannot send); notices come from the gateway's address only",
                  MET, "keyring; users table"),
        Criterion("6.1.6", "Data-integriteit", "Integriteit",
                  "OpenPGP sign-then-encrypt (integrity-protected) in PGP/MIME (RFC 3156), "
                  "structure checked at enqueue and again before the relay; the audit trail is "
                  "a hash chain with signed checkpoints",
                  MET, "openpgp.seal, sealcheck, audit_integrity"),
        Criterion("6.1.7", "Onweerlegbaarheid verzender", "Integriteit",
                  "the GP's signature covers the whole message including request.json; "
                  "request.sign and request.send are audited; audit chain verified now: "
                  + ("intact" if st.chain_ok else f"BROKEN ({st.chain_detail})"),
                  MET if st.chain_ok else NOT_MET, "full verification run for this declaration"),
        Criterion("6.1.9", "Gegevensvertrouwelijkheid", "Vertrouwelijkheid",
                  f"end to end: encrypted to every active pinned member key of the receiving "
                  f"team; encryption keys in use: {algos}; "
                  f"{len(st.teams_without_key)} of {len(st.teams)} active teams without a "
                  "usable key (requests to them are refused, never sent unencrypted)"
                  + (f": {', '.join(st.teams_without_key)}" if st.teams_without_key else ""),
                  MET, "keyring and key directory, checked now"),
        Criterion("6.1.10", "Toegangsvertrouwelijkheid", "Vertrouwelijkheid",
                  f"every user logs in personally with password and TOTP, in every role "
                  f"({users}{unpaired}); sessions end after {s.web.session_idle_minutes} min "
                  f"idle or {s.web.session_max_hours} h; lock after {s.web.login_max_failures} "
                  f"failures; {st.api_tokens} active API tokens (practice systems: scoped, "
                  "revocable, made by a GP after a full login). Whether this is the "
                  "authentication level ('substantieel'/'hoog') the organisation requires is "
                  "its judgement", REPORTED, "users, user_security, api_tokens; [web]"),
        Criterion("6.1.11", "Communicatievertrouwelijkheid", "Vertrouwelijkheid",
                  f"to the relay: {mode}, certificate always verified, TLS 1.2 at least, no "
                  f"plaintext fallback; {relay_now}; {web}; onward from the relay: the "
                  "organisation's MTA policy (instructions)",
                  comm_status, "[smtp], [web], [gateway] base_url; live relay check"),
        Criterion("6.1.13", "Internationaal ad-hocberichtenverkeer", "Vertrouwelijkheid",
                  "not offered: the gateway serves teams and practices of one Dutch region",
                  NOT_OFFERED, "scope of the service"),
        Criterion("6.1.14", "Continuïteit van ad-hocberichtenverkeer - beantwoorden",
                  "Gebruiksvriendelijkheid",
                  "the team answers in the gateway (accepted with the nurse in charge, or "
                  "declined); the practice is notified by reference only", MET, "docs/loop.md"),
        Criterion("6.1.15", "Continuïteit van ad-hocberichtenverkeer - doorsturen",
                  "Gebruiksvriendelijkheid",
                  "passing on (doorbemiddeling) re-seals the request to the next team's keys, "
                  "the GP's signature kept", MET, "docs/loop.md"),
        Criterion("6.1.16", "Veiligheid als gemak", "Gebruiksvriendelijkheid",
                  "secure is the only way: no key, consent or TLS stops the message with a "
                  "reason a person can act on; nothing falls back to ordinary e-mail",
                  MET, "threat model #1-#3"),
        Criterion("6.1.17", "Leesbaarheid", "Gebruiksvriendelijkheid",
                  "PGP/MIME readable with standard OpenPGP mail clients; Dutch text, HTML and "
                  "request.json inside", MET, "docs/architecture.md"),
        Criterion("6.1.18", "Eigen kopie", "Gebruiksvriendelijkheid",
                  "the GP sees each sent request, its delivery and its answer in the gateway"
                  + _retention_text(s), REPORTED, "requests pages; retention settings"),
        Criterion("6.1.19", "Dossierkoppeling", "Interoperabiliteit",
                  "machine-readable request.json inside the encryption; JSON API for practice "
                  "systems", MET, "docs/forms.md, web/api.py"),
        Criterion("7.2", "Multikanaalcommunicatie", "Interoperabiliteit",
                  "not assessed: this declaration does not reproduce the criterion's text",
                  NOT_ASSESSED, "-"),
    ]  # fmt: skip


def _backup_text(st: _State) -> str:
    recipient = getattr(getattr(st.settings, "backup", None), "recipient", "")
    key = (
        f"backups encrypted to the offline key {recipient[-16:]}"
        if recipient
        else "no backup key configured ([backup] recipient)"
    )
    last = (
        f"last successful backup {st.last_backup}"
        if st.last_backup
        else "no successful backup recorded"
    )
    return f"{key}; {last} (data since then would be lost)"


def _retention_text(s: Any) -> str:
    r = getattr(s, "retention", None)
    if r is None:  # a configuration from before [retention]
        return "; message content is kept in the gateway's database (no purge configured)"
    return (
        f"; content (sealed at rest) is purged {r.content_days} days after the final "
        f"outcome, metadata after {r.metadata_days} days, audit rows after "
        f"{s.audit.retention_years} years: the HIS and the team's record are the record"
    )


def _facts(st: _State, now: datetime) -> list[Criterion]:
    s = st.settings
    horizon = (
        f"earliest team key end: {st.earliest_team_key_end:%Y-%m-%d} "
        f"({(st.earliest_team_key_end - now).days} days)"
        if st.earliest_team_key_end
        else "no team key with an end date"
    )
    return [
        Criterion("", "Logging and audit (NEN 7513)", "Further facts",
                  f"hash-chained audit trail, append-only; {st.audit_rows} rows, "
                  f"{st.checkpoints} signed checkpoints, last {st.last_checkpoint}; chain "
                  + ("verified intact now" if st.chain_ok else f"BROKEN: {st.chain_detail}")
                  + f"; rows kept {s.audit.retention_years} years; logs carry ids only "
                  f"(log format: {s.gateway.log_format})",
                  MET if st.chain_ok else NOT_MET, "audit_integrity.verify, [audit]"),
        Criterion("", "Key management", "Further facts",
                  f"gateway key: {st.gateway_key}; team keys pinned from the reviewed key "
                  f"directory, a changed key quarantined until confirmed by phone code; "
                  f"{horizon}; GP keys protected by a passphrase only the GP knows",
                  MET if st.gateway_key_ok else NOT_MET, "keyring, keys/directory.toml"),
        Criterion("", "Data location", "Further facts",
                  "database and keyring in the gateway home on the server that runs this "
                  "gateway; mail leaves only sealed, through the configured relay"
                  + ("; patient content in the database sealed (AES-256-GCM) under a key "
                     "held apart from the database file" if hasattr(s, "retention") else ""),
                  REPORTED, "[gateway], [smtp], [retention]"),
        Criterion("", "Retention", "Further facts", _retention_text(s).removeprefix("; "),
                  REPORTED, "[retention], [audit] (docs/retention.md)"),
        Criterion("", "Incident handling", "Further facts",
                  "unexpected errors get an incident id (page and log, no patient data); "
                  "a broken audit chain names the first bad row; breach scope from the audit "
                  "trail (securemail audit); /healthz and /metrics for alerting",
                  REPORTED, "docs/monitoring.md, docs/audit.md"),
    ]  # fmt: skip


INSTRUCTIONS = (
    "Document your own minimum requirements for each criterion and check this declaration "
    "against them (NTA 7516 asks this of the care professional).",
    "Confirm every new or changed team key by phone with the team's fixed contact, using the "
    "phone code; never confirm a key you could not check.",
    "Keep the backup key and the audit checkpoint key's backup offline, apart from the "
    "server; test a restore.",
    "Keep the content key ([retention] content_key_file) apart from the database file and "
    "its backups, so a copy of the database alone opens nothing.",
    "Every person logs in with their own account and authenticator; never share them. Report "
    "a lost phone at once so the admin can reset the second factor.",
    "GPs keep their signing passphrase to themselves and revoke their key at once when it may "
    "be known to someone else.",
    "Serve the web app only over TLS (reverse proxy with HSTS, [web] secure_cookies = true, "
    "an https:// [gateway] base_url).",
    "Have the organisation's MTA (smarthost) enforce TLS onward; the gateway requires TLS to it.",
    "When a message cannot be delivered securely, never switch to ordinary e-mail: call the "
    "team or practice and follow docs/delivery.md.",
    "Watch /healthz and /metrics (docs/monitoring.md): act on keys expiring within 7 days, a "
    "growing queue, old retries and any failed audit verification.",
    "Have the privacy officer verify the audit chain and review access regularly.",
)


def _logging(st: _State) -> list[LoggingDuty]:
    """Per duty, its events and counts: met when every event is one the trail records."""
    out = []
    for duty, events, gap in LOGGING_DUTIES:
        known = all(e in audit.EVENT_CODES for e in events)
        out.append(
            LoggingDuty(
                duty,
                events,
                tuple(st.event_counts.get(e, 0) for e in events),
                (MET if not gap else REPORTED) if known else NOT_MET,
                gap,
            )
        )
    return out


async def build(svc: Services, *, now: datetime | None = None) -> Declaration:
    """Measure and declare, as of ``now`` (default: the services' clock)."""
    now = now or svc.now()
    st = await _measure(svc, now)
    return Declaration(
        svc.settings.gateway.name,
        svc.settings.gateway.source_id,
        now.astimezone(UTC),
        tuple(_criteria(st)),
        tuple(_facts(st, now)),
        INSTRUCTIONS,
        logging=tuple(_logging(st)),
    )


# -- rendering ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(d: Declaration) -> str:
    """The declaration as Markdown."""
    met = sum(1 for c in d.criteria if c.status == MET)
    out = [
        f"# NTA 7516 provider declaration: {d.gateway_name}",
        "",
        f"Installation `{d.source_id}`, generated {d.generated_at:%Y-%m-%d %H:%M} UTC by "
        "`securemail nta-declaration` from this installation's configuration and measured "
        "state. Criteria and clause numbers: NTA 7516:2019 table 2 (see Sources).",
        "",
        f"{met} of {len(d.criteria)} criteria met; the others are marked as they are.",
        "",
        "## Criteria",
        "",
        "| clause | criterion | group | achieved by this installation | status | basis |",
        "|---|---|---|---|---|---|",
    ]
    for c in d.criteria:
        out.append(
            f"| {c.clause} | {_cell(c.name)} | {c.group} | {_cell(c.achieved)} | "
            f"**{c.status}** | {_cell(c.basis)} |"
        )
    out += [
        "",
        "## Further facts",
        "",
        "| topic | achieved | status | basis |",
        "|---|---|---|---|",
    ]
    for c in d.facts:
        out.append(f"| {_cell(c.name)} | {_cell(c.achieved)} | **{c.status}** | {_cell(c.basis)} |")
    out += [
        "",
        "## Logging duties and the audit events that meet them",
        "",
        "Each row names the audit events (docs/audit-actions.md) recorded for the duty and how "
        "many this installation holds now.",
        "",
        "| duty | audit events (rows now) | status | note |",
        "|---|---|---|---|",
    ]
    for duty in d.logging:
        events = ", ".join(f"`{e}` ({n})" for e, n in zip(duty.events, duty.counts, strict=True))
        out.append(f"| {_cell(duty.duty)} | {events} | **{duty.status}** | {_cell(duty.note)} |")
    out += ["", "## Instructions for the care organisation", ""]
    out += [f"{i}. {text}" for i, text in enumerate(d.instructions, 1)]
    out += ["", "## Sources", ""]
    out += [f"- {title}: <{url}>" for title, url in d.sources]
    out += [
        "",
        "Limits of NTA 7516 other than 6.1.2 are not reproduced here; compare the "
        "values above with the standard itself.",
        "",
    ]
    return "\n".join(out)


def _latin1(text: str) -> str:
    # The PDF core fonts cover latin-1 only; anything else becomes "?" rather than failing.
    return text.replace("\u2013", "-").encode("latin-1", "replace").decode("latin-1")


def pdf(d: Declaration) -> bytes:
    """The declaration as a PDF (fpdf2, core fonts)."""
    from fpdf import FPDF

    doc = FPDF(orientation="L", format="A4")
    doc.set_auto_page_break(auto=True, margin=12)
    doc.set_title(_latin1(f"NTA 7516 provider declaration: {d.gateway_name}"))
    doc.add_page()
    doc.set_font("Helvetica", "B", 14)
    doc.cell(
        0,
        8,
        _latin1(f"NTA 7516 provider declaration: {d.gateway_name}"),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    doc.set_font("Helvetica", "", 9)
    doc.multi_cell(
        0,
        5,
        _latin1(
            f"Installation {d.source_id}, generated {d.generated_at:%Y-%m-%d %H:%M} UTC from this "
            "installation's configuration and measured state. Criteria and clause numbers: "
            "NTA 7516:2019 table 2 (see Sources)."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    doc.ln(2)
    doc.set_font("Helvetica", "", 7)
    widths = (12, 40, 24, 140, 18, 43)
    with doc.table(col_widths=widths, text_align="LEFT", line_height=3.6) as table:
        table.row(
            [_latin1(h) for h in ("clause", "criterion", "group", "achieved", "status", "basis")]
        )
        for c in (*d.criteria, *d.facts):
            table.row(
                [
                    _latin1(v)
                    for v in (c.clause or "-", c.name, c.group, c.achieved, c.status, c.basis)
                ]
            )
    doc.ln(3)
    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Logging duties and the audit events that meet them", new_x="LMARGIN",
             new_y="NEXT")  # fmt: skip
    doc.set_font("Helvetica", "", 7)
    with doc.table(col_widths=(90, 110, 18, 59), text_align="LEFT", line_height=3.6) as table:
        table.row([_latin1(h) for h in ("duty", "audit events (rows now)", "status", "note")])
        for duty in d.logging:
            events = ", ".join(f"{e} ({n})" for e, n in zip(duty.events, duty.counts, strict=True))
            table.row([_latin1(v) for v in (duty.duty, events, duty.status, duty.note or "-")])
    doc.ln(3)
    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Instructions for the care organisation", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("Helvetica", "", 8)
    for i, text in enumerate(d.instructions, 1):
        doc.multi_cell(0, 4, _latin1(f"{i}. {text}"), new_x="LMARGIN", new_y="NEXT")
    doc.ln(2)
    doc.set_font("Helvetica", "B", 10)
    doc.cell(0, 6, "Sources", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("Helvetica", "", 7)
    for title, url in d.sources:
        doc.multi_cell(0, 3.5, _latin1(f"{title}: {url}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())
