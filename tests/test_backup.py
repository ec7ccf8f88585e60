"""Backup and restore, for real: a gateway home with a delivered request, queued requests
(relay down, and one held by a worker that died), audit rows and a consent; a backup taken
while another connection keeps writing; the archive searched for plaintext; a restore into
a new home that verifies its audit chain and then delivers what was queued, exactly once,
to a real STARTTLS relay, readable with the team's key through the gpg command. And every
refusal: no backup key, an unusable one, the wrong key, a flipped byte, a manifest that
does not match, a non-empty target, an altered audit trail: each with a clear reason and
nothing written.

The offline backup key lives in its own GNUPGHOME made here, as the operator's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from securemail import config
from securemail.access import SYSTEM
from securemail.audit import integrity as audit_integrity
from securemail.audit import trail as audit
from securemail.delivery import worker as delivery
from securemail.exchange import send as exchange
from securemail.exchange.send import Hooks
from securemail.home import MIGRATIONS, init_home, open_services
from securemail.openpgp import signers
from securemail.ops import backup, restore
from securemail.services import Services
from securemail.store import Store, get_meta
from tests.conftest import GpgTestKey, run_gpg
from tests.e2e.conftest import team_member_keys  # noqa: F401  (the fixture, for this module)
from tests.e2e.test_send_path import assert_opens_as_nurse
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    Gateway,
    build_gateway,
    deliver_all,
    env_for_cli,
    example,
)

PLAINTEXT = [
    EXAMPLE["patient"]["bsn"].encode(),
    EXAMPLE["patient"]["name"].encode(),
    b"PRIVATE KEY",
    b"SQLite format 3",
    b"[smtp]",  # securemail.toml
]


@dataclasses.dataclass(frozen=True)
class Offline:
    """The operator's offline keyring with the backup key (secret half only here)."""

    home: Path
    fingerprint: str
    public: str


def _short_home(prefix: str) -> Path:
    # gpg-agent's socket lives in the homedir: keep the path short (not pytest's tmp_path).
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o700)
    return home


def _make_offline(name: str, passphrase: str = "") -> Offline:
    home = _short_home("sm-off-")
    # No passphrase caching: a wrong passphrase right after the right one must fail.
    (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\ndefault-cache-ttl 0\n"
                                         "max-cache-ttl 0\n")  # fmt: skip
    run_gpg(home, "--passphrase", passphrase, "--quick-gen-key",
            f"{name} <backup@gateway.example>", "ed25519", "cert", "2y")  # fmt: skip
    listing = run_gpg(home, "--with-colons", "--list-keys").stdout.decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    run_gpg(home, "--passphrase", passphrase, "--quick-add-key", fpr, "cv25519", "encr", "2y")
    public = run_gpg(home, "--armor", "--export", fpr).stdout.decode()
    return Offline(home, fpr, public)


