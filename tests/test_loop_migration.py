"""Migrations of the loop: securemail.exchange:0002_loop and securemail.asks:0001_asks on a
database that already holds a request sent before them."""

from __future__ import annotations

import json
from pathlib import Path

from securemail.access import SYSTEM, Person
from securemail.exchange import changes
from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.home import MIGRATIONS
from securemail.region import directory
from securemail.store import Store

LATER = {
    "securemail.exchange": "0002_loop",
    "securemail.asks": "0001_asks",
    "securemail.retention": "0001_content_sealed",
}


def test_loop_migrations_keep_an_earlier_request_readable(tmp_path: Path) -> None:
    # Given a database migrated up to just before the loop, with one request in it
    store = Store(tmp_path / "old.db")
    try:

        def before(db):  # type: ignore[no-untyped-def]
            for m in MIGRATIONS:
                m.apply(db, stop_before=LATER.get(m.name))
            now = "2026-11-01T10:00:00.000Z"
            practice = directory.add_org(
                db, SYSTEM, code="01234567", kind="practice", name="P", now=now
            )
            directory.add_org(db, SYSTEM, code="87654321", kind="nursing", name="N", now=now)
            team = directory.add_team(
                db, SYSTEM, org_code="87654321", name="T", address="t@zorg.example", now=now
            )
            db.execute(
                "INSERT INTO users (username, name, role, org_id, password_hash, created_at) "
                "VALUES ('gp', 'G', 'gp', ?, 'x', ?)",
                [practice.id, now],
            )
            db["requests"].insert(
                {
                    "reference": "UVZ-2026-000001", "kind": "nieuw", "urgency": "regulier",
                    "practice_org_id": practice.id, "team_id": team.id,
                    "patient_bsn": "999990123", "created_by": 1, "signer_fingerprint": "F" * 40,
                    "recipient_fingerprints": "[]", "document": b"{}", "message_id": "<a@b>",
                    "answer_due": "2026-11-02T10:00+01:00", "created_at": now, "updated_at": now,
                }
            )  # fmt: skip

        store.write_sync(before)
        assert {"securemail.exchange:0002_loop", "securemail.asks:0001_asks"} <= set(
            store.pending_migrations(MIGRATIONS)
        )
        # When the loop's migrations run
        applied = store.migrate(MIGRATIONS)
        # Then they applied, and the old request reads as before, with the new columns empty
        assert "securemail.exchange:0002_loop" in applied
        assert "securemail.asks:0001_asks" in applied
        gp = Person(user_id=1, username="gp", name="G", role="gp", org_id=1)
        [listed] = store.read_sync(lambda db: exchange.list_requests(db, gp))
        assert (listed["reference"], listed["overdue"], listed["hop_count"]) == (
            "UVZ-2026-000001", False, 0
        )  # fmt: skip
        assert store.read_sync(lambda db: requestview.hops(db, "UVZ-2026-000001")) == []
        assert store.read_sync(lambda db: changes.chain(db, "UVZ-2026-000001")) == []
        row = store.read_sync(lambda db: exchange.require_row(db, "UVZ-2026-000001"))
        assert bytes(row["json_signature"]) == b""  # passed on under the gateway's seal
        assert store.read_sync(lambda db: db["asks"].count) == 0
        assert json.loads(row["recipient_fingerprints"]) == []
    finally:
        store.close()
