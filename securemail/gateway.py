"""A gateway home: create it (init) and check it (startup checks that keep sending off).

Invariant: ``init`` is idempotent: on an existing home it changes nothing and says so;
``check`` lists every problem that must switch sending off (gpg, homedir mode, database
integrity, audit chain), the way SecureDrop refuses to serve with a bad journalist key.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from securemail import config
from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.config import Settings
from securemail.errors import SecuremailError
from securemail.openpgp.keyring import Fingerprint, Keyring
from securemail.store import Store, migrations

MIGRATIONS = migrations("securemail.gateway")


@MIGRATIONS(name="0001_meta")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def get_meta(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return str(row[0]) if row else None


def set_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


@dataclass
class InitReport:
    home: Path
    created: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created)


async def init_home(
    home: Path, *, overrides: dict[str, dict[str, object]] | None = None
) -> InitReport:
    """Create securemail.toml, securemail.db (WAL, migrated) and gnupg/ with the gateway key."""
    report = InitReport(home)
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / config.CONFIG_NAME
    if not cfg.exists():
        cfg.write_text(config.render_toml(overrides), encoding="utf-8")
        os.chmod(cfg, 0o600)  # it may come to hold the relay password
        report.created.append(str(cfg))
    settings = config.load(home)
    new_db = not settings.db_path.exists()
    new_key = not settings.content_key_path.exists()
    from securemail import contentbox  # (imports config only; kept local like audit_integrity)

    contentbox.load(settings)  # made here, or refused when sealed content lost its key
    if new_key:
        report.created.append(f"{settings.content_key_path} (content key, mode 0600)")
    store = Store(settings.db_path)
    try:
        applied = store.migrate()
        if new_db or applied:
            report.created.append(f"{settings.db_path} ({len(applied)} migrations)")
        gnupg = settings.gnupg_home
        if not gnupg.exists():
            Keyring.create(gnupg, s2k_calibration_ms=settings.gpg.s2k_calibration_ms)
            report.created.append(f"{gnupg}/ (mode 0700)")
        keyring = Keyring.from_settings(gnupg, settings.gpg)
        fpr = store.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
        if not fpr:
            domain = settings.gateway.from_address.split("@")[-1]
            fpr = await keyring.generate_key(
                f"securemail gateway {settings.gateway.source_id}",
                f"gateway@{domain}",
                None,
                kind="both",
            )
            store.write_sync(
                lambda db: (
                    set_meta(db, "gateway_fingerprint", fpr),
                    audit.record(
                        db,
                        audit.AuditEvent.of(
                            SYSTEM, "gateway.init", object_type="key", object_id=fpr
                        ),
                        source_id=settings.gateway.source_id,
                    ),
                )
            )
            report.created.append(f"gateway key {fpr}")
    finally:
        store.close()
    return report


def gateway_fingerprint(store: Store) -> Fingerprint:
    fpr = store.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
    if not fpr:
        raise SecuremailError("the gateway has no key; run securemail init")
    return Fingerprint(fpr)


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    #: Worth an operator's look, but sending may go on (exit 0).
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(settings: Settings, store: Store) -> CheckReport:
    """Everything that must hold before the gateway may send."""
    report = CheckReport()
    gpg = shutil.which(settings.gpg.binary) or (
        settings.gpg.binary if Path(settings.gpg.binary).exists() else None
    )
    if gpg is None:
        report.problems.append(f"gpg binary {settings.gpg.binary!r} not found")
    else:
        report.facts.append(f"gpg: {gpg}")
    home = settings.gnupg_home
    if not home.is_dir():
        report.problems.append(f"{home} is missing")
    else:
        mode = stat.S_IMODE(home.stat().st_mode)
        if mode & 0o077:
            report.problems.append(f"{home} has mode {oct(mode)}; it must be 0700")
    integrity = store.integrity_check()
    if integrity != "ok":
        report.problems.append(f"sqlite integrity_check: {integrity}")
    pending = store.pending_migrations()
    if pending:
        report.problems.append(f"pending migrations: {', '.join(pending)}")
    try:
        from securemail import contentbox

        contentbox.load(settings)
        mode = stat.S_IMODE(settings.content_key_path.stat().st_mode)
        if mode & 0o077:
            report.problems.append(
                f"{settings.content_key_path} has mode {oct(mode)}; it must be 0600"
            )
        else:
            report.facts.append(f"content key: {settings.content_key_path}")
    except SecuremailError as exc:
        report.problems.append(f"content key: {exc.reason}")
    try:
        from securemail.audit import integrity as audit_integrity

        keys = audit_integrity.trusted_keys(settings.home)
        chain = store.read_sync(lambda db: audit_integrity.verify(db, keys))
        report.facts.append(f"audit chain: {chain.summary()}, head {chain.head_hash[:16]}")
    except audit.ChainBrokenError as exc:
        report.problems.append(f"audit chain broken: {exc.reason}")
    except SecuremailError as exc:  # the checkpoint key is unreadable or has a loose mode
        report.problems.append(f"audit key: {exc.reason}")
    if (settings.keys_path / "directory.toml").exists():
        from securemail.keys import manifest as keymanifest
        from securemail.keys import pinning as keydir

        try:
            manifest = keymanifest.load_manifest(settings.keys_path)
            report.warnings.extend(store.read_sync(lambda db: keydir.drift(db, manifest)))
        except SecuremailError as exc:  # `keys sync` refuses it too, with the same reason
            report.warnings.append(f"key directory: {exc.reason}")
    return report