def _drop(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def offline() -> Iterator[Offline]:
    o = _make_offline("Backup")
    yield o
    _drop(o.home)


@pytest.fixture(scope="module")
def other_offline() -> Iterator[Offline]:
    o = _make_offline("Another backup key")
    yield o
    _drop(o.home)


def import_public(home: Path, armor: str) -> None:
    run_gpg(home / "gnupg", "--import", input=armor.encode())


def with_key(settings: config.Settings, offline: Offline) -> config.Settings:
    return settings.replace(backup={"recipient": offline.fingerprint})


@pytest.fixture
async def small_home() -> Any:
    """An initialised home (gateway key, audit row) with the backup key's public half in it."""
    base = _short_home("sm-")
    home = base / "gw"
    await init_home(home)
    yield home
    _drop(home / "gnupg")
    for d in base.glob("*/gnupg"):
        _drop(d)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def archive(small_home: Path, offline: Offline) -> Path:
    import_public(small_home, offline.public)
    to = small_home.parent / "backup.gpg"
    backup.make_backup(with_key(config.load(small_home), offline), to, SYSTEM)
    return to


def nothing_beside(target: Path) -> list[str]:
    """What a refused restore left next to its target (must be nothing of ours)."""
    return [p.name for p in target.parent.iterdir() if ".restore-" in p.name]


def audit_rows(db_path: Path, code: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT * FROM audit_events WHERE event_code = ? ORDER BY seq", [code])]  # fmt: skip
    finally:
        conn.close()


# -- the round trip ----------------------------------------------------------------------


class Writer(threading.Thread):
    """Another connection writing audit rows as fast as it can (a busy server)."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(daemon=True)
        self.store = Store(db_path)
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.store.write_sync(lambda db: audit.record(db, audit.AuditEvent.of(
                    SYSTEM, "audit.view", object_type="audit", object_id=f"w{self.written}",
                    nature="technical")))  # fmt: skip
                self.written += 1
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.store.close()


@dataclasses.dataclass
class Restorable:
    """A gateway on a STARTTLS relay, the home it is restored into, and the services opened
    on that home (closed with the gateway when the test ends)."""

    gw: Gateway
    relay: Any
    new_home: Path
    opened: list[Services] = dataclasses.field(default_factory=list)

    def open(self, settings: config.Settings) -> Services:
        svc = open_services(settings)
        self.opened.append(svc)
        return svc


@pytest.fixture
async def scene(
    team_member_keys: dict[str, str],  # noqa: F811
    relay_factory: Any,
    relay_cafile: str,
) -> AsyncIterator[Restorable]:
    """The scene of a backup-and-restore test; afterwards every home and agent is gone."""
    relay = relay_factory("starttls")
    smtp = {"host": "127.0.0.1", "port": relay.port, "starttls": "required",
            "cafile": relay_cafile, "timeout_seconds": 5.0}  # fmt: skip
    gw = await build_gateway(team_keys=team_member_keys, smtp=smtp)
    scene = Restorable(gw, relay, gw.home.parent / (gw.home.name + "-restored"))
    try:
        yield scene
    finally:
        for svc in scene.opened:
            svc.close()
        with contextlib.suppress(Exception):  # a test may have closed it ("the gateway lost")
            gw.svc.close()
        _drop(scene.new_home / "gnupg")
        _drop(gw.nurse_home)
        _drop(gw.home / "gnupg")
        shutil.rmtree(scene.new_home, ignore_errors=True)
        shutil.rmtree(gw.home, ignore_errors=True)


def worker_for(gw: Gateway, owner: str) -> delivery.Worker:
    hooks = Hooks(gw.svc)
    return delivery.Worker(gw.svc.settings, gw.svc.store, owner_id=owner,
                           on_final=hooks.on_final, before_send=hooks.before_send)  # fmt: skip


def outbox_states(svc: Any) -> dict[str, str]:
    return dict(svc.store.read_sync(lambda db: db.execute(
        "SELECT reference, status FROM outbox WHERE kind = 'request'").fetchall()))  # fmt: skip


async def test_backup_while_writing_then_restore_verifies_and_delivers_queued_once(
    tmp_path: Path,
    scene: Restorable,
    offline: Offline,
) -> None:
    gw, relay, new_home = scene.gw, scene.relay, scene.new_home
    # Given: one request delivered (and its notice), consent on record (build_gateway)
    first = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    assert outbox_states(gw.svc)[first.reference] == "sent"
    # ... then the relay goes down: one request is held by a worker that died mid-send
    # (its lease runs for an hour), another was tried once and waits for a retry.
    relay.stop()
    held = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    claimed = gw.svc.store.write_sync(lambda db: delivery.claim(
        db, owner="dead-worker", now=time.time(), lease_seconds=3600, limit=1,
        source_id="gateway-1"))  # fmt: skip
    assert [r.reference for r in claimed] == [held.reference]
    waiting = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await worker_for(gw, "old-worker").run_once()
    states = outbox_states(gw.svc)
    assert states[held.reference] == "sending"
    assert states[waiting.reference] == "retrying"
    import_public(gw.home, offline.public)
    settings = with_key(gw.svc.settings, offline)

    # When: a backup is taken while another connection keeps writing audit rows
    writer = Writer(settings.db_path)
    writer.start()
    while writer.written < 20:
        await asyncio.sleep(0.01)
    before = writer.written
    to = tmp_path / "gateway-backup.gpg"
    result = await asyncio.to_thread(backup.make_backup, settings, to, SYSTEM)
    after_backup = writer.written
    writer.stop.set()
    writer.join(timeout=30)
    assert writer.error is None
    assert after_backup > before  # the writer really ran during the backup

    # Then: the archive is ciphertext only, 0600, to the backup key alone, and nothing
    # in the clear was left in the home or beside the archive
    raw = to.read_bytes()
    for marker in PLAINTEXT:
        assert marker not in raw, marker
    assert stat.S_IMODE(to.stat().st_mode) == 0o600
    assert backup.recipients_of(settings, to) == {result.key.subkey[-16:]}
    assert not list(gw.home.glob(".backup-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway-backup.gpg"]
    [row] = audit_rows(settings.db_path, "gateway.backup")
    assert row["outcome"] == "success" and result.sha256 in row["outcome_detail"]

    # When: restored into a new home with the offline keyring
    restored = restore.restore(to, new_home, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)

    # Then: every file back with private modes, the chain verifies, the snapshot is
    # consistent (its head lies between what was written before and after the copy)
    assert stat.S_IMODE(new_home.stat().st_mode) == 0o700
    for p in new_home.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    for name in ("securemail.toml", "secrets.key", "keys/audit-ed25519.pem",
                 "keys/content.key", "gnupg/pubring.kbx", "gnupg/trustdb.gpg"):  # fmt: skip
        assert (new_home / name).read_bytes() == (gw.home / name).read_bytes(), name
    assert list((new_home / "gnupg" / "private-keys-v1.d").glob("*.key"))
    assert not list(new_home.glob("gnupg/S.gpg-agent*"))
    assert not (new_home / ".gpg-agent.lock").exists()
    seq_at_backup = restored.audit_head[0]
    assert seq_at_backup == result.audit_head[0]
    first_writer_seq = audit_rows(settings.db_path, "audit.view")[0]["seq"]
    assert first_writer_seq + before - 1 <= seq_at_backup
    assert seq_at_backup < first_writer_seq + writer.written
    new_settings = config.load(new_home)
    verify = subprocess.run(
        [sys.executable, "-m", "securemail", "audit", "verify", "--home", str(new_home)],
        capture_output=True, text=True, env=env_for_cli(), timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    [restore_row] = audit_rows(new_settings.db_path, "gateway.restore")
    assert restore_row["seq"] == seq_at_backup + 1
    store = Store(new_settings.db_path)
    try:  # the restored head, with the restore row, is signed at once
        cp = store.read_sync(audit_integrity.last_checkpoint)
    finally:
        store.close()
    assert cp is not None and (cp.seq, cp.kind) == (restore_row["seq"], "manual")
    assert "1 leases released" in restore_row["outcome_detail"]
    assert not audit_rows(new_settings.db_path, "gateway.backup")  # written after the copy
    assert restored.queued == 2

    # When: the relay is back and the restored home's delivery worker runs
    relay.start()
    restored_svc = scene.open(new_settings)
    new_gw = dataclasses.replace(gw, home=new_home, svc=restored_svc)
    await deliver_all(new_gw.svc)

    # Then: both queued requests arrived exactly once, readable only with the team's key
    states = outbox_states(restored_svc)
    assert states[held.reference] == "sent" and states[waiting.reference] == "sent"
    ids = dict(restored_svc.store.read_sync(lambda db: db.execute(
        "SELECT reference, message_id FROM outbox WHERE kind = 'request'"
    ).fetchall()))  # fmt: skip
    accepted = relay.handler.accepted_ids()
    for ref in (first.reference, held.reference, waiting.reference):
        assert accepted[ids[ref]] == 1, ref
    box = relay.handler.mailbox()
    for ref in (held.reference, waiting.reference):
        inner = assert_opens_as_nurse(new_gw, box[ids[ref]])
        bodies = [p.get_payload(decode=True) or b"" for p in inner.walk()
                  if not p.is_multipart()]  # fmt: skip
        assert any(EXAMPLE["patient"]["bsn"].encode() in b for b in bodies)


# -- refusals of backup ------------------------------------------------------------------


def test_backup_without_a_backup_key_is_refused_with_the_reason(small_home: Path) -> None:
    to = small_home.parent / "b.gpg"
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "backup", "--home", str(small_home), "--to",
         str(to)],
        capture_output=True, text=True, env=env_for_cli(), timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("error: backup.no_key: no backup key configured")
    assert "[backup] recipient" in out.stderr and "Traceback" not in out.stderr
    assert not to.exists() and not list(small_home.parent.glob(".b.gpg*"))
    [row] = audit_rows(small_home / "securemail.db", "gateway.backup")
    assert (row["outcome"], row["outcome_detail"]) == ("refused", "backup.no_key")


@pytest.mark.parametrize(
    "kind, why",
    [("expired", "expired"), ("revoked", "revoked"), ("signing_only", "no_encryption_subkey")],
)
def test_backup_refuses_an_unusable_backup_key(
    small_home: Path, gpg_keygen: Callable[..., GpgTestKey], kind: str, why: str
) -> None:
    if kind == "expired":
        key = gpg_keygen("Old backup", "old@backup.example", usage="cert", expire="1y",
                         faked_time="20200101T000000!")  # fmt: skip
    elif kind == "signing_only":
        key = gpg_keygen("Sign only", "sign@backup.example", subkey=None)
    else:
        key = gpg_keygen("Revoked backup", "revoked@backup.example", usage="cert")
    import_public(small_home, key.public)
    if kind == "revoked":
        import_public(small_home, key.revocation)
    settings = config.load(small_home).replace(backup={"recipient": key.fingerprint})
    to = small_home.parent / "b.gpg"
    with pytest.raises(backup.BackupKeyError) as info:
        backup.make_backup(settings, to, SYSTEM)
    assert info.value.context["why"] == why
    assert key.fingerprint in info.value.reason
    assert not to.exists() and not list(small_home.glob(".backup-*"))


def test_backup_refuses_a_key_missing_from_the_keyring(small_home: Path, offline: Offline) -> None:
    settings = with_key(config.load(small_home), offline)  # public key never imported
    with pytest.raises(backup.BackupKeyError) as info:
        backup.make_backup(settings, small_home.parent / "b.gpg", SYSTEM)
    assert info.value.context["why"] == "missing"


def test_backup_refuses_when_the_backup_secret_key_is_on_the_gateway(
    small_home: Path, offline: Offline
) -> None:
    secret = run_gpg(offline.home, "--armor", "--export-secret-keys", offline.fingerprint).stdout
    run_gpg(small_home / "gnupg", "--import", input=secret)
    with pytest.raises(backup.BackupKeyError) as info:
        backup.make_backup(with_key(config.load(small_home), offline),
                           small_home.parent / "b.gpg", SYSTEM)  # fmt: skip
    assert info.value.context["why"] == "secret_on_gateway"


def test_backup_to_a_public_key_file_restores_and_a_file_with_a_secret_key_is_refused(
    small_home: Path, offline: Offline
) -> None:
    key_file = small_home.parent / "backup-key.asc"
    key_file.write_text(offline.public)
    settings = config.load(small_home).replace(backup={"public_key_file": str(key_file)})
    to = small_home.parent / "b.gpg"
    result = backup.make_backup(settings, to, SYSTEM)
    assert result.key.fingerprint == offline.fingerprint
    restore.restore(
        to, small_home.parent / "new", SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS
    )
    assert (small_home.parent / "new" / "securemail.db").exists()
    secret = run_gpg(offline.home, "--armor", "--export-secret-keys", offline.fingerprint)
    key_file.write_text(offline.public + secret.stdout.decode())
    with pytest.raises(backup.BackupKeyError) as info:
        backup.make_backup(settings, small_home.parent / "b2.gpg", SYSTEM)
    assert info.value.context["why"] == "secret_on_gateway"


def test_backup_refuses_an_existing_file_and_a_target_inside_the_home(
    small_home: Path, offline: Offline, archive: Path
) -> None:
    settings = with_key(config.load(small_home), offline)
    before = archive.read_bytes()
    with pytest.raises(backup.InputError):
        backup.make_backup(settings, archive, SYSTEM)
    assert archive.read_bytes() == before
    with pytest.raises(backup.InputError) as info:
        backup.make_backup(settings, small_home / "b.gpg", SYSTEM)
    assert info.value.context["field"] == "to"


# -- refusals of restore -----------------------------------------------------------------


def test_restore_with_the_wrong_key_is_refused_and_writes_nothing(
    archive: Path, other_offline: Offline
) -> None:
    target = archive.parent / "new"
    with pytest.raises(restore.RestoreDecryptError) as info:
        restore.restore(
            archive, target, SYSTEM, gnupg_home=other_offline.home, migrations=MIGRATIONS
        )
    assert "not encrypted to a secret key in this keyring" in info.value.reason
    assert not target.exists() and not nothing_beside(target)


def test_restore_with_a_passphrase_protected_key_needs_the_right_passphrase(
    small_home: Path,
) -> None:
    # Given: the realistic offline key, protected by a passphrase (docs/backup.md)
    offline = _make_offline("Protected backup", passphrase="two people know this")
    try:
        import_public(small_home, offline.public)
        to = small_home.parent / "b.gpg"
        backup.make_backup(with_key(config.load(small_home), offline), to, SYSTEM)
        wrong, right = small_home.parent / "wrong", small_home.parent / "right"
        wrong.write_text("not it\n")
        right.write_text("two people know this\n")
        target = small_home.parent / "new"
        # When the passphrase is wrong: refused, saying so, nothing written
        with pytest.raises(restore.RestoreDecryptError) as info:
            restore.restore(
                to,
                target,
                SYSTEM,
                gnupg_home=offline.home,
                passphrase_file=wrong,
                migrations=MIGRATIONS,
            )
        assert "passphrase" in info.value.reason
        assert not target.exists() and not nothing_beside(target)
        # When it is right: restored
        restore.restore(
            to,
            target,
            SYSTEM,
            gnupg_home=offline.home,
            passphrase_file=right,
            migrations=MIGRATIONS,
        )
        assert (target / "securemail.db").exists()
    finally:
        _drop(offline.home)


@pytest.mark.parametrize("where", [0.2, 0.5, 0.9])
def test_restore_of_an_archive_with_a_flipped_byte_is_refused(
    archive: Path, offline: Offline, where: float
) -> None:
    data = bytearray(archive.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    archive.write_bytes(bytes(data))
    target = archive.parent / "new"
    with pytest.raises(restore.RestoreError) as info:
        restore.restore(archive, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert info.value.code in ("restore.decrypt_failed", "restore.archive_invalid")
    assert not target.exists() and not nothing_beside(target)


def _reencrypt(archive: Path, offline: Offline, change: Callable[[dict[str, Any]], None],
               replace: dict[str, bytes] | None = None) -> None:  # fmt: skip
    """Decrypt, edit members and the manifest, encrypt again to the (public) backup key:
    what anyone holding the public key could do."""
    plain = run_gpg(offline.home, "--decrypt", str(archive)).stdout
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:  # fmt: skip
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if replace and info.name in replace:
                data = replace[info.name]
                info.size = len(data)
            if info.name == backup.MANIFEST:
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    encrypted = run_gpg(offline.home, "--trust-model", "always", "--recipient",
                        offline.fingerprint, "--encrypt", input=out.getvalue())  # fmt: skip
    archive.write_bytes(encrypted.stdout)


def test_restore_refuses_a_member_whose_checksum_does_not_match_the_manifest(
    archive: Path, offline: Offline
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["files"]["securemail.toml"]["sha256"] = "0" * 64

    _reencrypt(archive, offline, change)
    target = archive.parent / "new"
    with pytest.raises(restore.ArchiveInvalidError) as info:
        restore.restore(archive, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert info.value.context["member"] == "securemail.toml"
    assert "does not match the manifest" in info.value.reason
    assert not target.exists() and not nothing_beside(target)


def test_restore_refuses_a_manifest_entry_missing_from_the_archive(
    archive: Path, offline: Offline
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["files"]["keys/escrow.pem"] = {"sha256": "0" * 64, "size": 1}

    _reencrypt(archive, offline, change)
    target = archive.parent / "new"
    with pytest.raises(restore.ArchiveInvalidError) as info:
        restore.restore(archive, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert info.value.context["member"] == "keys/escrow.pem"
    assert not target.exists() and not nothing_beside(target)


def test_restore_into_a_non_empty_target_is_refused_and_leaves_it_alone(
    archive: Path, offline: Offline
) -> None:
    target = archive.parent / "existing"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "restore", str(archive), "--home", str(target),
         "--gnupg-home", str(offline.home)],
        capture_output=True, text=True, env=env_for_cli(), timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("error: restore.target_not_empty:")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert not nothing_beside(target)


def test_restore_refuses_a_backup_whose_audit_trail_was_altered(
    small_home: Path, offline: Offline
) -> None:
    # Given: someone edited an audit row in the live database (the triggers dropped)
    conn = sqlite3.connect(small_home / "securemail.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit_events SET outcome_detail = 'edited' WHERE seq = 1")
    conn.close()
    import_public(small_home, offline.public)
    to = small_home.parent / "b.gpg"
    backup.make_backup(with_key(config.load(small_home), offline), to, SYSTEM)
    target = small_home.parent / "new"
    with pytest.raises(restore.RestoreChainError) as info:
        restore.restore(to, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert info.value.context["seq"] == 1
    assert not target.exists() and not nothing_beside(target)


def test_cli_backup_and_restore_round_trip_into_an_empty_folder(
    small_home: Path, offline: Offline
) -> None:
    import_public(small_home, offline.public)
    env = {**env_for_cli(), "SECUREMAIL_BACKUP_RECIPIENT": offline.fingerprint}
    to = small_home.parent / "b.gpg"
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "backup", "--home", str(small_home), "--to",
         str(to)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"encrypted to {offline.fingerprint}" in out.stdout
    target = small_home.parent / "empty"
    target.mkdir()
    # The audit key's public half, as the operator exported it at install time.
    pem = small_home.parent / "audit-key.pem"
    pem.write_text(subprocess.run(
        [sys.executable, "-m", "securemail", "audit", "key", "--home", str(small_home)],
        capture_output=True, text=True, env=env_for_cli(), timeout=120, check=True,
    ).stdout)  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "securemail", "restore", str(to), "--home", str(target),
         "--gnupg-home", str(offline.home), "--audit-public-key", str(pem)],
        capture_output=True, text=True, env=env_for_cli(), timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "audit chain verified" in out.stdout
    assert "archive signed by this gateway's audit key" in out.stdout
    store = Store(target / "securemail.db")
    try:
        keys = audit_integrity.trusted_keys(target)
        report = store.read_sync(lambda db: audit_integrity.verify(db, keys))
        fpr = store.read_sync(lambda db: get_meta(db, "gateway_fingerprint"))
        codes = store.read_sync(lambda db: [r[0] for r in db.execute(
            "SELECT event_code FROM audit_events ORDER BY seq")])  # fmt: skip
    finally:
        store.close()
    # The backup's own row is written after the copy: in the source trail, not in the copy.
    assert codes == ["gateway.init", "gateway.restore"] and report.rows == 2
    assert [r["event_code"] for r in audit_rows(small_home / "securemail.db", "gateway.backup")]
    # The gateway's own key came back with its secret half: it can sign passed-on requests.
    assert fpr and fpr in run_gpg(target / "gnupg", "--list-secret-keys").stdout.decode()


def _backup_after(small_home: Path, offline: Offline, sql: list[str]) -> Path:
    conn = sqlite3.connect(small_home / "securemail.db", isolation_level=None)
    for statement in sql:
        conn.execute(statement)
    conn.close()
    import_public(small_home, offline.public)
    to = small_home.parent / "b.gpg"
    backup.make_backup(with_key(config.load(small_home), offline), to, SYSTEM)
    return to


def test_restore_of_an_older_backup_runs_the_newer_migrations(
    small_home: Path, offline: Offline
) -> None:
    # Given: a backup made before the report indexes existed (an older release)
    to = _backup_after(small_home, offline, [
        "DROP INDEX audit_sender", "DROP INDEX audit_recipient", "DROP INDEX audit_code",
        "DELETE FROM _sqlite_migrations WHERE migration_set = 'securemail.audit_report'",
    ])  # fmt: skip
    # When restored with this release, Then the missing migration is applied
    result = restore.restore(
        to, small_home.parent / "new", SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS
    )
    assert result.migrations_applied == ("securemail.audit_report:0001_report_indexes",)
    conn = sqlite3.connect(small_home.parent / "new" / "securemail.db")
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()
    assert {"audit_sender", "audit_recipient", "audit_code"} <= names


def test_restore_refuses_a_backup_from_a_newer_release(small_home: Path, offline: Offline) -> None:
    to = _backup_after(small_home, offline, [
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('securemail.future', '0001_hovercraft', '2030-01-01')",
    ])  # fmt: skip
    target = small_home.parent / "new"
    with pytest.raises(restore.RestoreNewerError) as info:
        restore.restore(to, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert "securemail.future:0001_hovercraft" in info.value.reason
    assert not target.exists() and not nothing_beside(target)


def test_restore_refuses_a_consistent_forgery_the_manifest_signature_does_not_cover(
    archive: Path, offline: Offline
) -> None:
    # Given: someone with only the public backup key swaps the relay in securemail.toml and
    # fixes the manifest's checksum to match (every sha256 now agrees)
    evil = b'[smtp]\nhost = "relay.attacker.example"\n'

    def change(m: dict[str, Any]) -> None:
        m["files"]["securemail.toml"] = {"sha256": hashlib.sha256(evil).hexdigest(),
                                         "size": len(evil)}  # fmt: skip

    _reencrypt(archive, offline, change, {"home/securemail.toml": evil})
    target = archive.parent / "new"
    with pytest.raises(restore.ArchiveInvalidError) as info:
        restore.restore(archive, target, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    assert info.value.context["member"] == backup.SIGNATURE
    assert not target.exists() and not nothing_beside(target)


async def test_restore_checks_the_origin_against_the_gateways_audit_key(
    archive: Path, offline: Offline
) -> None:
    home = archive.parent / "gw"
    ours = audit_integrity.load_or_create_checkpoint_key(home).public_key()
    # Given: another gateway (its own audit key) whose backup is encrypted to the same key
    other = archive.parent / "other"
    await init_home(other)
    import_public(other, offline.public)
    foreign = archive.parent / "foreign.gpg"
    backup.make_backup(with_key(config.load(other), offline), foreign, SYSTEM)
    _drop(other / "gnupg")
    # When restoring it with our audit key as the expected origin: refused
    target = archive.parent / "new"
    with pytest.raises(restore.RestoreOriginError) as info:
        restore.restore(
            foreign,
            target,
            SYSTEM,
            gnupg_home=offline.home,
            audit_public_key=ours,
            migrations=MIGRATIONS,
        )
    assert "not made by this gateway" in info.value.reason
    assert not target.exists() and not nothing_beside(target)
    # ... and our own archive passes the same check
    result = restore.restore(archive, target, SYSTEM, gnupg_home=offline.home,
                             audit_public_key=ours, migrations=MIGRATIONS)  # fmt: skip
    assert result.origin_checked and result.signed_by == audit_integrity.key_id(ours)


async def test_a_content_key_outside_the_home_is_named_but_not_in_the_backup(
    offline: Offline,
) -> None:
    # Given: the operator keeps the content key apart ([retention] content_key_file)
    base = _short_home("sm-")
    outside = base / "credentials" / "content.key"
    home = base / "gw"
    await init_home(home, overrides={"retention": {"content_key_file": str(outside)}})
    try:
        assert outside.exists() and not (home / "keys" / "content.key").exists()
        import_public(home, offline.public)
        # When backed up: a warning, the manifest names the key, the archive lacks it
        to = base / "b.gpg"
        result = backup.make_backup(with_key(config.load(home), offline), to, SYSTEM)
        assert any("outside the home and NOT in this backup" in w for w in result.warnings)
        plain = run_gpg(offline.home, "--decrypt", str(to)).stdout
        assert outside.read_bytes() not in plain
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            manifest = json.loads(tar.extractfile(backup.MANIFEST).read())  # type: ignore[union-attr]
        facts = manifest["content_key"]
        assert (facts["path"], facts["in_backup"]) == (str(outside), False) and facts["id"]
        # Then a restore on this machine (the key in its place) opens the home
        restore.restore(to, base / "new", SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
        assert not (base / "new" / "keys" / "content.key").exists()
    finally:
        _drop(home / "gnupg")
        _drop(base / "new" / "gnupg")
        shutil.rmtree(base, ignore_errors=True)


# -- references after a restore ------------------------------------------------------------


def _references_in(box: dict[str, bytes]) -> list[str]:
    """The reference of every execution request in the relay's mailbox (outer header only)."""
    import email

    refs = []
    for raw in box.values():
        msg = email.message_from_bytes(raw)
        if str(msg.get("Subject", "")).startswith("Uitvoeringsverzoek"):
            refs.append(str(msg["X-Securemail-Reference"]))
    return refs


async def test_a_restore_never_hands_out_a_reference_the_lost_gateway_used(
    tmp_path: Path,
    scene: Restorable,
    offline: Offline,
) -> None:
    gw, relay, new_home = scene.gw, scene.relay, scene.new_home
    # Given: a request sent, then a backup, then two more sent and delivered to the team
    before = await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    import_public(gw.home, offline.public)
    settings = with_key(gw.svc.settings, offline)
    to = tmp_path / "gateway-backup.gpg"
    await asyncio.to_thread(backup.make_backup, settings, to, SYSTEM)
    lost = [await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE) for _ in range(2)]
    await deliver_all(gw.svc)
    # When: the gateway is lost ("crash") and its backup restored into a new home
    gw.svc.close()
    restore.restore(to, new_home, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    restored_svc = scene.open(config.load(new_home))
    after = [await exchange.send(restored_svc, gw.gp, example(), GP_PASSPHRASE)
             for _ in range(2)]  # fmt: skip
    await deliver_all(restored_svc)
    # Then: no reference twice in the team's mailbox, and every one the form's pattern
    refs = _references_in(relay.handler.mailbox())
    assert len(refs) == 5 and len(set(refs)) == 5, refs
    for r in refs:
        assert exchange.REFERENCE_RE.fullmatch(r), r
    assert {x.reference for x in after}.isdisjoint({x.reference for x in lost + [before]})
    assert after[0].reference.endswith("-011001")  # 1 + gap 10000, rounded up to 1000
    [row] = audit_rows(new_home / "securemail.db", "gateway.restore")
    assert "counters moved: UVZ-" in row["outcome_detail"]


def test_a_counter_the_restored_home_starts_later_begins_past_the_floor(tmp_path: Path) -> None:
    """A new year's counter (begun by the lost gateway after the backup) does not restart at 1."""
    from securemail.store import move_counters_past, next_value, open_store

    store = open_store(tmp_path / "c.db", [*MIGRATIONS])
    try:
        assert store.write_sync(lambda db: next_value(db, "UVZ-2026")) == 1
        store.write_sync(lambda db: move_counters_past(db, 10000))
        assert store.write_sync(lambda db: next_value(db, "UVZ-2026")) == 11001
        assert store.write_sync(lambda db: next_value(db, "UVZ-2027")) == 10001
    finally:
        store.close()


# -- the signing homes (openpgp.signers) -------------------------------------------------


async def test_restore_makes_the_signer_homes_links_again_and_the_restored_gateway_signs(
    tmp_path: Path,
    scene: Restorable,
    offline: Offline,
) -> None:
    gw, relay, new_home = scene.gw, scene.relay, scene.new_home
    # Given a gateway with a second signing home, linked to the primary's keys
    s1 = signers.ensure_signer_home(gw.home / "gnupg", 1)
    assert all((s1 / name).is_symlink() for name in signers.SHARED)
    import_public(gw.home, offline.public)
    settings = with_key(gw.svc.settings, offline)
    # When it is backed up and restored into a new home
    to = tmp_path / "gateway-backup.gpg"
    result = await asyncio.to_thread(backup.make_backup, settings, to, SYSTEM)
    assert not [x for x in result.excluded if x.startswith("gnupg/s1")]  # not "lost"
    restore.restore(to, new_home, SYSTEM, gnupg_home=offline.home, migrations=MIGRATIONS)
    # Then the signing home is there again, each link relative, to the restored keys
    # (never to the old home's)
    r1 = new_home / "gnupg" / "s1"
    assert stat.S_IMODE(r1.stat().st_mode) == 0o700
    for name in signers.SHARED:
        assert (r1 / name).is_symlink(), name
        assert os.readlink(r1 / name) == f"../{name}"
        assert (r1 / name).resolve() == (new_home / "gnupg" / name).resolve()
    # And the restored gateway signs in it: home 0 is held, so the send takes s1
    restored_svc = scene.open(config.load(new_home).replace(gpg={"signers": 2}))
    held = await restored_svc.keyring._pool.acquire("someone else")
    assert held == 0
    try:
        sent = await exchange.send(restored_svc, gw.gp, example(), GP_PASSPHRASE)
    finally:
        restored_svc.keyring._pool.release(held)
    new_gw = dataclasses.replace(gw, home=new_home, svc=restored_svc)
    await deliver_all(restored_svc)
    assert outbox_states(restored_svc)[sent.reference] == "sent"
    sql = "SELECT reference, message_id FROM outbox WHERE kind = 'request'"
    ids = dict(restored_svc.store.read_sync(lambda db: db.execute(sql).fetchall()))
    assert_opens_as_nurse(new_gw, relay.handler.mailbox()[ids[sent.reference]])


@pytest.mark.parametrize(
    "names",
    [["../../etc"], ["gnupg/s0"], ["gnupg/s64"], ["gnupg/s1/.."], "gnupg/s1",
     [f"gnupg/s{i % 9 + 1}" for i in range(65)]],
    ids=["outside", "primary", "past-max", "dotdot", "not-a-list", "too-many"],
)  # fmt: skip
def test_restore_refuses_a_manifest_naming_signer_homes_it_cannot_have(
    tmp_path: Path, names: Any
) -> None:
    (tmp_path / "gnupg").mkdir()
    with pytest.raises(restore.ArchiveInvalidError):
        restore.relink_signer_homes(tmp_path, {"signer_homes": names})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gnupg"]  # nothing made
