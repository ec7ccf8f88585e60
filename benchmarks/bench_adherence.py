"""Adherence figures: one month's report over a year of synthetic turns.

``PYTHONPATH=. python -m benchmarks adherence`` (``--quick``: 2,000 requests a month).
A store with every migration, 40 teams, 300 practices, 12 months of requests (a fifth
passed on once), each hop with a delivered outbox row, and asks. The rows are bulk
inserted with the columns the loaders read (synthetic, no patient data; the tests build
theirs through the real send path). Measured: the audit row (on the
writer: the audit row only), the month's SQL (a reader snapshot) and the figures (pure,
off the writer) for one month.
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.config import DeadlineSettings
from securemail.home import open_store
from securemail.region import adherence, directory

MONTHS = 12
TEAMS, PRACTICES = 40, 300


def _populate(db: Any, per_month: int, rng: random.Random) -> None:
    now = "2026-01-01T00:00:00Z"
    for i in range(PRACTICES):
        directory.add_org(db, SYSTEM, code=f"01{i:06d}", kind="practice", name=f"P{i}", now=now)
    directory.add_org(db, SYSTEM, code="87000000", kind="nursing", name="Zorg", now=now)
    for t in range(TEAMS):
        directory.add_team(db, SYSTEM, org_code="87000000", name=f"Team {t}",
                           address=f"team{t}@zorg.example", now=now)  # fmt: skip
    auth.add_user(
        db, SYSTEM, username="gp", name="GP", role="gp", org_code="01000000",
        password="benchmark password 123", profile={"big": "19012345601"}, now=now,
    )  # fmt: skip
    requests, hops, outbox, asks = [], [], [], []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    n = 0
    for m in range(MONTHS):
        for _ in range(per_month):
            n += 1
            ref = f"UVZ-2026-{n:06d}"
            sent = start + timedelta(days=30.4 * m + rng.random() * 30)
            practice = 1 + rng.randrange(PRACTICES)
            team = 1 + rng.randrange(TEAMS)
            passed = rng.random() < 0.2
            requests.append({
                "reference": ref, "kind": "nieuw", "urgency": rng.choice(["regulier", "spoed"]),
                "practice_org_id": practice, "team_id": team, "patient_bsn": "000000000",
                "created_by": 1, "signer_fingerprint": "", "recipient_fingerprints": "[]",
                "document": b"{}", "message_id": f"<{ref}>",
                "state": rng.choice(["answered", "open"]), "created_at": sent.isoformat(),
                "updated_at": sent.isoformat(),
            })  # fmt: skip
            for h in range(2 if passed else 1):
                at = sent + timedelta(hours=2 * h)
                mid = f"<{ref}.{h}>"
                answered = at + timedelta(minutes=rng.randrange(5, 3000))
                outcome = "doorbemiddeld" if passed and h == 0 else rng.choice(
                    ["geaccepteerd", "afgewezen", ""])  # fmt: skip
                hops.append({
                    "reference": ref, "team_id": team if h == 0 else 1 + (team % TEAMS),
                    "message_id": mid, "sent_at": at.isoformat(), "outcome": outcome,
                    "outcome_at": answered.isoformat() if outcome else "",
                })  # fmt: skip
                outbox.append({
                    "reference": ref, "kind": "request", "message_id": mid, "sender": "g",
                    "recipient": "t", "mime": b"", "status": "sent", "created_at": 0,
                    "queued_at": 0, "updated_at": 0, "next_attempt_at": 0,
                    "final_at": at.timestamp(), "final_handled_at": at.timestamp(),
                })  # fmt: skip
            if rng.random() < 0.3:
                created = sent - timedelta(days=1)
                asks.append({
                    "reference": f"ASK-2026-{n:06d}", "created_by": 1, "team_id": team,
                    "practice_org_id": practice, "patient_bsn": "", "patient_name": "",
                    "procedure_code": "INJ_SC", "reason": "", "urgency": "regulier",
                    "state": "fulfilled", "due_at": "", "created_at": created.isoformat(),
                    "fulfilled_at": sent.isoformat(),
                })  # fmt: skip
    for table, rows in (("requests", requests), ("request_hops", hops), ("outbox", outbox),
                        ("asks", asks)):  # fmt: skip
        db[table].insert_all(rows, batch_size=2000)


def run(quick: bool) -> dict[str, Any]:
    per_month = 2_000 if quick else 20_000
    rng = random.Random(12)
    calendar = DeadlineSettings()
    with tempfile.TemporaryDirectory(prefix="sm-bench-adh-") as tmp:
        store = open_store(Path(tmp) / "securemail.db")
        try:
            store.write_sync(lambda db: _populate(db, per_month, rng))
            t0 = time.perf_counter()
            store.write_sync(lambda db: adherence.record_read(db, SYSTEM, "2026-06"))
            tw = time.perf_counter()
            rows = store.read_sync(lambda db: adherence.load_month(db, "2026-06", calendar))
            t1 = time.perf_counter()
            published = rows.figures(now=datetime(2026, 12, 1, tzinfo=UTC), calendar=calendar)
            t2 = time.perf_counter()
            adherence.to_csv(published)
        finally:
            store.close()
    turns = len(rows.turns)
    return {
        "turns_in_month": turns,
        "asks_in_month": len(rows.asks),
        "audit_write_seconds": round(tw - t0, 3),
        "read_seconds": round(t1 - tw, 3),
        "figures_seconds": round(t2 - t1, 3),
        "table": [
            {"metric": "audit row (on the writer)", "value": f"{tw - t0:.3f} s"},
            {
                "metric": f"read of one month ({turns:,} turns of {MONTHS} months, reader)",
                "value": f"{t1 - tw:.3f} s",
            },
            {"metric": "figures + suppression (off the writer)", "value": f"{t2 - t1:.3f} s"},
        ],  # fmt: skip
    }
