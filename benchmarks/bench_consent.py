"""Consent at scale: the register's answer for one send, over a large register.

Uses benchmarks/consent_evaluate.py (the consent module's own benchmark) to fill a
throw-away register (three current records per patient: team, organisation or category
recipients at 50 practices), then times for random patients and targets, most of which
find no record (the slower path, which also explains):

- ``consent.evaluate`` alone, each in its own read snapshot (the preview's check);
- ``consent.check`` as a send does it: evaluate plus its ``consent.check`` audit row,
  in one write transaction (BEGIN IMMEDIATE, synchronous=FULL, so one fsync each).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import consent_evaluate as ce
from benchmarks._gateway import percentile
from securemail import consent
from securemail.access import SYSTEM
from securemail.home import open_store

TITLE = "Consent check over a large register"


def run(quick: bool) -> dict[str, Any]:
    patients, checks, writes = (10_000, 1_000, 100) if quick else (333_334, 5_000, 500)
    rng = random.Random(6)
    with tempfile.TemporaryDirectory(prefix="smb-") as tmp:
        store = open_store(Path(tmp) / "bench.db")
        try:
            start = time.perf_counter()
            bsns = ce.fill(store, patients, rng)
            fill_s = time.perf_counter() - start
            evaluate = [t * 1000 for t in ce.time_evaluations(store, bsns, checks, rng)]
            check = []
            for _ in range(writes):
                target = consent.Target(
                    team_id=rng.randint(1, 500),
                    org_id=rng.randint(1, 100),
                    category="wijkverpleging",
                )
                bsn, org = rng.choice(bsns), rng.randint(1, 50)

                def one(
                    db: Any, bsn: str = bsn, org: int = org, target: consent.Target = target
                ) -> Any:
                    return consent.check(
                        db,
                        SYSTEM,
                        patient_bsn=bsn,
                        source_org_id=org,
                        target=target,
                        now=ce.NOW,
                        audit_object=("request", "UVZ-2026-000001"),
                    )

                t = time.perf_counter()
                store.write_sync(one)
                check.append((time.perf_counter() - t) * 1000)
        finally:
            store.close()
    e50, e99 = percentile(evaluate, 0.5), percentile(evaluate, 0.99)
    c50, c99 = percentile(check, 0.5), percentile(check, 0.99)
    return {
        "title": TITLE,
        "records": 3 * len(bsns),
        "fill_seconds": round(fill_s, 1),
        "evaluations": checks,
        "evaluate_ms_p50": round(e50 or 0, 3),
        "evaluate_ms_p99": round(e99 or 0, 3),
        "checks_with_audit_row": writes,
        "check_ms_p50": round(c50 or 0, 3),
        "check_ms_p99": round(c99 or 0, 3),
        "table": [
            {
                "metric": f"consent evaluate p50/p99 ms ({3 * len(bsns):,} records)",
                "value": f"{e50:.3f} / {e99:.3f}",
                "target": "p99 < 2 ms",
                "met": e99 is not None and e99 < 2,
            },
            {
                "metric": "consent check + audit row, committed (fsync) p50/p99 ms",
                "value": f"{c50:.3f} / {c99:.3f}",
            },
        ],
    }
