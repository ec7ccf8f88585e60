"""Latency of consent.evaluate over a large register (the target is p99 < 2 ms).

    PYTHONPATH=. python benchmarks/consent_evaluate.py [--patients 100000] [--checks 5000]

Builds a throw-away sqlite file with three current records per patient (random team,
organisation or category recipients at 50 practices) and times evaluate() for random
patients and targets, most of which find no record (the slower path: it also explains).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securemail import consent
from securemail.consent.model import ts
from securemail.home import open_store

NOW = datetime(2025, 3, 3, tzinfo=UTC)


def bsns(n: int) -> list[str]:
    out: list[str] = []
    i = 10_000_000
    while len(out) < n:
        digits = [int(x) for x in f"{i:08d}"]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            out.append(f"{i:08d}{check}")
        i += 1
    return out


def register_rows(patients: list[str], rng: random.Random) -> list[dict]:
    """Three current records per patient: team, organisation or category recipients."""
    since = ts(NOW - timedelta(days=100))
    rows = []
    for bsn in patients:
        for _ in range(3):
            level = rng.choice("toc")
            decision = rng.choice(("permit", "permit", "deny"))
            rows.append(
                {
                    "consent_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "version": 1,
                    "status": "active",
                    "decision": decision,
                    "basis": "objection" if decision == "deny" else "explicit",
                    "patient_bsn": bsn,
                    "source_org_id": rng.randint(1, 50),
                    "recipient_team_id": rng.randint(1, 500) if level == "t" else None,
                    "recipient_org_id": rng.randint(1, 100) if level == "o" else None,
                    "recipient_category": "wijkverpleging" if level == "c" else None,
                    "purpose": "TREAT",
                    "data_categories": '["execution_request"]',
                    "valid_from": since,
                    "given_at": since,
                    "channel": "in_person",
                    "performer": "patient",
                    "recorded_by": 1,
                    "recorded_at": since,
                }
            )
    return rows


def fill(store, patients: int, rng: random.Random) -> list[str]:  # type: ignore[no-untyped-def]
    """Fill store's register for ``patients`` patients, in batches; return their BSNs."""
    bsn_list = bsns(patients)
    for start in range(0, len(bsn_list), 20_000):
        rows = register_rows(bsn_list[start : start + 20_000], rng)
        store.write_sync(lambda db, rows=rows: db["consents"].insert_all(rows, batch_size=5000))
    return bsn_list


def time_evaluations(store, patients: list[str], checks: int, rng: random.Random) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per consent.evaluate (each in its own read snapshot), random patient/target."""
    timings = []
    for _ in range(checks):
        target = consent.Target(
            team_id=rng.randint(1, 500), org_id=rng.randint(1, 100), category="wijkverpleging"
        )
        bsn, org = rng.choice(patients), rng.randint(1, 50)

        def one(db, bsn=bsn, org=org, target=target):  # type: ignore[no-untyped-def]
            return consent.evaluate(db, patient_bsn=bsn, source_org_id=org, target=target, now=NOW)

        start = time.perf_counter()
        store.read_sync(one)
        timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=5_000)
    args = parser.parse_args()
    rng = random.Random(6)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "bench.db")
        patients = fill(store, args.patients, rng)
        timings = time_evaluations(store, patients, args.checks, rng)
        store.close()
    timings.sort()
    pick = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))] * 1000  # noqa: E731
    print(f"{3 * len(patients)} records, {args.checks} evaluations (each in its own read snapshot)")
    print(f"p50 {pick(0.5):.3f} ms  p99 {pick(0.99):.3f} ms  max {timings[-1] * 1000:.3f} ms")


if __name__ == "__main__":
    main()
