"""Settings: one frozen object, loaded and validated once from securemail.toml + SECUREMAIL_* env.

Every setting is declared here once, with its default and its documentation; the
commented securemail.toml that ``init`` writes and docs/settings.md are generated
from these declarations, so a setting cannot exist undocumented.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from securemail.errors import ConfigError

#: A trusted proxy's address or network ([web] trusted_proxies; securemail.web.forwarded).
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(value: str) -> tuple[Network, ...]:
    """``[web] trusted_proxies``: comma-separated addresses or networks (127.0.0.1, 10.0.0.0/8).

    Raises ConfigError naming the entry that is neither."""
    out: list[Network] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"[web] trusted_proxies: {item!r} is not an IP address or network",
                setting="[web] trusted_proxies",
            ) from None
    return tuple(out)


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "securemail.toml"
DB_NAME = "securemail.db"
GNUPG_DIR = "gnupg"
#: Below this the passphrase stretching of a GP key is a formality (docs/performance.md).
MIN_S2K_CALIBRATION_MS = 10
MAX_SIGNERS = 64  # [gpg] signers: gpg-agents side by side


def _s(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    name: str = _s("securemail", "Name of this gateway instance, shown in the UI and mails.")
    source_id: str = _s("gateway-1", "Id of this instance in audit rows (NEN 7513 source).")
    base_url: str = _s(
        "http://127.0.0.1:8080",
        "Public URL of the web app; links in mails point here (never with patient data).",
    )
    from_address: str = _s(
        "gateway@securemail.invalid", "Envelope and From address of mails the gateway sends."
    )
    reply_address: str = _s(
        "",
        "Where nurses' replies go (Reply-To of every mail, a user id on the gateway's key,"
        " published with it in the Autocrypt header); empty means antwoord@ the domain of"
        " from_address.",
    )
    passing_on_address: str = _s(
        "",
        "Regional passing-on (doorbemiddeling) team address: first on a nurse's pass-on list,"
        " and where a decline that names no other team goes by itself (deadline running);"
        " empty when the region has none.",
    )
    forms_dir: str = _s("", "Folder with form definitions; empty means the forms/ of the project.")
    admin_address: str = _s(
        "",
        "The operator's address for key notices (keys expiring, a team about to lose its "
        "last key); empty means no notices, only `securemail keys check` and /admin.",
    )
    keys_dir: str = _s(
        "", "The reviewed key directory (keys/ with directory.toml); empty means the project's."
    )
    log_format: str = _s(
        "text",
        "'text' (one readable line per event) or 'json' (one JSON object per line: time, level,"
        " logger, message, incident and request id) for a log collector (docs/monitoring.md).",
    )
    batch_max_lines: int = _s(
        1000,
        "`securemail request send --batch`: the most lines one batch may hold; the first line"
        " past it is refused and nothing after it is read (docs/cli-batch.md).",
    )
    batch_max_line_kb: int = _s(
        2048,
        "`securemail request send --batch`: the longest line (one request) in KiB, as the"
        " API's largest body; a longer line is refused and nothing after it is read.",
    )

    def reply_to(self) -> str:
        """The reply address: reply_address, or antwoord@ the domain of from_address."""
        return self.reply_address or "antwoord@" + self.from_address.rpartition("@")[2]

    def gp_address(self, username: str) -> str:
        """A GP's own address at the gateway's domain: a user id on the GP's signing key
        (added at enrolment) and the From of what the GP signs, so that signer and sender
        agree and the gateway's domain (SPF/DKIM) stays aligned with From."""
        local = "".join(c for c in username.lower() if c.isalnum() or c in "._-").strip(".")
        return f"{local or 'huisarts'}@{self.from_address.rpartition('@')[2]}"


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = _s("127.0.0.1", "Address the web app listens on.")
    port: int = _s(8080, "Port the web app listens on.")
    secure_cookies: bool = _s(
        False,
        "Always set the Secure flag on cookies; without it they get it whenever the request"
        " came over HTTPS (directly, or per X-Forwarded-Proto from a trusted proxy).",
    )
    trusted_proxies: str = _s(
        "",
        "Reverse proxies (comma-separated addresses or networks, e.g. 127.0.0.1) whose"
        " X-Forwarded-For/-Proto are believed; empty trusts no forwarded header. The audit"
        " trail's source address is the rightmost hop that is not a listed proxy.",
    )
    session_idle_minutes: int = _s(15, "A session ends after this many idle minutes.")
    session_max_hours: int = _s(8, "A session ends this many hours after login, active or not.")
    login_max_failures: int = _s(5, "Failed logins before an account is temporarily locked.")
    lockout_minutes: int = _s(15, "How long a locked account stays locked.")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = _s("127.0.0.1", "Relay (smarthost) that takes the sealed mail.")
    port: int = _s(25, "Port of the relay.")
    starttls: str = _s(
        "required", "'required' (STARTTLS, refuse without it) or 'implicit' (TLS from the start)."
    )
    cafile: str = _s("", "CA bundle to trust for the relay; empty means the system store.")
    username: str = _s("", "SMTP AUTH user; empty means no AUTH.")
    password: str = _s("", "SMTP AUTH password (or set SECUREMAIL_SMTP_PASSWORD).")
    timeout_seconds: float = _s(30.0, "Timeout for connecting to and talking with the relay.")
    max_connections: int = _s(
        2, "Concurrent connections to the relay; Exchange answers 432 4.3.2 to more."
    )


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    retry_initial_seconds: float = _s(30.0, "First retry delay after a temporary failure.")
    retry_max_seconds: float = _s(1800.0, "Longest delay between two attempts.")
    give_up_after_seconds: float = _s(86400.0, "A message still undelivered this long fails.")
    lease_seconds: float = _s(
        120.0, "A worker's claim on a message; after it lapses another worker takes over."
    )
    poll_seconds: float = _s(1.0, "How often an idle worker looks for due messages.")


