"""Signed checkpoints and full verification of the audit trail.

Invariants:
- a checkpoint signs (seq, head hash, time, kind, key id) with the gateway's Ed25519 audit
  key; the audit_checkpoints, audit_anchor and audit_keys tables are append-only (triggers);
- ``verify`` trusts only the public keys its caller passes in (from the key file in the
  home, or an exported public key), never a key read from the database it checks; a
  rewritten chain, a truncated tail or a forged purge fails at a named row;
- a purge (securemail.audit.retention) leaves an anchor that only a signed ``purge``
  checkpoint and an ``audit.purge`` row make valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlite_utils import Migrations

from securemail.audit import trail as audit
from securemail.audit.trail import ChainBrokenError, ChainReport
from securemail.errors import SecuremailError
from securemail.store import Store

KEY_FILE = Path("keys") / "audit-ed25519.pem"
RETIRED_GLOB = "audit-ed25519-*.pub"
CHECKPOINT_DOMAIN = b"securemail.audit.trail.checkpoint.v1\x00"
KINDS = ("periodic", "manual", "purge")
#: Below this many rows one process verifies; above, the range is split over processes.
PARALLEL_FROM = 400_000

MIGRATIONS = Migrations("securemail.audit_integrity")


def _append_only(db: sqlite_utils.Database, table: str) -> None:
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


@MIGRATIONS(name="0001_checkpoints")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE audit_checkpoints (
            id INTEGER PRIMARY KEY,
            seq INTEGER NOT NULL,          -- the last row the signature covers
            head_hash TEXT NOT NULL,       -- that row's row_hash
            signed_at TEXT NOT NULL,
            kind TEXT NOT NULL,            -- periodic | manual | purge
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq)")
    db.execute(
        """CREATE TABLE audit_anchor (
            seq INTEGER PRIMARY KEY,       -- last purged row; the chain restarts after it
            head_hash TEXT NOT NULL,
            checkpoint_id INTEGER NOT NULL REFERENCES audit_checkpoints(id),
            purged_at TEXT NOT NULL,
            cutoff TEXT NOT NULL,
            rows INTEGER NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE audit_keys (
            key_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,      -- PEM, for an external verifier; verify() ignores it
            created_at TEXT NOT NULL)"""
    )
    for table in ("audit_checkpoints", "audit_anchor", "audit_keys"):
        _append_only(db, table)


class AuditKeyError(SecuremailError):
    code = "audit.key"
    nl = "De sleutel voor de audittrail is niet bruikbaar ({why})."


# -- the checkpoint key --------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_or_create_checkpoint_key(home: Path) -> Ed25519PrivateKey:
    """H/keys/audit-ed25519.pem (mode 0600, folder 0700): created at first use, then loaded."""
    path = Path(home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),  # signs unattended; protected by file mode
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_checkpoint_key(home)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditKeyError(f"{path} has mode {oct(mode)}; it must be 0600", why="mode")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise AuditKeyError(f"{path} is not a PEM private key", why="unreadable") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise AuditKeyError(f"{path} is not an Ed25519 key", why="type")
    return loaded


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise AuditKeyError(f"cannot read public key {path}: {exc}", why="unreadable") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path} is not an Ed25519 public key", why="type")
    return key


def trusted_keys(home: Path) -> dict[str, Ed25519PublicKey]:
    """The current key of this home plus retired public keys kept next to it (after rotation)."""
    keys = {}
    current = load_or_create_checkpoint_key(home).public_key()
    keys[key_id(current)] = current
    for p in sorted((Path(home) / KEY_FILE).parent.glob(RETIRED_GLOB)):
        k = load_public_key(p)
        keys[key_id(k)] = k
    return keys


def register_key(db: sqlite_utils.Database, key: Ed25519PrivateKey) -> str:
    """Record the public key in audit_keys (and meta, if the gateway has one); idempotent."""
    public = key.public_key()
    kid = key_id(public)
    if not db.execute("SELECT 1 FROM audit_keys WHERE key_id = ?", [kid]).fetchone():
        db.execute(
            "INSERT INTO audit_keys (key_id, public_key, created_at) VALUES (?, ?, ?)",
            [kid, public_pem(public), audit.now_ms()],
        )
    if "meta" in db.table_names():
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('audit_checkpoint_key', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [kid],
        )
    return kid


# -- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    seq: int
    head_hash: str
    signed_at: str
    kind: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The signed bytes: domain tag + sorted compact JSON of what the signature vouches for."""
        body = {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "signed_at": self.signed_at,
            "kind": self.kind,
            "key_id": self.key_id,
        }
        return CHECKPOINT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_head(
    db: sqlite_utils.Database, key: Ed25519PrivateKey, seq: int, head_hash: str, kind: str
) -> Checkpoint:
    kid = register_key(db, key)
    unsigned = Checkpoint(0, seq, head_hash, audit.now_ms(), kind, kid, "")
    signature = key.sign(unsigned.message()).hex()
    cur = db.conn.execute(
        "INSERT INTO audit_checkpoints (seq, head_hash, signed_at, kind, key_id, signature) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [seq, head_hash, unsigned.signed_at, kind, kid, signature],
    )
    return Checkpoint(
        int(cur.lastrowid or 0), seq, head_hash, unsigned.signed_at, kind, kid, signature
    )


def checkpoint(
    db: sqlite_utils.Database, key: Ed25519PrivateKey, *, kind: str = "manual"
) -> Checkpoint | None:
    """Sign the current head inside the caller's transaction; None for an empty trail."""
    seq, head_hash = audit.head(db)
    if seq == 0:
        return None
    return sign_head(db, key, seq, head_hash, kind)


def last_checkpoint(db: sqlite_utils.Database) -> Checkpoint | None:
    row = db.conn.execute(
        "SELECT id, seq, head_hash, signed_at, kind, key_id, signature FROM audit_checkpoints "
        "ORDER BY seq DESC, id DESC LIMIT 1"
    ).fetchone()
    return Checkpoint(*row) if row else None


def maybe_checkpoint(
    db: sqlite_utils.Database, key: Ed25519PrivateKey, every: int
) -> Checkpoint | None:
    """Sign the head when `every` rows or more were added since the last checkpoint (cheap)."""
    row = db.conn.execute("SELECT max(seq) FROM audit_events").fetchone()
    head_seq = int(row[0] or 0)
    last = db.conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0] or 0
    if head_seq - int(last) < every:
        return None
    return checkpoint(db, key, kind="periodic")


