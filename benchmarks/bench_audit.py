"""Audit trail at scale: append rate, verify rate, patient-report latency.

    PYTHONPATH=. python -m benchmarks.bench_audit [--rows 10000000] [--quick] [--keep DIR]

Fills a throw-away gateway database through the real write path (Store.write_sync, one
BEGIN IMMEDIATE transaction per 10,000 events, audit.record() per event, the Ed25519
checkpoint signed every 1,000 rows) with a realistic mix: 250 organisations, 4,000
users, a million patients, each request leaving consent.check, create, sign, send,
deliver (or retry/fail), one to three views and an answer, plus logins, failed logins and
refusals. Then it times:

- append: rows/s of the fill, and of single-event transactions (commit + fsync each);
- verify: audit_integrity.verify over the whole trail (every hash, every signature),
  with the default worker count and with one process;
- patient report: p50/p99 of audit_report.disclosure_report for 200 random patients
  (the query alone, and the whole audited call: query + audit.view row + commit).

Results go to benchmarks/out/audit.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securemail.access import Actor, Person
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent
from securemail.home import MIGRATIONS
from securemail.store import Store

OUT = Path(__file__).resolve().parent / "out" / "audit.json"
DEFAULT_ROWS = 10_000_000
QUICK_ROWS = 200_000
BATCH = 10_000
CHECKPOINT_EVERY = 1_000
SAMPLES = 200
START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)


def _bsn(n: int) -> str:
    """The n-th 9-digit number passing the 11-test (fictional, deterministic)."""
    base = 100_000_000 + n * 11
    while True:
        s = f"{base:09d}"
        total = sum(int(c) * w for c, w in zip(s[:8], range(9, 1, -1), strict=True))
        if (total - int(s[8])) % 11 == 0:
            return s
        base += 1


class World:
    """Organisations, teams, users and patients, written to the directory tables."""

    def __init__(self, rng: random.Random, patients: int) -> None:
        self.rng = rng
        self.practices = [f"{10_000_000 + i:08d}" for i in range(200)]
        self.nursing = [f"{20_000_000 + i:08d}" for i in range(50)]
        self.teams = [
            (f"team{t}@org{o}.example", self.nursing[o]) for o in range(50) for t in range(4)
        ]
        self.gps = [
            Person(
                user_id=1 + i,
                username=f"gp{i}",
                name=f"GP {i}",
                role="gp",
                org_id=1 + i // 10,
                org_code=self.practices[i // 10],
                access_point=f"10.0.{i // 250}.{i % 250}",
            )
            for i in range(2_000)
        ]
        self.nurses = [
            Person(
                user_id=3_000 + i,
                username=f"nurse{i}",
                name=f"Nurse {i}",
                role="nurse",
                org_id=201 + i // 40,
                org_code=self.nursing[i // 40],
                access_point=f"10.1.{i // 250}.{i % 250}",
            )
            for i in range(2_000)
        ]
        self.patients = [_bsn(i) for i in range(patients)]
        # Each patient has a GP practice; patient -> practice index
        self.home_practice = [rng.randrange(200) for _ in range(patients)]

    def directory(self, db: Any) -> None:
        for i, code in enumerate(self.practices):
            db.execute(
                "INSERT INTO organisations (id, code, kind, name, created_at) "
                "VALUES (?, ?, 'practice', ?, '2024-01-01')",
                [1 + i, code, f"Praktijk {i}"],
            )
        for i, code in enumerate(self.nursing):
            db.execute(
                "INSERT INTO organisations (id, code, kind, name, created_at) "
                "VALUES (?, ?, 'nursing', ?, '2024-01-01')",
                [201 + i, code, f"Zorg {i}"],
            )
        for i, (address, code) in enumerate(self.teams):
            db.execute(
                "INSERT INTO teams (id, org_id, name, address, created_at) VALUES "
                "(?, ?, ?, ?, '2024-01-01')",
                [1 + i, 201 + self.nursing.index(code), f"Team {i}", address],
            )

    def officer(self, practice: int) -> Actor:
        return Person(
            user_id=9_000 + practice,
            username=f"po{practice}",
            name=f"PO {practice}",
            role="privacy_officer",
            org_id=1 + practice,
            org_code=self.practices[practice],
            access_point="bench",
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_events(w: World, n: int, when: datetime) -> list[AuditEvent]:
    """The rows one request leaves, from consent check to answer (about nine)."""
    rng = w.rng
    p = rng.randrange(len(w.patients))
    bsn, practice = w.patients[p], w.home_practice[p]
    gp = w.gps[practice * 10 + rng.randrange(10)]
    team, team_org = w.teams[(practice * 7 + rng.randrange(3)) % len(w.teams)]
    nurse = w.nurses[w.nursing.index(team_org) * 40 + rng.randrange(40)]
    ref = f"UVZ-{when.year}-{n % 1_000_000:06d}"
    t = _iso(when)
    common = dict(
        patient_id=bsn,
        object_type="request",
        object_id=ref,
        data_categories="execution_request",
        sender_org=gp.org_code,
        recipient_org=team,
        occurred_at=t,
    )
    out = [
        AuditEvent.of(gp, "consent.check", consent_id=f"c-{p}", check_consent="permit", **common)
    ]
    if rng.random() < 0.01:
        out.append(
            AuditEvent.of(
                gp, "request.send", outcome="refused", outcome_detail="consent.missing", **common
            )
        )
        return out
    emergency = rng.random() < 0.002
    extra = (
        dict(nature="emergency", purpose="ETREAT", emergency_reason="acuut") if emergency else {}
    )
    out += [
        AuditEvent.of(gp, "request.create", consent_id=f"c-{p}", **common, **extra),
        AuditEvent.of(gp, "request.sign", **common),
        AuditEvent.of(gp, "request.send", consent_id=f"c-{p}", **common),
    ]
    system = replace(nurse, user_id=None, username="system", role="system", org_code="")
    if rng.random() < 0.02:
        out.append(
            AuditEvent.of(
                system, "request.retry", outcome="error", outcome_detail="smtp.temporary", **common
            )
        )
    if rng.random() < 0.003:
        out.append(
            AuditEvent.of(
                system, "request.fail", outcome="error", outcome_detail="smtp.rejected", **common
            )
        )
        return out
    out.append(AuditEvent.of(system, "request.deliver", **common))
    for _ in range(1 + rng.randrange(3)):
        out.append(AuditEvent.of(nurse, "request.view", **common))
    out.append(AuditEvent.of(nurse, "request.answer", **common))
    return out


def fill(
    store: Store, w: World, rows: int, hook: audit_integrity.Checkpointer
) -> tuple[int, float]:
    """Append about `rows` events in transactions of BATCH; (rows written, seconds)."""
    written, n = 0, 0
    started = time.perf_counter()
    step = SPAN / rows
    last_report = started
    while written < rows:
        batch: list[AuditEvent] = []
        while len(batch) < BATCH:
            when = START + step * (written + len(batch))
            r = w.rng.random()
            if r < 0.08:
                actor = w.rng.choice(w.gps if r < 0.05 else w.nurses)
                code, outcome = ("auth.fail", "refused") if r < 0.01 else ("auth.login", "success")
                batch.append(AuditEvent.of(actor, code, outcome=outcome, occurred_at=_iso(when)))
            else:
                n += 1
                batch += request_events(w, n, when)

        def write(db: Any, batch: list[AuditEvent] = batch) -> None:
            for i, e in enumerate(batch, start=1):
                audit.record(db, e)
                if i % CHECKPOINT_EVERY == 0:
                    hook(db)  # sign every 1,000 rows, as the running gateway does

        store.write_sync(write)
        written += len(batch)
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            rate = written / (last_report - started)
            print(f"  {written:,} rows, {rate:,.0f} rows/s", file=sys.stderr, flush=True)
    return written, time.perf_counter() - started


def single_commits(store: Store, w: World, count: int) -> float:
    """Rows/s when every event is its own transaction (commit and fsync each)."""
    started = time.perf_counter()
    for _ in range(count):
        e = AuditEvent.of(w.rng.choice(w.gps), "auth.login")
        store.write_sync(lambda db, e=e: audit.record(db, e))
    return count / (time.perf_counter() - started)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def patient_latency(store: Store, w: World) -> dict[str, Any]:
    rng = random.Random(7)
    picks = [rng.randrange(len(w.patients)) for _ in range(SAMPLES)]
    start, end = _iso(START), _iso(START + SPAN + timedelta(days=1))
    query_ms, audited_ms, counts = [], [], []
    for p in picks:
        officer = w.officer(w.home_practice[p])
        bsn = w.patients[p]

        def query(db: Any, officer: Actor = officer, bsn: str = bsn) -> int:
            scope = audit_report.scope_for(db, officer)
            where, params = scope.where()
            return len(
                db.execute(
                    "SELECT e.* FROM audit_events e INDEXED BY audit_patient WHERE "  # noqa: S608
                    f"e.patient_id = ? AND e.occurred_at >= ? AND e.occurred_at < ? AND {where}",
                    [bsn, start, end, *params],
                ).fetchall()
            )

        t0 = time.perf_counter()
        store.read_sync(query)
        query_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        report = store.write_sync(
            lambda db, officer=officer, bsn=bsn: audit_report.disclosure_report(
                db, officer, bsn, start, end, source_id="bench"
            )
        )
        audited_ms.append((time.perf_counter() - t0) * 1000)
        counts.append(len(report.rows))
    plan = store.read_sync(
        lambda db: [
            r[3]
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT e.seq FROM audit_events e INDEXED BY audit_patient "
                "WHERE e.patient_id = ? AND e.occurred_at >= ? AND e.occurred_at < ?",
                ["x", start, end],
            )
        ]
    )
    return {
        "samples": SAMPLES,
        "rows_per_report_mean": round(statistics.mean(counts), 1),
        "query_ms_p50": round(percentile(query_ms, 50), 3),
        "query_ms_p99": round(percentile(query_ms, 99), 3),
        "audited_ms_p50": round(percentile(audited_ms, 50), 3),
        "audited_ms_p99": round(percentile(audited_ms, 99), 3),
        "plan": plan,
    }


def run(quick: bool = False, rows: int | None = None, keep: str | None = None) -> dict[str, Any]:
    """Fill, verify and query; return the results (also written to benchmarks/out/audit.json)."""
    rows = rows or (QUICK_ROWS if quick else DEFAULT_ROWS)
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-audit-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"audit benchmark: {rows:,} rows in {workdir}", file=sys.stderr, flush=True)
    rng = random.Random(2024)
    w = World(rng, patients=max(10_000, rows // 10))
    store = Store(workdir / "securemail.db")
    try:
        store.migrate(MIGRATIONS)
        # A 1 GiB page cache instead of sqlite's 2 MiB default: seven indexes take random
        # inserts; production should set it too (see docs/audit.md).
        store._writer_conn.execute("PRAGMA cache_size = -1048576")
        store.write_sync(w.directory)
        hook = audit_integrity.install(store, workdir, every=CHECKPOINT_EVERY)
        written, seconds = fill(store, w, rows, hook)
        single = single_commits(store, w, 500)
        keys = {audit_integrity.key_id(hook.key.public_key()): hook.key.public_key()}
        report = store.read_sync(lambda db: audit_integrity.verify(db, keys))
        one = (
            store.read_sync(lambda db: audit_integrity.verify(db, keys, workers=1))
            if quick or rows <= 2_000_000
            else None
        )
        latency = patient_latency(store, w)
        size = sum(f.stat().st_size for f in workdir.glob("securemail.db*"))
    finally:
        store.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "rows": written,
        "append_rows_per_s": round(written / seconds),
        "append_seconds": round(seconds, 1),
        "append_single_commit_rows_per_s": round(single),
        "verify_rows": report.rows,
        "verify_checkpoints": report.checkpoints,
        "verify_seconds": round(report.seconds, 2),
        "verify_rows_per_s": round(report.rows_per_second),
        "verify_workers": report.workers,
        "verify_one_process_rows_per_s": round(one.rows_per_second) if one else None,
        "patient_report": latency,
        "db_bytes": size,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "when": _iso(datetime.now(UTC)),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    return result


def table(r: dict[str, Any]) -> str:
    p = r["patient_report"]
    one = r["verify_one_process_rows_per_s"]
    lines = [
        f"audit trail, {r['rows']:,} rows ({r['db_bytes'] / 1e9:.1f} GB on disk)",
        f"  append (10,000 per transaction)  {r['append_rows_per_s']:>12,} rows/s",
        f"  append (one per transaction)     {r['append_single_commit_rows_per_s']:>12,} rows/s",
        f"  verify ({r['verify_workers']} processes, "
        f"{r['verify_checkpoints']:,} checkpoints) {r['verify_rows_per_s']:>9,} rows/s"
        f"  ({r['verify_seconds']} s)",
    ]
    if one:
        lines.append(f"  verify (1 process)               {one:>12,} rows/s")
    lines += [
        f"  patient report, query only       p50 {p['query_ms_p50']:.2f} ms   "
        f"p99 {p['query_ms_p99']:.2f} ms",
        f"  patient report, audited + commit p50 {p['audited_ms_p50']:.2f} ms   "
        f"p99 {p['audited_ms_p99']:.2f} ms   ({p['rows_per_report_mean']} rows each, "
        f"{p['samples']} patients)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--keep", default=None, help="build the database here and keep it")
    args = ap.parse_args(argv)
    run(args.quick, args.rows, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