@dataclass(frozen=True, slots=True)
class GpgSettings:
    binary: str = _s("gpg", "The gpg program.")
    timeout_seconds: float = _s(30.0, "Every gpg call is killed and refused after this long.")
    max_concurrency: int = _s(2, "gpg processes at once (python-gnupg#120: cap it).")
    signers: int = _s(
        0,
        "Signing homes, each with its own gpg-agent over the same keys, so that signatures'"
        " S2K derivations run side by side (docs/performance.md); 0: one per core.",
    )
    s2k_calibration_ms: int = _s(
        100,
        "Milliseconds gpg-agent spends deriving a GP's key from the signing passphrase (S2K);"
        " fixed when a key is created or its passphrase changed, paid by every signature."
        " Lower sends faster but makes a stolen keyring cheaper to guess (docs/performance.md);"
        " at least 10.",
    )


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    timezone: str = _s("Europe/Amsterdam", "Time zone of the working calendar.")
    workday_start: str = _s("08:00", "Start of a working day (HH:MM).")
    workday_end: str = _s("16:00", "End of a working day (HH:MM); 8 hours make one working day.")
    answer_urgent_hours: float = _s(2.0, "A team answers an urgent request within (clock hours).")
    answer_regular_working_days: float = _s(
        1.0, "A team answers a regular request within (working days)."
    )
    ask_urgent_hours: float = _s(2.0, "A practice answers an urgent ask within (clock hours).")
    ask_regular_working_days: float = _s(
        2.0, "A practice answers a regular ask within (working days)."
    )
    check_seconds: float = _s(
        60.0, "How often the web app looks for overdue requests and asks (and escalates them)."
    )
    order_reminder_days: int = _s(
        14,
        "Days before an order's evaluation date and end date that the GP is reminded (the"
        " order is 'verlopen' the day after its end date).",
    )


@dataclass(frozen=True, slots=True)
class AttachmentSettings:
    max_bytes_per_message: int = _s(
        10_000_000,
        "Largest total size of the attachments of one request (bytes, after decoding): "
        "PDF, JPEG and PNG, checked by content.",
    )
    max_count: int = _s(5, "Most attachments one request may carry.")


@dataclass(frozen=True, slots=True)
class AuditSettings:
    retention_years: int = _s(5, "Audit rows are kept at least this many years from writing.")
    checkpoint_every: int = _s(1000, "Sign the chain head after this many new rows.")
    working_hours: str = _s("07:00-19:00", "Access outside these hours is listed as an exception.")
    working_hours_by_role: str = _s(
        "",
        "Per role, instead of working_hours: 'role=HH:MM-HH:MM, ...' (a window may run past"
        " midnight, e.g. nurse=07:00-23:30).",
    )
    working_hours_by_team: str = _s(
        "",
        "Per team (its address), instead of the role's hours for its members:"
        " 'nacht@zorg.example=22:00-08:00, ...'; a night team's night is its working time.",
    )