class Checkpointer:
    """Runs maybe_checkpoint at the end of every write transaction of a Store."""

    def __init__(self, key: Ed25519PrivateKey, every: int) -> None:
        self.key = key
        self.every = every

    def __call__(self, db: sqlite_utils.Database) -> None:
        maybe_checkpoint(db, self.key, self.every)


def install(store: Store, home: Path, every: int) -> Checkpointer:
    """Load (or create) the home's audit key and sign checkpoints from the store's writes."""
    hook = Checkpointer(load_or_create_checkpoint_key(home), every)
    store.before_commit(hook)
    return hook


# -- verification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyReport:
    rows: int
    checkpoints: int
    seconds: float
    first_seq: int
    last_seq: int
    head_hash: str
    anchor_seq: int
    last_checkpoint: Checkpoint | None
    workers: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float(self.rows)

    @property
    def unsigned_rows(self) -> int:
        """Rows after the last checkpoint: verified as a chain, not yet under a signature."""
        signed = self.last_checkpoint.seq if self.last_checkpoint else self.anchor_seq
        return max(0, self.last_seq - max(signed, self.anchor_seq))

    def summary(self) -> str:
        return (
            f"verified {self.rows} rows and {self.checkpoints} checkpoints in "
            f"{self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s)"
        )


def _checkpoints(db: sqlite_utils.Database) -> list[Checkpoint]:
    return [
        Checkpoint(*r)
        for r in db.conn.execute(
            "SELECT id, seq, head_hash, signed_at, kind, key_id, signature FROM audit_checkpoints "
            "ORDER BY id"
        )
    ]


def _check_signatures(cps: list[Checkpoint], keys: Mapping[str, Ed25519PublicKey]) -> None:
    previous = 0
    for cp in cps:
        public = keys.get(cp.key_id)
        if public is None:
            raise ChainBrokenError(
                f"checkpoint {cp.id} (row {cp.seq}) is signed by key {cp.key_id}, "
                "which is not a trusted audit key",
                seq=cp.seq,
                why="unknown key",
            )
        try:
            public.verify(bytes.fromhex(cp.signature), cp.message())
        except (InvalidSignature, ValueError):
            raise ChainBrokenError(
                f"checkpoint {cp.id} (row {cp.seq}) has a bad signature (forged or altered)",
                seq=cp.seq,
                why="signature",
            ) from None
        if cp.seq < previous and cp.kind != "purge":
            raise ChainBrokenError(
                f"checkpoint {cp.id} signs row {cp.seq}, before an earlier checkpoint's row "
                f"{previous} (checkpoints reordered)",
                seq=cp.seq,
                why="checkpoint order",
            )
        previous = max(previous, cp.seq)


def _check_anchor(db: sqlite_utils.Database, cps: list[Checkpoint], seq: int, head: str) -> None:
    if seq == 0:
        return
    if not any(c.kind == "purge" and c.seq == seq and c.head_hash == head for c in cps):
        raise ChainBrokenError(
            f"the purge anchor at row {seq} has no signed purge checkpoint (rows removed "
            "outside a purge?)",
            seq=seq + 1,
            why="anchor",
        )
    found = db.conn.execute(
        "SELECT 1 FROM audit_events WHERE object_type = 'audit' AND object_id = ? "
        "AND event_code = 'audit.purge' LIMIT 1",
        [str(seq)],
    ).fetchone()
    if not found:
        raise ChainBrokenError(
            f"the purge up to row {seq} has no audit.purge event in the trail",
            seq=seq + 1,
            why="anchor",
        )


