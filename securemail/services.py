"""The long-lived services of one gateway home, built once and passed in (no singletons)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from securemail import audit_integrity, forms
from securemail.config import Settings
from securemail.errors import NotInitialisedError
from securemail.keystore import kill_agent
from securemail.openpgp import Keyring
from securemail.store import Store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    store: Store
    keyring: Keyring
    definition: forms.FormDefinition
    clock: Callable[[], datetime] = field(default=utcnow)

    def now(self) -> datetime:
        return self.clock()

    def now_iso(self) -> str:
        return self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def close(self) -> None:
        self.store.close()
        # The keyring's gpg-agent holds no passphrases (caching is off); it need not outlive us.
        kill_agent(self.keyring.homedir, self.keyring.binary)


def open_services(settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> Services:
    """Open an initialised home: store (migrated), keyring, form definition."""
    if not settings.db_path.exists() or not settings.gnupg_home.exists():
        raise NotInitialisedError(
            f"{settings.home} is not an initialised gateway home; run: securemail init "
            f"--home {settings.home}",
            home=str(settings.home),
        )
    store = Store(settings.db_path)
    store.migrate()
    # Sign the audit chain head every [audit] checkpoint_every rows, in the writes themselves.
    audit_integrity.install(store, settings.home, settings.audit.checkpoint_every)
    keyring = Keyring(
        Path(settings.gnupg_home),
        binary=settings.gpg.binary,
        timeout=settings.gpg.timeout_seconds,
        max_concurrency=settings.gpg.max_concurrency,
    )
    definition = forms.load_definition(settings.forms_path)
    return Services(settings, store, keyring, definition, clock)