#: The consent policies ([consent] policy); securemail.consent.evaluate applies them.
CONSENT_POLICIES = ("direct_care", "explicit")


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    policy: str = _s(
        "direct_care",
        "'direct_care': within the treatment relationship consent is presumed (WGBO 7:457; AVG"
        " 9(2)(h) with UAVG 30(3)) and recorded from the signed request; an objection always"
        " stops a send. 'explicit': every send needs a recorded permit (a covenant that asks"
        " for it). Withdrawals, stop notices and answers to a nurse's ask are never gated"
        " (docs/consent.md).",
    )


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    content_days: int = _s(
        30,
        "Message content (the signed request, the answer, an ask's patient fields, the sealed"
        " mail) is purged this many days after the request's final outcome (docs/retention.md).",
    )
    metadata_days: int = _s(
        730,
        "Request, hop, outbox and ask rows (references, states, times, teams; no content) and"
        " ended sessions are deleted this many days after the final outcome.",
    )
    draft_days: int = _s(
        30,
        "A draft (a request form saved before sending, sealed like other content) is deleted"
        " this many days after it was last saved.",
    )
    content_key_file: str = _s(
        "",
        "AES-256 key that seals patient content at rest; empty means H/keys/content.key."
        " A relative path is under the home; $VARS are expanded ($CREDENTIALS_DIRECTORY).",
    )
    purge_every_hours: float = _s(
        24.0, "How often the web app runs the purge (securemail purge does it on demand)."
    )


@dataclass(frozen=True, slots=True)
class RegionSettings:
    public_page: bool = _s(
        False,
        "Show the region page (/regio, .json, .csv: teams per postcode area, no patient data) "
        "to visitors who are not logged in.",
    )
    stale_days: int = _s(30, "A team's map entry not confirmed for this many days is 'verouderd'.")
    office_start: str = _s("08:00", "Office hours start (HH:MM, Europe/Amsterdam), working days.")
    office_end: str = _s("17:00", "Office hours end; the evening runs from here to the night.")
    night_start: str = _s("23:00", "The night starts (every day, weekends and holidays too).")
    night_end: str = _s("07:00", "The night ends.")


@dataclass(frozen=True, slots=True)
class BackupSettings:
    recipient: str = _s(
        "",
        "Fingerprint of the offline backup key `securemail backup` encrypts to; its public key "
        "is in the gateway keyring or in public_key_file, its secret key never on the gateway "
        "(docs/backup.md).",
    )
    public_key_file: str = _s(
        "",
        "File with the backup key's public key (armored); used instead of the gateway keyring.",
    )
    timeout_seconds: float = _s(
        3600.0, "A backup or restore still running after this long is stopped and removed."
    )
    restore_reference_gap: int = _s(
        10000,
        "A restore moves every reference counter (UVZ-, ASK-) this far past the backup's value "
        "(rounded up to a thousand): numbers the lost gateway may have used after the backup "
        "are never handed out again. Must exceed the references taken between two backups.",
    )


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    metrics_token: str = _s(
        "",
        "Bearer token a Prometheus scraper sends to /metrics (or set "
        "SECUREMAIL_MONITORING_METRICS_TOKEN); empty means /metrics is refused to everyone.",
    )
    health_check_seconds: float = _s(
        60.0, "How often the web app runs and records the health checks (availability)."
    )
    relay_cache_seconds: float = _s(
        30.0, "A relay check result is reused this long, so /healthz polling cannot hammer it."
    )
    gpg_cache_seconds: float = _s(10.0, "A gpg check result is reused this long.")
    health_retention_days: int = _s(
        400, "Recorded health checks are kept this many days (availability over a year)."
    )
    availability_target_percent: float = _s(
        99.8, "Availability the NTA 7516 declaration compares with (NTA 7516 6.1.2: 99.8 %/year)."
    )


