"""Restore: bring a new gateway home up from a backup archive (securemail.ops.backup).

Invariants:
- all or nothing: the archive is decrypted (with the operator's offline keyring) and
  unpacked into a fresh 0700 folder beside the target, checked there, and renamed onto the
  target only when every check passed; on any failure that folder is removed and the
  target is untouched. A target that exists and is not empty is refused;
- every member must be a regular file named in the manifest, with the manifest's size and
  sha256, under a safe relative path; every manifest entry must be present; gpg must report
  a complete, integrity-protected decryption (a flipped byte anywhere fails); the manifest
  must be signed by the audit key in the archive, and, when the operator passes the
  gateway's exported audit public key, by that key (origin, not only consistency);
- the restored audit chain verifies (``audit_integrity.verify`` with the keys restored in
  the home) before anything is written to it; then migrations run (the code may be newer),
  leases of the old process are released, every counter (references UVZ-, ASK-) moves
  ``backup.restore_reference_gap`` past its backed-up value (no reference the lost gateway
  may have used after the backup is handed out again), and ``gateway.restore`` is recorded
  in the restored trail;
- folders 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlite_utils import Migrations

from securemail import config, contentbox
from securemail.access import Actor
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.config import DB_NAME, GNUPG_DIR, MAX_SIGNERS
from securemail.delivery import outbox
from securemail.errors import SecuremailError
from securemail.openpgp import gpgproc, signers
from securemail.ops.backup import (
    _CHUNK,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PREFIX,
    SIGNATURE,
    SIGNATURE_DOMAIN,
    _kill,
    gpg_env,
)
from securemail.store import Store, move_counters_past

#: A manifest larger than this is not one of ours.
MAX_MANIFEST = 16 << 20
#: A signing home's name in the manifest (openpgp.signers.signer_home).
_SIGNER_HOME = re.compile(r"gnupg/s([1-9][0-9]?)")


class RestoreError(SecuremailError):
    code = "restore.failed"
    nl = "Het herstel is mislukt: {why}. Er is niets hersteld."


class RestoreTargetError(RestoreError):
    code = "restore.target_not_empty"
    nl = "De doelmap bestaat al en is niet leeg; er is niets hersteld."


class RestoreDecryptError(RestoreError):
    code = "restore.decrypt_failed"
    nl = "De back-up kon niet worden ontsleuteld of is beschadigd; er is niets hersteld."


class ArchiveInvalidError(RestoreError):
    code = "restore.archive_invalid"
    nl = "De back-up klopt niet met haar inhoudsopgave ({member}); er is niets hersteld."


class RestoreNewerError(RestoreError):
    code = "restore.newer_backup"
    nl = "De back-up komt van een nieuwere versie van de gateway; er is niets hersteld."


class RestoreOriginError(RestoreError):
    code = "restore.unknown_origin"
    nl = "De back-up is niet door deze gateway gemaakt (andere auditsleutel); er is niets hersteld."


class RestoreChainError(RestoreError):
    code = "restore.chain_broken"
    nl = "De audittrail in de back-up klopt niet (regel {seq}); er is niets hersteld."


@dataclass(frozen=True, slots=True)
class RestoreResult:
    home: Path
    created_at: str
    source_id: str
    files: int
    audit_rows: int
    audit_head: tuple[int, str]
    migrations_applied: tuple[str, ...]
    leases_released: int
    queued: int  # outbox rows still to deliver (queued, retrying, sending)
    signed_by: str = ""  # key id of the audit key that signed the manifest
    origin_checked: bool = False  # that key matched the one the operator passed


def check_target(target: Path) -> None:
    """The target may be absent or an empty folder; anything else is refused."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RestoreTargetError(f"{target} exists and is not a folder", target=str(target))
    if target.is_dir() and any(target.iterdir()):
        raise RestoreTargetError(
            f"{target} is not empty; restore only into a new home", target=str(target)
        )


def _safe_name(name: str) -> str:
    """The member's path relative to the home, or ArchiveInvalidError."""
    if not name.startswith(PREFIX):
        raise ArchiveInvalidError(f"member {name!r} is outside home/", member=name)
    rel = PurePosixPath(name[len(PREFIX) :])
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        raise ArchiveInvalidError(f"member {name!r} has an unsafe path", member=name)
    return rel.as_posix()


def _small_member(tar: tarfile.TarFile, name: str) -> bytes:
    info = tar.next()
    if info is None or info.name != name or not info.isfile() or info.size > MAX_MANIFEST:
        raise ArchiveInvalidError(f"the archive does not start with its {name}", member=name)
    f = tar.extractfile(info)
    return f.read() if f else b""


