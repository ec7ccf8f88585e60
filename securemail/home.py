"""A gateway home, composed: its migrations, and creating (init), checking and opening it.

This is the composition root: it sits above every room and below web, cli and demo.
``MIGRATIONS`` lists every migration set once, in the order the sets apply; later tables
reference earlier ones (users -> organisations, requests -> teams and users). (asks' set
may apply before auth's: SQLite checks a REFERENCES clause on insert, not on CREATE TABLE;
asks uses the counters table only at run time.) retention's migration seals the content
columns of the tables listed before it, so it comes last.

Invariant: ``init_home`` is idempotent: on an existing home it changes nothing and says so;
``check`` lists every problem that must switch sending off (gpg, homedir mode, database
integrity, audit chain), the way SecureDrop refuses to serve with a bad journalist key;
``open_services`` opens an initialised home (content key first, then the migrated store);
``background`` starts every background task of a running gateway (delivery worker, deadline
watch, retention purge, health recorder), the same set for ``serve`` and ``worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlite_utils
from sqlite_utils import Migrations

from securemail import config, contentbox
from securemail.access import SYSTEM
from securemail.accounts import apitoken, auth, session, totp
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import review as audit_review
from securemail.audit import trail as audit
from securemail.config import Settings
from securemail.consent import table as consent_table
from securemail.delivery import outbox
from securemail.delivery.worker import Worker
from securemail.errors import NotInitialisedError, SecuremailError
from securemail.exchange import answer_copy, asks, drafts, escalation, orders, thread
from securemail.exchange import send as exchange
from securemail.form import request as forms
from securemail.form.definition import form_names
from securemail.inbound import listener, replies
from securemail.keys import gp as gpkeys
from securemail.keys import practice as practicekeys
from securemail.message import autocrypt, notify
from securemail.openpgp.keyring import Fingerprint, Keyring
from securemail.ops import health, retention
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.services import AGENT_LOCK, Services, utcnow
from securemail.store import MIGRATIONS as STORE_MIGRATIONS
from securemail.store import Store, get_meta, set_meta
from securemail.store import open_store as open_migrated

#: Every migration set, listed once, in the order it applies (see the module docstring).
MIGRATIONS: tuple[Migrations, ...] = (
    STORE_MIGRATIONS,  # meta (the set keeps its old name, "securemail.gateway")
    audit.MIGRATIONS,
    apitoken.MIGRATIONS,
    directory.MIGRATIONS,
    outbox.MIGRATIONS,
    audit_integrity.MIGRATIONS,
    asks.MIGRATIONS,
    audit_report.MIGRATIONS,
    audit_review.MIGRATIONS,
    session.MIGRATIONS,
    totp.MIGRATIONS,
    auth.MIGRATIONS,
    consent_table.MIGRATIONS,
    exchange.MIGRATIONS,
    gpkeys.MIGRATIONS,
    health.MIGRATIONS,
    regionmap.MIGRATIONS,
    replies.MIGRATIONS,
    practicekeys.MIGRATIONS,
    answer_copy.MIGRATIONS,
    orders.MIGRATIONS,
    drafts.MIGRATIONS,
    thread.MIGRATIONS,
    retention.MIGRATIONS,  # last: it seals the content of tables listed before it
)


def open_store(path: Path | str, *, migrate: bool = True) -> Store:
    """A Store on ``path``, every set of ``MIGRATIONS`` applied (unless ``migrate=False``)."""
    return open_migrated(path, MIGRATIONS if migrate else ())


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
    # The home holds the database, the content key and the gateway's keys: its owner only,
    # whatever the umask, also when the folder was made beforehand (docs/threat-model.md).
    os.chmod(home, 0o700)
    cfg = home / config.CONFIG_NAME
    if not cfg.exists():
        cfg.write_text(config.render_toml(overrides), encoding="utf-8")
        os.chmod(cfg, 0o600)  # it may come to hold the relay password
        report.created.append(str(cfg))
    settings = config.load(home)
    new_db = not settings.db_path.exists()
    new_key = not settings.content_key_path.exists()
    contentbox.load(settings)  # made here, or refused when sealed content lost its key
    if new_key:
        report.created.append(f"{settings.content_key_path} (content key, mode 0600)")
    db = Store(settings.db_path, source_id=settings.gateway.source_id)
    try:
        applied = db.migrate(MIGRATIONS)
        if new_db or applied:
            report.created.append(f"{settings.db_path} ({len(applied)} migrations)")
        gnupg = settings.gnupg_home
        if not gnupg.exists():
            Keyring.create(gnupg, s2k_calibration_ms=settings.gpg.s2k_calibration_ms)
            report.created.append(f"{gnupg}/ (mode 0700)")
        keyring = Keyring.from_settings(gnupg, settings.gpg)
        fpr = db.read_sync(lambda d: get_meta(d, "gateway_fingerprint"))
        name = f"securemail gateway {settings.gateway.source_id}"
        if not fpr:
            fpr = await keyring.generate_key(name, settings.gateway.from_address, None, kind="both")

            def record_key(d: sqlite_utils.Database, fpr: str = fpr) -> None:
                set_meta(d, "gateway_fingerprint", fpr)
                audit.record(
                    d,
                    audit.AuditEvent.of(SYSTEM, "gateway.init", object_type="key", object_id=fpr),
                )

            db.write_sync(record_key)
            report.created.append(f"gateway key {fpr}")
        # What the gateway signs is From from_address, and replies are encrypted to its key
        # for the reply address: both must be user ids on it (also after a settings change).
        for address in (settings.gateway.from_address, settings.gateway.reply_to()):
            await keyring.add_uid(fpr, name, address, None)
    finally:
        db.close()
    return report


async def autocrypt_headers(svc: Services) -> dict[str, str]:
    """From address -> Autocrypt header value for the delivery worker: the gateway's public
    key under each of its own addresses (from_address, the reply address). Mail with any
    other From (the GP's) gets none; see securemail.message.autocrypt."""
    key = await svc.keyring.export_public(gateway_fingerprint(svc.store))
    g = svc.settings.gateway
    return {a.lower(): autocrypt.header_value(a, key) for a in (g.from_address, g.reply_to())}


def notice_signer(svc: Services) -> Callable[[bytes], Awaitable[bytes]]:
    """For the delivery worker: a checked notice, signed by the gateway's key (RFC 3156
    multipart/signed, From and Subject protected inside), so a reader sees who sent it and
    that nobody on the way changed its words (docs/mail.md)."""
    fpr = gateway_fingerprint(svc.store)

    async def sign(raw: bytes) -> bytes:
        outer, entity = notify.signable(raw)
        return notify.with_signature(outer, await svc.keyring.sign_multipart(entity, fpr))

    return sign


def gateway_fingerprint(db: Store) -> Fingerprint:
    fpr = db.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
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


def check_home(settings: Settings, store: Store) -> CheckReport:
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
    pending = store.pending_migrations(MIGRATIONS)
    if pending:
        report.problems.append(f"pending migrations: {', '.join(pending)}")
    try:
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


def _agent_lock(settings: Settings) -> int:
    fd = os.open(settings.home / AGENT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def open_services(settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> Services:
    """Open an initialised home: store (migrated), keyring, form definition."""
    if not settings.db_path.exists() or not settings.gnupg_home.exists():
        raise NotInitialisedError(
            f"{settings.home} is not an initialised gateway home; run: securemail init "
            f"--home {settings.home}",
            home=str(settings.home),
        )
    # The content key first: it must open what is sealed (or refuse) before anything runs,
    # and the migration that seals older plaintext rows uses it.
    contentbox.load(settings)
    store = Store(settings.db_path, source_id=settings.gateway.source_id)
    store.migrate(MIGRATIONS)
    # Sign the audit chain head every [audit] checkpoint_every rows, in the writes themselves.
    audit_integrity.install(store, settings.home, settings.audit.checkpoint_every)
    keyring = Keyring.from_settings(Path(settings.gnupg_home), settings.gpg)
    definition = forms.load_definition(settings.forms_path)
    # Every form folder is read (and checked) now: a broken one stops the start, not a send.
    names = form_names(settings.forms_path)
    loaded = [forms.load_definition(settings.forms_path, n) for n in names]
    definitions = {d.form_id: d for d in loaded}
    return Services(
        settings, store, keyring, definition, clock, _agent_lock(settings), definitions=definitions
    )


#: The background tasks of a running gateway, by their asyncio task names.
BACKGROUND_TASKS = ("delivery-worker", "deadline-watch", "retention-purge", "health-recorder")


@dataclass(frozen=True)
class Background:
    """The running background tasks; ``stop`` ends them all (``delivery`` first in ``tasks``)."""

    stop: asyncio.Event
    tasks: tuple[asyncio.Task[None], ...]

    @property
    def delivery(self) -> asyncio.Task[None]:
        return self.tasks[0]


def worker_clock(svc: Services) -> Callable[[], float]:
    """One clock: the worker stamps and claims on the services' clock. The real one is
    time.time itself, so the worker guards it with time.monotonic against steps; a clock a
    test or the demo froze is followed as it is told to move."""
    if svc.clock is utcnow:
        return time.time
    return lambda: svc.now().timestamp()


def run_background(
    svc: Services,
    stop: asyncio.Event,
    *,
    owner_id: str,
    monitor: health.Monitor | None = None,
    autocrypt: Mapping[str, str] | None = None,
    sign_notice: Callable[[bytes], Awaitable[bytes]] | None = None,
) -> Background:
    """Start every background task of a gateway until ``stop`` is set: the delivery worker
    (woken by each send), the deadline watch, the retention purge and the health recorder.

    ``monitor``: the process's health monitor, so that the recorded checks and /healthz share
    one cache (a new one when the process has none, as ``securemail worker``)."""
    hooks = exchange.Hooks(svc)
    worker = Worker(
        svc.settings,
        svc.store,
        owner_id=owner_id,
        on_final=hooks.on_final,
        before_send=hooks.before_send,
        autocrypt=autocrypt,
        sign_notice=sign_notice,
        clock=worker_clock(svc),
    )
    svc.on_queued = worker.wake  # a send wakes an idle worker instead of its next poll
    every = svc.settings.deadlines.check_seconds
    loops = (
        worker.run(stop),
        escalation.run(svc, stop, every),
        retention.run(svc.store, svc.settings, svc.now, stop),
        health.run(monitor or health.Monitor(svc), stop),
    )
    tasks = tuple(
        asyncio.create_task(loop, name=name)
        for loop, name in zip(loops, BACKGROUND_TASKS, strict=True)
    )
    return Background(stop, tasks)


async def stop_background(svc: Services, running: Background) -> None:
    """Set ``stop`` and wait for every task: the worker finishes or releases what it holds.
    The first failure of a task (the loops other than the worker log theirs) is raised."""
    svc.on_queued = None
    running.stop.set()
    results = await asyncio.gather(*running.tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


@contextlib.asynccontextmanager
async def background(
    svc: Services,
    stop: asyncio.Event,
    *,
    owner_id: str,
    monitor: health.Monitor | None = None,
) -> AsyncIterator[Background]:
    """``run_background`` for the body of an ``async with``, with the reply listener
    (``[inbound] enabled``) beside it; all stopped on the way out."""
    running = run_background(
        svc,
        stop,
        owner_id=owner_id,
        monitor=monitor,
        autocrypt=await autocrypt_headers(svc),
        sign_notice=notice_signer(svc),
    )
    server = await listener.start(svc) if svc.settings.inbound.enabled else None
    try:
        yield running
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
        await stop_background(svc, running)