def _chunk(path: str, lo: int, hi: int, cps: Mapping[int, str]) -> list[object]:
    """Verify rows lo..hi of the file at path; a plain list (it crosses a process pipe)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        r = audit.scan(conn, lo, hi, start_prev=None, checkpoints=cps)
    except ChainBrokenError as exc:
        return ["err", exc.reason, int(exc.context["seq"]), str(exc.context["why"])]
    finally:
        conn.close()
    return ["ok", r.rows, r.first_prev, r.head_hash]


def chunk_worker() -> None:
    """Entry of a verification worker process: a job as JSON on stdin, the result on stdout."""
    job = json.load(sys.stdin)
    result = _chunk(job["path"], job["lo"], job["hi"], {int(k): v for k, v in job["cps"].items()})
    json.dump(result, sys.stdout)


# Plain subprocesses rather than multiprocessing: a spawned pool re-imports the caller's
# main module, which breaks any program that embeds verify() without a __main__ guard,
# and fork() is unsafe in a process whose other threads hold sqlite or logging locks.
_WORKER = "from securemail.audit.integrity import chunk_worker; chunk_worker()"


def _scan_parallel(
    db: sqlite_utils.Database, first: int, last: int, start: str, cps: dict[int, str], workers: int
) -> ChainReport:
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    step = (last - first + workers) // workers
    ranges = [(lo, min(lo + step - 1, last)) for lo in range(first, last + 1, step)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = []
    for lo, hi in ranges:
        job = {
            "path": path,
            "lo": lo,
            "hi": hi,
            "cps": {str(k): v for k, v in cps.items() if lo <= k <= hi},
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        procs.append(proc)
        with proc.stdin as pipe:  # type: ignore[union-attr]  # stdin=PIPE
            pipe.write(json.dumps(job).encode())
    results = []
    for proc in procs:
        with proc.stdout as pipe:  # type: ignore[union-attr]  # stdout=PIPE
            out = pipe.read()
        if proc.wait() != 0:
            raise audit.AuditError(f"a verification worker failed (exit {proc.returncode})")
        results.append(json.loads(out))
    errors: list[ChainBrokenError] = []
    expected, rows = start, 0
    for (lo, _hi), res in zip(ranges, results, strict=True):
        if res[0] == "err":
            errors.append(ChainBrokenError(str(res[1]), seq=res[2], why=res[3]))
            expected = ""  # the next piece's first link can no longer be judged
            continue
        _, n, first_prev, head_hash = res
        if expected and first_prev != expected:
            errors.append(
                ChainBrokenError(
                    f"row {lo} does not follow row {lo - 1}: prev_hash {str(first_prev)[:16]}… "
                    f"expected {expected[:16]}… (inserted, deleted or reordered)",
                    seq=lo,
                    why="link",
                )
            )
        rows += int(n)
        expected = str(head_hash)
    if errors:
        raise min(errors, key=lambda e: int(e.context["seq"]))
    return ChainReport(rows, first, last, expected, start)


def verify(
    db: sqlite_utils.Database, keys: Mapping[str, Ed25519PublicKey], *, workers: int | None = None
) -> VerifyReport:
    """Check every checkpoint signature, the anchor, every row and every signed head.

    Raises ChainBrokenError naming the first row that does not fit: edited, deleted,
    inserted or reordered rows, a chain rewritten under a checkpoint, or a tail cut
    off after one.
    """
    started = time.perf_counter()
    cps = _checkpoints(db)
    _check_signatures(cps, keys)
    first, last, start_hash, lowest = audit.bounds(db.conn)
    anchor_seq = first - 1
    _check_anchor(db, cps, anchor_seq, start_hash)
    if lowest < first:
        raise ChainBrokenError(
            f"row {lowest} lies at or before the purge anchor (row {anchor_seq})",
            seq=lowest,
            why="anchor",
        )
    heads = {c.seq: c.head_hash for c in cps if c.seq > anchor_seq}
    n = last - first + 1
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n >= PARALLEL_FROM else 1
    if workers > 1 and n >= workers:
        chain = _scan_parallel(db, first, last, start_hash, heads, workers)
    else:
        workers = 1
        chain = audit.scan(db.conn, first, last, start_prev=start_hash, checkpoints=heads)
    beyond = [c for c in cps if c.seq > last]
    if beyond:
        cp = min(beyond, key=lambda c: c.seq)
        raise ChainBrokenError(
            f"rows {last + 1}..{cp.seq} are missing: checkpoint {cp.id} signed row {cp.seq} "
            f"at {cp.signed_at}, the trail ends at row {last} (tail truncated)",
            seq=last + 1,
            why="truncated",
        )
    return VerifyReport(
        rows=chain.rows,
        checkpoints=len(cps),
        seconds=time.perf_counter() - started,
        first_seq=first,
        last_seq=last,
        head_hash=chain.head_hash if chain.rows else start_hash,
        anchor_seq=anchor_seq,
        last_checkpoint=max(cps, key=lambda c: (c.seq, c.id)) if cps else None,
        workers=workers,
    )