def _read_manifest(tar: tarfile.TarFile) -> tuple[dict[str, Any], bytes, bytes]:
    raw = _small_member(tar, MANIFEST)
    signature = _small_member(tar, SIGNATURE)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArchiveInvalidError("the manifest is not JSON", member=MANIFEST) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveInvalidError("not a securemail backup", member=MANIFEST)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RestoreNewerError(
            f"backup format {manifest.get('format_version')!r}; this securemail reads "
            f"format {FORMAT_VERSION}",
            member=MANIFEST,
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or DB_NAME not in files:
        raise ArchiveInvalidError("the manifest lists no database", member=MANIFEST)
    return manifest, raw, signature


def _extract(
    tar: tarfile.TarFile, info: tarfile.TarInfo, root: Path, expected: dict[str, Any]
) -> None:
    rel = _safe_name(info.name)
    want = expected.get(rel)
    if not info.isfile() or want is None:
        raise ArchiveInvalidError(f"member {rel!r} is not a file the manifest lists", member=rel)
    if info.size != want.get("size"):
        raise ArchiveInvalidError(
            f"member {rel!r} has {info.size} bytes, the manifest says {want.get('size')}",
            member=rel,
        )
    path = root.joinpath(*PurePosixPath(rel).parts)
    for parent in reversed(path.relative_to(root).parents):
        d = root / parent
        if not d.exists():
            d.mkdir(mode=0o700)
    src = tar.extractfile(info)
    if src is None:
        raise ArchiveInvalidError(f"member {rel!r} is not a file", member=rel)
    h = hashlib.sha256()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # a repeat fails here
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != want.get("sha256"):
        raise ArchiveInvalidError(
            f"member {rel!r}: sha256 {h.hexdigest()} does not match the "
            f"manifest's {want.get('sha256')}",
            member=rel,
        )


def _unpack(stream: IO[bytes], root: Path) -> tuple[dict[str, Any], bytes, bytes]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        manifest, raw, signature = _read_manifest(tar)
        files: dict[str, Any] = manifest["files"]
        seen: set[str] = set()
        while (info := tar.next()) is not None:  # not `for`: that would repeat the manifest
            _extract(tar, info, root, files)
            seen.add(_safe_name(info.name))
        missing = sorted(set(files) - seen)
        if missing:
            raise ArchiveInvalidError(
                f"{len(missing)} member(s) of the manifest are missing, first {missing[0]!r}",
                member=missing[0],
            )
    return manifest, raw, signature


def decrypt_and_unpack(
    archive: Path,
    root: Path,
    *,
    gnupg_home: Path | None,
    passphrase_file: Path | None,
    binary: str,
    timeout: float,
) -> tuple[dict[str, Any], bytes, bytes]:
    """gpg --decrypt the archive into the tar reader (streamed, never a plaintext tar on
    disk), unpacking into ``root``; raises unless gpg and every check agree."""
    args = [binary, "--batch", "--status-fd", "2", "--no-auto-key-retrieve"]
    if gnupg_home is not None:
        args += ["--homedir", str(gnupg_home)]
    if passphrase_file is not None:
        args += ["--pinentry-mode", "loopback", "--passphrase-file", str(passphrase_file)]
    args += ["--decrypt", str(archive)]
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=gpg_env(),
            start_new_session=True,
        )
    except OSError:
        raise RestoreError("gpg could not run", why="gpg") from None
    stderr: list[bytes] = []
    reader = threading.Thread(
        target=lambda: stderr.append(proc.stderr.read()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    timer = threading.Timer(timeout, _kill, [proc])
    timer.start()
    failure: SecuremailError | None = None
    unpacked: tuple[dict[str, Any], bytes, bytes] = ({}, b"", b"")
    try:
        stdout: IO[bytes] = proc.stdout  # type: ignore[assignment]  # stdout=PIPE
        try:
            unpacked = _unpack(stdout, root)
        except SecuremailError as exc:
            failure = exc
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            failure = ArchiveInvalidError(
                f"the archive is not a readable tar ({type(exc).__name__})", member="?"
            )
        # Read to the end even after a failed check: only then does gpg give its verdict
        # (a modification detection failure), which names the cause better than ours.
        while stdout.read(_CHUNK):
            pass
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill(proc)
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    text = b"".join(stderr).decode("utf-8", "replace")
    pairs = gpgproc.status(type("R", (), {"stderr": text})())
    keywords = {k for k, _ in pairs}
    if (
        proc.returncode != 0
        or "DECRYPTION_OKAY" not in keywords
        or keywords & {"BADMDC", "DECRYPTION_FAILED"}
    ):
        if "DECRYPTION_OKAY" not in keywords and "NO_SECKEY" in keywords:
            why = "the archive is not encrypted to a secret key in this keyring"
        elif gpgproc.is_bad_passphrase(pairs):
            why = "the backup key's passphrase was not given or is wrong"
        elif proc.returncode is not None and proc.returncode < 0:
            why = f"gpg was stopped after {timeout:g} s"
        else:
            why = "the archive is damaged or was altered"
        detail = "; ".join(
            f"{k} {v}".strip()
            for k, v in pairs
            if k in ("NO_SECKEY", "DECRYPTION_FAILED", "BADMDC", "ERROR", "FAILURE")
        )
        raise RestoreDecryptError(
            f"gpg could not decrypt {archive.name}: {why}" + (f" ({detail})" if detail else ""),
            why=why,
        )
    if failure is not None:
        raise failure
    return unpacked


def check_signature(
    root: Path, manifest: bytes, signature: bytes, expected: Ed25519PublicKey | None
) -> str:
    """The key id of the audit key (restored in ``root``) that signed the manifest; raises
    when the signature is not that key's, or when that key is not ``expected``."""
    try:
        sig = json.loads(signature.decode("ascii"))
        kid, value = str(sig["key_id"]), bytes.fromhex(sig["signature"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ArchiveInvalidError(
            "the manifest signature is unreadable", member=SIGNATURE
        ) from None
    if not (root / audit_integrity.KEY_FILE).is_file():
        raise ArchiveInvalidError(
            "the archive has no audit key", member=str(audit_integrity.KEY_FILE)
        )
    own = audit_integrity.load_or_create_checkpoint_key(root).public_key()
    try:
        if kid != audit_integrity.key_id(own):
            raise InvalidSignature
        own.verify(value, SIGNATURE_DOMAIN + manifest)
    except InvalidSignature:
        raise ArchiveInvalidError(
            "the manifest is not signed by the audit key in the archive (altered)",
            member=SIGNATURE,
        ) from None
    if expected is not None and audit_integrity.key_id(expected) != kid:
        raise RestoreOriginError(
            f"the archive is signed by audit key {kid}, not by the expected "
            f"{audit_integrity.key_id(expected)}: it was not made by this gateway",
            key_id=kid,
        )
    return kid


def _known_migrations(sets: Sequence[Migrations]) -> set[str]:
    return {f"{m.name}:{n.name}" for m in sets for n in m._migrations}


def _fix_modes(root: Path) -> None:
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o700)
        for f in filenames:
            os.chmod(Path(dirpath) / f, 0o600)


def _finish(
    root: Path,
    manifest: dict[str, Any],
    actor: Actor,
    settings: config.Settings,
    migrations: Sequence[Migrations],
) -> RestoreResult:
    """Verify, migrate, release leases and record the restore, in the unpacked folder."""
    newer = sorted(set(manifest.get("migrations", [])) - _known_migrations(migrations))
    if newer:
        raise RestoreNewerError(
            f"the backup's database has migrations this securemail does "
            f"not know ({newer[0]}, ...); restore with a newer release",
            member=DB_NAME,
        )
    store = Store(root / DB_NAME)
    try:
        integrity = store.integrity_check()
        if integrity != "ok":
            raise ArchiveInvalidError(f"database integrity_check: {integrity}", member=DB_NAME)
        keys = audit_integrity.trusted_keys(root)
        try:
            report = store.read_sync(lambda db: audit_integrity.verify(db, keys))
        except audit.ChainBrokenError as exc:
            raise RestoreChainError(
                f"the restored audit trail does not verify: {exc.reason}", **exc.context
            ) from None
        # The content key must open the sealed content before anything runs on this home
        # (as open_services does); a missing or wrong key refuses the restore.
        contentbox.load(settings)
        head = manifest.get("audit_head", {})
        if (report.last_seq, report.head_hash) != (head.get("seq"), head.get("hash")) and (
            report.rows or head.get("seq")
        ):
            raise ArchiveInvalidError(
                f"the audit head is row {report.last_seq}, the manifest says {head.get('seq')}",
                member=DB_NAME,
            )
        applied = store.migrate(migrations)
        key = audit_integrity.load_or_create_checkpoint_key(root)
        audit_integrity.install(store, root, settings.audit.checkpoint_every)

        def record(db: Any) -> tuple[int, int]:
            # The old process's leases end now: its rows are taken over at once (and, for a
            # row that was mid-send, marked as a possible repeat by delivery.claim).
            released = outbox.release_leases(db)
            # The lost gateway may have handed out references after the backup: every
            # counter moves past them, so no number is used twice (docs/backup.md).
            try:
                moved = move_counters_past(db, settings.backup.restore_reference_gap)
            except ValueError as exc:
                raise RestoreError(str(exc), why="reference numbers exhausted") from None
            queued = outbox.pending_count(db)
            detail = (
                f"from backup of {manifest.get('source_id')} made "
                f"{manifest.get('created_at')} (securemail "
                f"{manifest.get('gateway_version')}), audit head row {report.last_seq}; "
                f"{len(applied)} migrations applied, {released} leases released, "
                f"{queued} messages to deliver; counters moved: "
                + (", ".join(f"{n} {a}->{b}" for n, a, b in moved) or "none")
            )
            audit.record(
                db,
                audit.AuditEvent.of(
                    actor,
                    "gateway.restore",
                    object_type="backup",
                    object_id=str(manifest.get("created_at", "")),
                    nature="technical",
                    data_categories="all",
                    outcome_detail=detail,
                ),
            )
            # Sign the restored head at once: a later cut of the tail is then detectable.
            audit_integrity.checkpoint(db, key, kind="manual")
            return released, queued

        released, queued = store.write_sync(record)
    finally:
        store.close()
        contentbox.forget(settings)  # registered under the temporary folder's path
    return RestoreResult(
        root,
        str(manifest.get("created_at")),
        str(manifest.get("source_id")),
        len(manifest["files"]),
        report.rows,
        (report.last_seq, report.head_hash),
        tuple(applied),
        released,
        queued,
    )


def restore(
    archive: Path,
    target: Path,
    actor: Actor,
    *,
    gnupg_home: Path | None = None,
    passphrase_file: Path | None = None,
    binary: str = "gpg",
    timeout: float = 3600.0,
    audit_public_key: Ed25519PublicKey | None = None,
    migrations: Sequence[Migrations],
) -> RestoreResult:
    """Restore ``archive`` into the new home ``target``; see the module docstring.

    ``audit_public_key``: the gateway's audit key as ``securemail audit key`` printed it,
    kept apart; the archive must be signed by it (otherwise its origin is not checked).
    ``migrations``: the home's migration sets (``securemail.home.MIGRATIONS``), applied to
    the restored database; a backup with a migration none of them knows is refused."""
    archive, target = Path(archive), Path(target).absolute()
    if not archive.is_file():
        raise RestoreError(f"{archive} is not a file", why="no archive")
    check_target(target)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        manifest, raw, signature = decrypt_and_unpack(
            archive,
            work,
            gnupg_home=gnupg_home,
            passphrase_file=passphrase_file,
            binary=binary,
            timeout=timeout,
        )
        if not (work / GNUPG_DIR).is_dir():
            raise ArchiveInvalidError("the archive has no gnupg/ keyring", member=GNUPG_DIR)
        _fix_modes(work)
        relink_signer_homes(work, manifest)
        signed_by = check_signature(work, raw, signature, audit_public_key)
        settings = config.load(work)  # the restored securemail.toml (and SECUREMAIL_* env)
        result = _finish(work, manifest, actor, settings, migrations)
        for leftover in (f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(work / leftover, 0o600)
        check_target(target)  # still empty: nobody wrote there meanwhile
        if target.exists():
            target.rmdir()
        os.rename(work, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dataclasses.replace(
        result, home=target, signed_by=signed_by, origin_checked=audit_public_key is not None
    )


def relink_signer_homes(root: Path, manifest: dict[str, Any]) -> int:
    """Make the signing homes the backup's gateway had (``signer_homes``: ``gnupg/s1`` ...)
    again, each with its links to the restored primary's keys (openpgp.signers). Bounded:
    at most MAX_SIGNERS names, each checked; anything else refuses the archive."""
    names = manifest.get("signer_homes", [])  # absent in archives made before issue 24
    if not isinstance(names, list) or len(names) > MAX_SIGNERS:
        raise ArchiveInvalidError(
            "the manifest's signer_homes is not a short list", member=MANIFEST
        )
    indexes = []
    for name in names:  # every name checked before any home is made
        match = _SIGNER_HOME.fullmatch(name) if isinstance(name, str) else None
        if match is None or int(match[1]) >= MAX_SIGNERS:
            raise ArchiveInvalidError(f"signer home {name!r} is not one", member=MANIFEST)
        indexes.append(int(match[1]))
    for index in indexes:
        signers.ensure_signer_home(root / GNUPG_DIR, index)
    return len(names)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