@dataclass(frozen=True, slots=True)
class InboundSettings:
    enabled: bool = _s(
        False,
        "Run the listener that takes nurses' encrypted replies (docs/mail.md); off by default,"
        " on in the demo.",
    )
    host: str = _s("127.0.0.1", "Address the reply listener (SMTP, STARTTLS required) binds.")
    port: int = _s(2525, "Port of the reply listener.")
    certfile: str = _s("", "PEM certificate (chain) the listener offers in STARTTLS.")
    keyfile: str = _s("", "PEM private key of certfile (mode 0600, never committed).")
    max_bytes: int = _s(
        1_048_576, "Largest reply taken (bytes); a larger one is refused with 552 before DATA ends."
    )


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    web: WebSettings = field(default_factory=WebSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    gpg: GpgSettings = field(default_factory=GpgSettings)
    deadlines: DeadlineSettings = field(default_factory=DeadlineSettings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    consent: ConsentSettings = field(default_factory=ConsentSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    region: RegionSettings = field(default_factory=RegionSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)

    @property
    def db_path(self) -> Path:
        return self.home / DB_NAME

    @property
    def gnupg_home(self) -> Path:
        return self.home / GNUPG_DIR

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def content_key_path(self) -> Path:
        """Where the content key lives: [retention] content_key_file, or H/keys/content.key."""
        configured = os.path.expandvars(self.retention.content_key_file)
        path = Path(configured) if configured else Path("keys") / "content.key"
        return path if path.is_absolute() else self.home / path

    @property
    def forms_path(self) -> Path:
        return Path(self.gateway.forms_dir) if self.gateway.forms_dir else PROJECT_ROOT / "forms"

    @property
    def keys_path(self) -> Path:
        return Path(self.gateway.keys_dir) if self.gateway.keys_dir else PROJECT_ROOT / "keys"

    def replace(self, **sections: Any) -> Settings:
        """A copy with some sections' fields changed: replace(smtp={"port": 2525})."""
        changes: dict[str, Any] = {}
        for name, values in sections.items():
            if name == "home":
                changes[name] = Path(values)
            else:
                changes[name] = dataclasses.replace(getattr(self, name), **values)
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name != "home"
}


def default_home() -> Path:
    return Path(os.environ.get("SECUREMAIL_HOME", "./var"))


def _coerce(section: str, key: str, kind: Any, value: Any) -> Any:
    name = f"[{section}] {key}"
    kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{name} must be true or false", setting=name)
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a whole number", setting=name)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a whole number", setting=name) from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number", setting=name) from None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text", setting=name)
    return value


