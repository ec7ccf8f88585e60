"""Retention: the cost of sealing content at rest, and of a purge over many requests.

``python -m benchmarks retention`` (``--quick`` for fewer rows). Builds a real sqlite home
in a temporary folder: N answered requests with a sealed 4 KB document, sealed answer and
a hop each, then times ``retention.purge`` past content_days (content emptied, with
secure_delete and a WAL truncate) and past metadata_days (rows deleted). Figures only,
never assertions.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securemail import config, contentbox
from securemail.access import SYSTEM
from securemail.home import MIGRATIONS
from securemail.ops import retention
from securemail.region import directory
from securemail.store import Store

DOCUMENT = json.dumps({"patient": {"name": "Benchmark Patiënt"}, "text": "x" * 4000})


def _fill(store: Store, n: int, answered: datetime) -> None:
    at = answered.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def tx(db: Any) -> None:
        practice = directory.add_org(db, SYSTEM, code="01234567", kind="practice", name="P",
                                     now=at)  # fmt: skip
        directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="N", now=at)
        team = directory.add_team(db, SYSTEM, org_code="87654321", name="T",
                                  address="t@zorg.example", now=at)  # fmt: skip
        db.execute(
            "INSERT INTO users (username, name, role, org_id, password_hash, created_at) "
            "VALUES ('gp', 'G', 'gp', ?, 'x', ?)",
            [practice.id, at],
        )
        for i in range(n):
            ref = f"UVZ-2026-{i + 1:06d}"
            db.execute(
                "INSERT INTO requests (reference, kind, urgency, practice_org_id, team_id, "
                "patient_bsn, created_by, signer_fingerprint, recipient_fingerprints, document, "
                "message_id, state, answer, answer_status, answered_at, created_at, updated_at) "
                "VALUES (?, 'nieuw', 'regulier', ?, ?, '999990123', 1, ?, '[]', ?, ?, "
                "'answered', ?, 'geaccepteerd', ?, ?, ?)",
                [ref, practice.id, team.id, "F" * 40,
                 contentbox.seal(db, "requests", "document", ref, DOCUMENT), f"<{i}@b>",
                 contentbox.seal(db, "requests", "answer", ref, '{"status": "geaccepteerd"}'),
                 at, at, at],
            )  # fmt: skip
            db.execute(
                "INSERT INTO request_hops (reference, team_id, message_id, sent_at, outcome) "
                "VALUES (?, ?, ?, ?, 'geaccepteerd')",
                [ref, team.id, f"<{i}@b>", at],
            )

    store.write_sync(tx)


def run(quick: bool = False) -> dict[str, Any]:
    n = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="sm-bench-ret-") as tmp:
        home = Path(tmp)
        settings = config.load(home, env={})
        box = contentbox.load(settings)
        where = contentbox.context("requests", "document", "UVZ-2026-000001")
        rounds = 2_000
        t0 = time.perf_counter()
        for _ in range(rounds):
            box.open(box.seal(DOCUMENT, context=where), context=where)
        seal_open_us = (time.perf_counter() - t0) / rounds * 1e6
        store = Store(settings.db_path)
        try:
            store.migrate(MIGRATIONS)
            answered = datetime(2026, 1, 5, 10, tzinfo=UTC)
            _fill(store, n, answered)
            t0 = time.perf_counter()
            dry = retention.purge(store, settings, now=answered + timedelta(days=31),
                                  dry_run=True)  # fmt: skip
            plan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            content = retention.purge(store, settings, now=answered + timedelta(days=31))
            content_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            meta = retention.purge(store, settings, now=answered + timedelta(days=31 + 730))
            meta_s = time.perf_counter() - t0
        finally:
            store.close()
            contentbox.forget(settings)
    assert dry.request_content == content.request_content == meta.request_rows == n
    return {
        "requests": n,
        "seal_open_4kb_us": round(seal_open_us, 1),
        "plan_s": round(plan_s, 3),
        "content_purge_s": round(content_s, 3),
        "metadata_purge_s": round(meta_s, 3),
        "table": [
            {"metric": "seal + open one 4 KB document (µs)", "value": round(seal_open_us, 1)},
            {"metric": f"purge plan (dry run), {n} requests (s)", "value": round(plan_s, 2)},
            {"metric": f"content purge, {n} requests (s)", "value": round(content_s, 2)},
            {"metric": f"metadata purge, {n} requests (s)", "value": round(meta_s, 2)},
        ],
    }
