"""Backup: a consistent online copy of a gateway home, encrypted to an offline backup key.

Invariants:
- never a plaintext archive on disk: the tar (database snapshot, gnupg/, keys, config) is
  streamed straight into gpg's stdin; the only plaintext written is the database snapshot,
  inside the home in a 0700 folder, removed before ``make_backup`` returns (or fails);
- the database is copied with sqlite's online backup API in one step, i.e. inside one read
  transaction: a consistent snapshot while the server keeps writing (WAL), never ``cp``;
- the archive is encrypted to exactly one checked key: the configured ``[backup]
  recipient`` (or ``public_key_file``), live, strong, encryption-capable, whose secret half
  is NOT in the gateway keyring; anything else is refused before a byte is read;
- the archive file appears (0600) only when complete: gpg writes a ``.partial`` file that is
  renamed at the end, or removed;
- each backup, and each refused backup, leaves a ``gateway.backup`` audit row.

The archive is a tar with ``manifest.json`` first (format version, gateway version, time,
migrations applied, audit chain head, sha256 and size of every member), ``manifest.sig``
(the manifest signed with the home's Ed25519 audit key), then the home's files under
``home/``. ``securemail.ops.restore`` reads it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlite_utils

from securemail import __version__
from securemail.access import Actor
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.config import CONFIG_NAME, DB_NAME, GNUPG_DIR, Settings
from securemail.delivery import outbox
from securemail.errors import InputError, NotInitialisedError, SecuremailError
from securemail.openpgp import gpgproc, signers
from securemail.openpgp.keyinfo import (
    KeyInfo,
    encryption_subkey,
    expires_for_encryption,
    parse_fingerprint,
    parse_listing,
    unusable_reason,
)
from securemail.store import Store

FORMAT = "securemail-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The manifest's Ed25519 signature by the home's audit key (docs/backup.md section 5).
SIGNATURE = "manifest.sig"
SIGNATURE_DOMAIN = b"securemail.ops.backup.manifest.v1\x00"
PREFIX = "home/"
#: Folders of the home that are not the gateway's state (see docs/backup.md).
EXCLUDED_DIRS = ("demo",)
#: The snapshot folder inside the home; a leftover one (a killed backup) is removed later.
SNAPSHOT_PREFIX = ".backup-"
_LIVE_DB = {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"}
_LOCK_RE = re.compile(r"(\.lock$|^\.#lk)")
_CHUNK = 1 << 20
#: Warn when the backup key expires within this many days.
EXPIRY_WARNING_DAYS = 30


class BackupError(SecuremailError):
    code = "backup.failed"
    nl = "De back-up is niet gemaakt: {why}."


class BackupKeyMissingError(BackupError):
    code = "backup.no_key"
    nl = "Er is geen back-upsleutel ingesteld; er is geen back-up gemaakt."


class BackupKeyError(BackupError):
    code = "backup.key_unusable"
    nl = "De back-upsleutel is niet bruikbaar ({why}); er is geen back-up gemaakt."


@dataclass(frozen=True, slots=True)
class BackupKey:
    """The checked key an archive is encrypted to."""

    fingerprint: str
    subkey: str  # the encryption subkey gpg must use (pinned with "!")
    expires: datetime | None
    public_key_file: Path | None  # None: the key is in the gateway keyring


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    sha256: str
    size: int
    key: BackupKey
    files: int
    audit_head: tuple[int, str]
    excluded: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class _Member:
    name: str  # path relative to the home, '/'-separated
    data: bytes | None = None  # small files, read once (what is hashed is what is packed)
    path: Path | None = None  # the database snapshot, streamed
    sha256: str = ""
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# -- gpg ------------------------------------------------------------------------------------


def gpg_env() -> dict[str, str]:
    """gpg's messages in English and its statuses parseable, whatever the operator's locale."""
    return {**os.environ, "LC_ALL": "C.UTF-8", "LANGUAGE": "C"}


def run_gpg(
    binary: str, homedir: Path | None, args: list[str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """A short gpg call (listing), killed at ``timeout``; never raises for gpg's own failure."""
    home = ["--homedir", str(homedir)] if homedir is not None else []
    try:
        return subprocess.run(
            [binary, *home, "--batch", "--no-tty", "--status-fd", "2", *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            env=gpg_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"gpg could not run ({type(exc).__name__})", why="gpg") from None


def _listing_args() -> list[str]:
    return ["--with-colons", "--fixed-list-mode", "--with-fingerprint", "--with-fingerprint"]


def check_backup_key(settings: Settings, *, now: datetime | None = None) -> BackupKey:
    """The configured backup key, if it may be encrypted to now; else a refusal with why.

    Refuses: no key configured; a recipient that is not a full fingerprint; a key that is
    missing, expired, revoked, too weak or without an encryption subkey (keyinfo's rules);
    a key file holding secret key material or another key than ``recipient``; and a key
    whose secret half is in the gateway keyring (then the home could read its own backups).
    """
    now = now or datetime.now(UTC)
    b, gpg = settings.backup, settings.gpg
    if not b.recipient and not b.public_key_file:
        raise BackupKeyMissingError(
            "no backup key configured: set [backup] recipient (fingerprint of the offline "
            "backup key) and import its public key, or set [backup] public_key_file "
            "(docs/backup.md)",
            why="not_configured",
        )
    wanted = None
    if b.recipient:
        try:
            wanted = parse_fingerprint(b.recipient)
        except ValueError:
            raise BackupKeyError(
                "[backup] recipient is not a 40-hex-digit fingerprint",
                why="invalid",
                setting="[backup] recipient",
            ) from None
    key_file: Path | None = None
    info: KeyInfo | None = None
    if b.public_key_file:
        key_file = Path(b.public_key_file)
        if not key_file.is_absolute():
            key_file = settings.home / key_file
        if not key_file.is_file():
            raise BackupKeyError(
                f"[backup] public_key_file {key_file} does not exist",
                why="missing",
                setting="[backup] public_key_file",
            )
        r = run_gpg(
            gpg.binary,
            settings.gnupg_home,
            [*_listing_args(), "--import-options", "show-only", "--import", str(key_file)],
            gpg.timeout_seconds,
        )
        text = r.stdout.decode("latin-1")
        if any(line.startswith("sec:") for line in text.splitlines()) or (
            b"PRIVATE KEY BLOCK" in key_file.read_bytes()
        ):
            raise BackupKeyError(
                f"{key_file} holds secret key material; the gateway may hold only the "
                "public backup key",
                why="secret_on_gateway",
            )
        infos = parse_listing(text, now=now)
        if wanted is None and len(infos) != 1:
            raise BackupKeyError(
                f"{key_file} must hold exactly one public key, not {len(infos)}", why="missing"
            )
        info = (
            infos[0]
            if wanted is None
            else next((i for i in infos if i.fingerprint == wanted), None)
        )
        if info is None:
            raise BackupKeyError(
                f"{key_file} does not hold the key {wanted}", why="missing", fingerprint=wanted
            )
    elif wanted is not None:
        r = run_gpg(
            gpg.binary,
            settings.gnupg_home,
            [*_listing_args(), "--list-keys", wanted],
            gpg.timeout_seconds,
        )
        info = next(
            (
                i
                for i in parse_listing(r.stdout.decode("latin-1"), now=now)
                if i.fingerprint == wanted
            ),
            None,
        )
    fpr = info.fingerprint if info is not None else wanted
    why = unusable_reason(info, None, now)
    if why or info is None:
        where = f"in {key_file}" if key_file else "in the gateway keyring"
        raise BackupKeyError(
            f"backup key {fpr} {where} is unusable: {why}", why=why, fingerprint=fpr
        )
    secret = run_gpg(
        gpg.binary,
        settings.gnupg_home,
        [*_listing_args(), "--list-secret-keys", info.fingerprint],
        gpg.timeout_seconds,
    )
    if any(line.startswith("sec:") for line in secret.stdout.decode("latin-1").splitlines()):
        raise BackupKeyError(
            f"the secret half of backup key {info.fingerprint} is in the gateway keyring: "
            "whoever holds the home could read its backups; keep it offline and delete it "
            "here (gpg --delete-secret-keys)",
            why="secret_on_gateway",
            fingerprint=info.fingerprint,
        )
    return BackupKey(
        info.fingerprint,
        encryption_subkey(info, now).fingerprint,
        expires_for_encryption(info, now),
        key_file,
    )


# -- what goes in ------------------------------------------------------------------------


def _sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def collect_files(home: Path, *, exclude: tuple[Path, ...] = ()) -> tuple[list[_Member], list[str]]:
    """Every regular file of the home but the live database, sockets, locks and demo/:
    read now, so that the hash in the manifest is of exactly the bytes packed."""
    members: list[_Member] = []
    excluded: list[str] = []
    skip = {p.resolve() for p in exclude}
    for dirpath, dirnames, filenames in os.walk(home):
        rel_dir = Path(dirpath).relative_to(home)
        for d in sorted(dirnames):
            rel = (rel_dir / d).as_posix()
            path = Path(dirpath) / d
            if (
                (rel_dir == Path(".") and d in EXCLUDED_DIRS)
                or d.startswith(SNAPSHOT_PREFIX)
                or path.is_symlink()
                or path.resolve() in skip
            ):
                dirnames.remove(d)
                if not d.startswith(SNAPSHOT_PREFIX):
                    excluded.append(rel + "/")
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if (rel_dir == Path(".") and name in _LIVE_DB) or _LOCK_RE.search(name):
                continue
            if path.resolve() in skip:
                continue
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):  # gpg-agent sockets, symlinks
                    if stat.S_ISLNK(st.st_mode):
                        excluded.append(rel)
                    continue
                data = path.read_bytes()
            except FileNotFoundError:  # a temporary file of gpg's, gone since the listing
                continue
            except OSError as exc:
                raise BackupError(f"cannot read {rel}: {exc.strerror}", why="unreadable") from None
            members.append(
                _Member(rel, data=data, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            )
    return members, excluded


def signer_homes(gnupg_home: Path) -> list[str]:
    """The signing homes (``gnupg/s1`` ...) of the home, for the manifest. Their links to
    the primary's keys are not state of their own (openpgp.signers): the archive holds the
    keys once, and a restore makes the links again (securemail.ops.restore)."""
    return [f"{GNUPG_DIR}/{p.name}" for p in signers.existing_signer_homes(gnupg_home)]


def _is_signer_link(rel: str, homes: list[str]) -> bool:
    """``rel`` (an excluded name) is one of a signer home's links to the primary's keys."""
    parent, _, name = rel.rstrip("/").rpartition("/")
    return parent in homes and name in signers.SHARED


def snapshot_database(db_path: Path, target: Path) -> dict[str, Any]:
    """Copy the live database with sqlite's online backup API, in one step (one read
    transaction: a consistent snapshot; writers go on meanwhile under WAL). Returns what
    the manifest says about it: migrations applied and the audit chain head."""
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(str(target))
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # pages=-1: all pages at once, from one snapshot
        migrations = [
            f"{s}:{n}"
            for s, n in dst.execute(
                "SELECT migration_set, name FROM _sqlite_migrations ORDER BY rowid"
            )
        ]
        copy = sqlite_utils.Database(dst)
        head = audit.head(copy)
        counts = {s: n for s, n in outbox.counts_by_status(copy).items() if n}
    finally:
        dst.close()
        src.close()
    return {
        "migrations": migrations,
        "audit_head": {"seq": head[0], "hash": head[1]},
        "outbox": counts,
    }


def content_key_facts(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """Where the content key (securemail.contentbox) is, whether the backup holds it, and
    its id; plus a warning when it lives outside the home and so is not in the backup.

    Decision (docs/backup.md): a key under the home (the default H/keys/content.key) is in
    every backup like any other file, since the archive as a whole is under the offline
    key; a key the operator placed outside the home ([retention] content_key_file, e.g. a
    systemd credential) stays apart, and the manifest names it so its backup can be found.
    """
    path = settings.content_key_path.absolute()
    home = settings.home.absolute()
    inside = path.is_relative_to(home)
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    key_id = (
        hashlib.sha256(b"securemail.content-key-id\x00" + data).hexdigest()[:16] if data else None
    )
    facts = {
        "path": path.relative_to(home).as_posix() if inside else str(path),
        "in_backup": inside and data is not None,
        "id": key_id,
    }
    warning = None
    if not inside and data is not None:
        warning = (
            f"the content key {path} (id {key_id}) is outside the home and NOT in this "
            "backup: back it up separately, or a restore cannot open the stored content"
        )
    return facts, warning


def build_manifest(
    members: list[_Member],
    db_facts: dict[str, Any],
    settings: Settings,
    excluded: list[str],
    created_at: str,
    content_key: dict[str, Any] | None = None,
    *,
    signer_homes: list[str] | None = None,
) -> bytes:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gateway_version": __version__,
        "created_at": created_at,
        "source_id": settings.gateway.source_id,
        "migrations": db_facts["migrations"],
        "audit_head": db_facts["audit_head"],
        "outbox": db_facts["outbox"],
        "excluded": excluded,
        "signer_homes": signer_homes or [],
        "content_key": content_key or {},
        "files": {m.name: {"sha256": m.sha256, "size": m.size} for m in members},
    }
    return json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")


def sign_manifest(manifest: bytes, home: Path) -> bytes:
    """The manifest's signature by the home's audit key, as JSON (key id + hex signature).

    The manifest names the sha256 of every member, so this signs the whole archive; with
    the audit key's public half from ``securemail audit key`` (kept apart), a restore can
    tell an archive of this gateway from one anyone made with the public backup key."""
    key = audit_integrity.load_or_create_checkpoint_key(home)
    signature = key.sign(SIGNATURE_DOMAIN + manifest).hex()
    kid = audit_integrity.key_id(key.public_key())
    return json.dumps({"key_id": kid, "signature": signature}).encode("ascii")


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(
    out: IO[bytes], manifest: bytes, signature: bytes, members: list[_Member], mtime: float
) -> None:
    """The archive as a stream (no seeking): manifest, its signature, then every member."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo(MANIFEST, len(manifest), mtime), io.BytesIO(manifest))
        tar.addfile(_tarinfo(SIGNATURE, len(signature), mtime), io.BytesIO(signature))
        for m in members:
            info = _tarinfo(PREFIX + m.name, m.size, mtime)
            if m.data is not None:
                tar.addfile(info, io.BytesIO(m.data))
            elif m.path is not None:
                with open(m.path, "rb") as f:
                    tar.addfile(info, f)


# -- the whole backup ----------------------------------------------------------------------


@contextlib.contextmanager
def _snapshot_dir(home: Path, max_age: float) -> Iterator[Path]:
    for old in home.glob(SNAPSHOT_PREFIX + "*"):  # a killed backup's plaintext copy
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > max_age:
                shutil.rmtree(old)
    tmp = Path(tempfile.mkdtemp(prefix=SNAPSHOT_PREFIX, dir=home))  # mode 0700
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encrypt_args(key: BackupKey) -> list[str]:
    # trust-model always: the key was checked above (keyinfo), and is named by fingerprint.
    to = (
        ["--recipient-file", str(key.public_key_file)]
        if key.public_key_file
        else ["--recipient", f"{key.subkey}!"]
    )
    return ["--trust-model", "always", "--no-auto-key-retrieve", *to, "--encrypt"]


def _pump(settings: Settings, key: BackupKey, partial: Path, write: Any) -> None:
    """Run gpg --encrypt with stdout into ``partial`` and call write(stdin)."""
    gpg = settings.gpg
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        proc = subprocess.Popen(
            [
                gpg.binary,
                "--homedir",
                str(settings.gnupg_home),
                "--batch",
                "--no-tty",
                "--status-fd",
                "2",
                *_encrypt_args(key),
            ],
            stdin=subprocess.PIPE,
            stdout=fd,
            stderr=subprocess.PIPE,
            env=gpg_env(),
            start_new_session=True,
        )
    except OSError:
        os.close(fd)
        raise BackupError("gpg could not run", why="gpg") from None
    os.close(fd)
    stderr: list[bytes] = []
    reader = threading.Thread(
        target=lambda: stderr.append(proc.stderr.read()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    timer = threading.Timer(settings.backup.timeout_seconds, _kill, [proc])
    timer.start()
    try:
        try:
            stdin: IO[bytes] = proc.stdin  # type: ignore[assignment]  # stdin=PIPE
            write(stdin)
            stdin.close()
        except BrokenPipeError:
            pass  # gpg died; its exit status says why
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill(proc)
        reader.join(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stderr is not None:
            proc.stderr.close()
    if proc.returncode != 0:
        result = type(
            "R",
            (),
            {"stderr": b"".join(stderr).decode("utf-8", "replace"), "returncode": proc.returncode},
        )()
        raise BackupError(f"gpg encrypt failed: {gpgproc.summary(result)}", why="gpg")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def recipients_of(settings: Settings, archive: Path) -> set[str]:
    """Key ids the archive is encrypted to, as gpg reads them (--list-only, no secret key)."""
    r = run_gpg(
        settings.gpg.binary,
        settings.gnupg_home,
        ["--list-only", "--list-packets", str(archive)],
        settings.gpg.timeout_seconds,
    )
    return {m.upper() for m in re.findall(r"keyid ([0-9A-Fa-f]{16})", r.stdout.decode("latin-1"))}


def make_backup(settings: Settings, to: Path, actor: Actor) -> BackupResult:
    """Back the home up into ``to`` (encrypted), audited; see the module docstring."""
    home = settings.home
    to = Path(to).absolute()
    if not settings.db_path.exists():
        raise NotInitialisedError(f"{home} has no database; nothing to back up", home=str(home))
    store = Store(settings.db_path)

    def record(**fields: Any) -> None:
        event = audit.AuditEvent.of(
            actor, "gateway.backup", object_type="backup", nature="technical", **fields
        )
        store.write_sync(lambda db: audit.record(db, event))

    try:
        audit_integrity.install(store, home, settings.audit.checkpoint_every)
        try:
            result = _make(settings, to)
        except SecuremailError as exc:
            refused = isinstance(exc, InputError | BackupKeyError | BackupKeyMissingError)
            record(outcome="refused" if refused else "error", outcome_detail=exc.code)
            raise
        seq, _ = result.audit_head
        record(
            object_id=result.sha256[:16],
            data_categories="all",
            outcome_detail=(
                f"archive sha256 {result.sha256}, {result.files} files, encrypted to "
                f"{result.key.fingerprint}, audit head row {seq}"
            ),
        )
    finally:
        store.close()
    return result


def _make(settings: Settings, to: Path) -> BackupResult:
    home = settings.home.absolute()
    if to.exists():
        raise InputError(f"{to} exists; a backup never overwrites a file", field="to")
    if to.parent.resolve().is_relative_to(home.resolve()):
        raise InputError(
            "--to must be outside the home: a backup on the home's disk is no "
            "backup, and it would back itself up",
            field="to",
        )
    if not to.parent.is_dir():
        raise InputError(f"folder {to.parent} does not exist", field="to")
    key = check_backup_key(settings)  # refuse before reading anything
    warnings = []
    if key.expires is not None:
        days = (key.expires - datetime.now(UTC)).days
        if days < EXPIRY_WARNING_DAYS:
            warnings.append(f"backup key {key.fingerprint} expires in {days} days; extend it")
    partial = to.with_name(f".{to.name}.partial")
    now = datetime.now(UTC)
    created_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    with _snapshot_dir(home, settings.backup.timeout_seconds) as tmp:
        members, excluded = collect_files(home, exclude=(to, partial))
        homes = signer_homes(settings.gnupg_home)
        excluded = [x for x in excluded if not _is_signer_link(x, homes)]
        db_copy = tmp / DB_NAME
        facts = snapshot_database(settings.db_path, db_copy)
        digest, size = _sha256_file(db_copy)
        members.insert(0, _Member(DB_NAME, path=db_copy, sha256=digest, size=size))
        if not any(m.name == CONFIG_NAME for m in members):
            excluded.append(f"{CONFIG_NAME} (absent)")
        key_facts, key_warning = content_key_facts(settings)
        if key_warning:
            warnings.append(key_warning)
        manifest = build_manifest(
            members, facts, settings, excluded, created_at, key_facts, signer_homes=homes
        )
        signature = sign_manifest(manifest, home)
        try:
            _pump(
                settings,
                key,
                partial,
                lambda stdin: write_tar(stdin, manifest, signature, members, now.timestamp()),
            )
            ids = recipients_of(settings, partial)
            if ids != {key.subkey[-16:]}:
                raise BackupError(
                    f"archive is encrypted to {sorted(ids)}, not only to {key.subkey[-16:]}",
                    why="recipients",
                )
            os.chmod(partial, 0o600)
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.rename(partial, to)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
    digest, size = _sha256_file(to)
    seq, head = facts["audit_head"]["seq"], facts["audit_head"]["hash"]
    return BackupResult(
        to, digest, size, key, len(members), (seq, head), tuple(excluded), tuple(warnings)
    )