def load(home: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read H/securemail.toml (if present) and SECUREMAIL_<SECTION>_<KEY> overrides, validated."""
    home = Path(home) if home is not None else default_home()
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    path = home / CONFIG_NAME
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", setting=str(path)) from None
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)} in {path}", setting=str(path))
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(values) - set(known)
        if bad:
            raise ConfigError(f"unknown setting(s) {sorted(bad)} in [{section}]", setting=section)
        kwargs: dict[str, Any] = {}
        for key, f in known.items():
            env_value = env.get(f"SECUREMAIL_{section.upper()}_{key.upper()}")
            if env_value is not None:
                kwargs[key] = _coerce(section, key, f.type, env_value)
            elif key in values:
                kwargs[key] = _coerce(section, key, f.type, values[key])
        sections[section] = cls(**kwargs)
    settings = Settings(home=home, **sections)
    _validate(settings)
    return settings


def parse_hours(spec: str) -> tuple[time, time]:
    """'07:00-19:00' -> (start, end); start > end means the window runs past midnight."""
    a, sep, b = spec.partition("-")
    try:
        if not sep:
            raise ValueError(spec)
        start, end = time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
    except ValueError:
        raise ValueError(f"{spec!r} must look like 07:00-19:00") from None
    if start == end:
        raise ValueError(f"{spec!r} is an empty window")
    return start, end


def parse_hours_map(spec: str) -> dict[str, tuple[time, time]]:
    """'key=HH:MM-HH:MM, key=...' -> {key: window}; '' -> {}; ValueError names a bad entry."""
    out: dict[str, tuple[time, time]] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, hours = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part.strip()!r} must look like key=07:00-19:00")
        out[key.strip()] = parse_hours(hours)
    return out


def _validate_working_hours(a: AuditSettings) -> None:
    for key in ("working_hours", "working_hours_by_role", "working_hours_by_team"):
        value = getattr(a, key)
        try:
            parse_hours(value) if key == "working_hours" else parse_hours_map(value)
        except ValueError as exc:
            raise ConfigError(f"[audit] {key}: {exc}", setting=f"[audit] {key}") from None


def _validate(s: Settings) -> None:
    if s.smtp.starttls not in {"required", "implicit"}:
        raise ConfigError(
            "[smtp] starttls must be 'required' or 'implicit'; plaintext is never allowed",
            setting="[smtp] starttls",
        )
    if s.inbound.enabled and not (s.inbound.certfile and s.inbound.keyfile):
        raise ConfigError(
            "[inbound] enabled needs certfile and keyfile: replies are taken over STARTTLS only",
            setting="[inbound] certfile",
        )
    if s.gateway.log_format not in {"text", "json"}:
        raise ConfigError(
            "[gateway] log_format must be 'text' or 'json'", setting="[gateway] log_format"
        )
    if s.consent.policy not in CONSENT_POLICIES:
        raise ConfigError(
            "[consent] policy must be 'direct_care' or 'explicit'", setting="[consent] policy"
        )
    positive = [
        ("monitoring", "health_check_seconds"),
        ("monitoring", "relay_cache_seconds"),
        ("monitoring", "gpg_cache_seconds"),
        ("monitoring", "health_retention_days"),
        ("monitoring", "availability_target_percent"),
        ("delivery", "retry_initial_seconds"),
        ("delivery", "retry_max_seconds"),
        ("delivery", "give_up_after_seconds"),
        ("delivery", "lease_seconds"),
        ("gateway", "batch_max_lines"),
        ("gateway", "batch_max_line_kb"),
        ("gpg", "timeout_seconds"),
        ("gpg", "max_concurrency"),
        ("smtp", "timeout_seconds"),
        ("smtp", "max_connections"),
        ("web", "session_idle_minutes"),
        ("web", "session_max_hours"),
        ("audit", "retention_years"),
        ("audit", "checkpoint_every"),
        ("retention", "content_days"),
        ("retention", "metadata_days"),
        ("retention", "purge_every_hours"),
        ("region", "stale_days"),
        ("backup", "timeout_seconds"),
        ("attachments", "max_bytes_per_message"),
        ("attachments", "max_count"),
    ]
    for section, key in positive:
        if getattr(getattr(s, section), key) <= 0:
            raise ConfigError(f"[{section}] {key} must be positive", setting=f"[{section}] {key}")
    parse_trusted(s.web.trusted_proxies)  # raises ConfigError naming the bad entry
    if s.retention.metadata_days < s.retention.content_days:
        raise ConfigError(
            "[retention] metadata_days must be at least content_days",
            setting="[retention] metadata_days",
        )
    if s.gpg.s2k_calibration_ms < MIN_S2K_CALIBRATION_MS:
        raise ConfigError(
            f"[gpg] s2k_calibration_ms must be at least {MIN_S2K_CALIBRATION_MS}",
            setting="[gpg] s2k_calibration_ms",
        )
    if not 0 <= s.gpg.signers <= MAX_SIGNERS:
        raise ConfigError(
            f"[gpg] signers must be 0 (one per core) to {MAX_SIGNERS}", setting="[gpg] signers"
        )
    _validate_working_hours(s.audit)
    for key in ("office_start", "office_end", "night_start", "night_end"):
        value = getattr(s.region, key)
        hh, _, mm = value.partition(":")
        if not (
            len(hh) == len(mm) == 2
            and hh.isdigit()
            and mm.isdigit()
            and int(hh) < 24
            and int(mm) < 60
        ):
            raise ConfigError(f"[region] {key} must be HH:MM", setting=f"[region] {key}")
    r = s.region
    if not r.night_end <= r.office_start < r.office_end <= r.night_start:
        raise ConfigError(
            "[region] hours must run night_end <= office_start < office_end <= night_start",
            setting="[region] office_start",
        )
    if s.delivery.retry_max_seconds < s.delivery.retry_initial_seconds:
        raise ConfigError(
            "[delivery] retry_max_seconds must be at least retry_initial_seconds",
            setting="[delivery] retry_max_seconds",
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """The commented securemail.toml that ``init`` writes: every setting, its default, its doc."""
    overrides = overrides or {}
    lines = [
        "# securemail gateway configuration. Every setting is listed with its default.",
        "# Environment variables SECUREMAIL_<SECTION>_<KEY> override these values.",
        "",
    ]
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            lines.append(f"# {f.metadata['doc']}")
            value = overrides.get(section, {}).get(f.name, f.default)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def render_markdown() -> str:
    """docs/settings.md body: one table per section."""
    out = ["# Settings", "", "Generated from `securemail/config.py` (`securemail settings`).", ""]
    for section, cls in SECTIONS.items():
        out += [f"## [{section}]", "", "| setting | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            env = f"SECUREMAIL_{section.upper()}_{f.name.upper()}"
            out.append(
                f"| `{f.name}` (`{env}`) | `{_toml_value(f.default)}` | {f.metadata['doc']} |"
            )
        out.append("")
    return "\n".join(out)
