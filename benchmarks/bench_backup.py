"""Backup and restore of a home with a large audit trail: time, archive size, and how long
a writer waits while the online copy runs.

    PYTHONPATH=. python -m benchmarks backup [--quick]

An initialised home (gateway key) gets N audit rows through the real write path (10,000
per transaction), then ``backup.make_backup`` runs while another connection appends one
audited row after another; then ``restore.restore`` into a new home (decrypt, unpack,
sha256 of every file, integrity_check, full audit chain verification, migrations, the
``gateway.restore`` row). The backup key is made here, in its own GNUPGHOME.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from securemail import config
from securemail.access import SYSTEM
from securemail.audit import trail as audit
from securemail.home import MIGRATIONS, init_home
from securemail.ops import backup, restore
from securemail.store import Store

TITLE = "backup and restore"


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *args],
        input=data,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def _fill(db_path: Path, rows: int) -> None:
    store = Store(db_path)
    try:
        for start in range(0, rows, 10_000):

            def batch(db: Any, start: int = start) -> None:
                for i in range(start, min(rows, start + 10_000)):
                    audit.record(
                        db,
                        audit.AuditEvent.of(
                            SYSTEM,
                            "request.view",
                            patient_id=f"{100_000_000 + i}",
                            object_type="request",
                            object_id=f"UVZ-2026-{i:06d}",
                        ),
                    )

            store.write_sync(batch)
    finally:
        store.close()


def run(quick: bool) -> dict[str, Any]:
    rows = 100_000 if quick else 1_000_000
    base = Path(tempfile.mkdtemp(prefix="smb-"))
    offline, home = base / "off", base / "gw"
    try:
        offline.mkdir(mode=0o700)
        _gpg(offline, "--passphrase", "", "--quick-gen-key", "B <b@bench.example>", "ed25519",
             "cert", "1y")  # fmt: skip
        fpr = next(
            line.split(":")[9]
            for line in _gpg(offline, "--with-colons", "--list-keys").decode().splitlines()
            if line.startswith("fpr:")
        )
        _gpg(offline, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "1y")
        asyncio.run(init_home(home))
        _gpg(home / "gnupg", "--import", data=_gpg(offline, "--armor", "--export", fpr))
        _fill(home / config.DB_NAME, rows)
        db_bytes = (home / config.DB_NAME).stat().st_size
        settings = config.load(home).replace(backup={"recipient": fpr})

        # A writer appending one audited row per transaction during the backup.
        stop, waits = threading.Event(), []
        writer = Store(settings.db_path)

        def write() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                writer.write_sync(lambda db: audit.record(db, audit.AuditEvent.of(
                    SYSTEM, "audit.view", object_type="audit", nature="technical")))  # fmt: skip
                waits.append(time.perf_counter() - t)

        thread = threading.Thread(target=write)
        thread.start()
        t = time.perf_counter()
        result = backup.make_backup(settings, base / "b.gpg", SYSTEM)
        backup_s = time.perf_counter() - t
        stop.set()
        thread.join()
        writer.close()
        t = time.perf_counter()
        restored = restore.restore(
            base / "b.gpg", base / "new", SYSTEM, gnupg_home=offline, migrations=MIGRATIONS
        )
        restore_s = time.perf_counter() - t
    finally:
        for g in (home / "gnupg", offline, base / "new" / "gnupg"):
            subprocess.run(["gpgconf", "--homedir", str(g), "--kill", "gpg-agent"],
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
    waits.sort()
    worst = waits[-1] * 1000 if waits else 0.0
    return {
        "title": TITLE,
        "audit_rows": rows,
        "database_bytes": db_bytes,
        "archive_bytes": result.size,
        "backup_seconds": round(backup_s, 2),
        "restore_seconds": round(restore_s, 2),
        "restored_rows_verified": restored.audit_rows,
        "writes_during_backup": len(waits),
        "write_ms_max_during_backup": round(worst, 1),
        "table": [
            {
                "metric": f"backup, {rows:,} audit rows ({db_bytes / 1e6:.0f} MB db)",
                "value": f"{backup_s:.1f} s, archive {result.size / 1e6:.1f} MB",
            },
            {
                "metric": "restore (decrypt, sha256, integrity_check, verify chain, migrate)",
                "value": f"{restore_s:.1f} s",
            },
            {
                "metric": "writes committed during the backup / slowest (ms)",
                "value": f"{len(waits)} / {worst:.1f}",
            },
        ],
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
