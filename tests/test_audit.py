"""The audit trail: chain, tamper evidence, checkpoints, retention, scope, reports, exports.

Real sqlite files in tmp_path; tampering is done the way an attacker with the file would
do it: a raw sqlite3 connection that drops the triggers first.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import stat
import time as _time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.audit import export as audit_export
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import retention as audit_retention
from securemail.audit import review as audit_review
from securemail.audit import trail as audit
from securemail.audit.trail import AuditEvent, ChainBrokenError
from securemail.errors import AccessDeniedError, InputError
from securemail.home import MIGRATIONS
from securemail.region import directory
from securemail.store import Store
from tests.conftest import chain_alone

ROOT = Path(__file__).resolve().parent.parent
NOW = "2024-01-01T00:00:00.000Z"
PRACTICE_A, NURSING_B, PRACTICE_C = "01234567", "87654321", "11111111"
TEAM_B = "noord@beek.example"
BSN, BSN_2 = "111222333", "123456782"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "SCRYPT_N", 2**4)  # test accounts: scrypt cost is not under test
    s = Store(tmp_path / "securemail.db")
    s.migrate(MIGRATIONS)
    yield s
    s.close()


def add_orgs(db):
    """Practice A, nursing organisation B with its team TEAM_B, and practice C."""
    directory.add_org(db, SYSTEM, code=PRACTICE_A, kind="practice", name="Praktijk Akker", now=NOW)
    directory.add_org(db, SYSTEM, code=NURSING_B, kind="nursing", name="Thuiszorg Beek", now=NOW)
    directory.add_team(
        db, SYSTEM, org_code=NURSING_B, name="Wijkteam Noord", address=TEAM_B, now=NOW
    )
    directory.add_org(db, SYSTEM, code=PRACTICE_C, kind="practice", name="Praktijk Ceder", now=NOW)


@pytest.fixture
def world(store):
    """Practice A (GP, officer), nursing organisation B (team, nurse, officer), practice C."""

    def setup(db):
        add_orgs(db)
        pw = "correct horse battery"
        for username, role, org, extra in (
            ("po_a", "privacy_officer", PRACTICE_A, {}),
            ("po_b", "privacy_officer", NURSING_B, {}),
            ("po_c", "privacy_officer", PRACTICE_C, {}),
            ("gp_a", "gp", PRACTICE_A, {"profile": {"big": "12345678901"}}),
            ("gp_c", "gp", PRACTICE_C, {"profile": {"big": "12345678902"}}),
            ("nurse_b", "nurse", NURSING_B, {"teams": [TEAM_B]}),
        ):
            auth.add_user(
                db,
                SYSTEM,
                username=username,
                name=username.upper(),
                role=role,
                org_code=org,
                password=pw,
                now=NOW,
                **extra,
            )
        return {
            u: auth.actor_for_cli(db, u)
            for u in ("po_a", "po_b", "po_c", "gp_a", "gp_c", "nurse_b")
        }

    actors = store.write_sync(setup)
    return store, actors


@pytest.fixture
def key(tmp_path):
    return audit_integrity.load_or_create_checkpoint_key(tmp_path)


def trusted(tmp_path):
    return audit_integrity.trusted_keys(tmp_path)


def at(day: int, hour: int = 10, minute: int = 0) -> str:
    """A UTC timestamp in May 2024 (10:00 UTC is 12:00 in Amsterdam)."""
    return f"2024-05-{day:02d}T{hour:02d}:{minute:02d}:00.000Z"


def send(db, gp, bsn, *, when, team=TEAM_B, outcome="success", detail="", **kw):
    common = dict(
        patient_id=bsn,
        object_type="request",
        object_id=f"UVZ-2024-{when[8:10]}0001",
        data_categories="execution_request",
        sender_org=gp.org_code,
        recipient_org=team,
        occurred_at=when,
        consent_id="c-1",
    )
    if outcome == "success":
        audit.record(db, AuditEvent.of(gp, "request.create", **common))
    return audit.record(
        db,
        AuditEvent.of(gp, "request.send", outcome=outcome, outcome_detail=detail, **common, **kw),
    )


def fill(store, n, actor=SYSTEM, **kw):
    def go(db):
        for i in range(n):
            audit.record(
                db,
                AuditEvent.of(
                    actor,
                    "request.view",
                    patient_id=BSN,
                    object_type="request",
                    object_id=f"r{i}",
                    **kw,
                ),
            )

    store.write_sync(go)


def raw(store):
    """An attacker's connection to the file, with the protecting triggers dropped."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    for t in (
        "audit_no_update",
        "audit_no_delete",
        "audit_checkpoints_no_update",
        "audit_checkpoints_no_delete",
        "audit_anchor_no_delete",
    ):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    return conn


def verify(store, tmp_path, **kw):
    return store.read_sync(lambda db: audit_integrity.verify(db, trusted(tmp_path), **kw))


def broken(store, tmp_path, **kw) -> ChainBrokenError:
    with pytest.raises(ChainBrokenError) as info:
        verify(store, tmp_path, **kw)
    return info.value


def rehash_from(conn, seq):
    """Recompute every hash from seq on, as an attacker who knows the algorithm would."""
    cur = conn.execute(
        f"SELECT {', '.join(audit._HASHED)} FROM audit_events "  # noqa: S608
        "WHERE seq >= ? ORDER BY seq",
        [seq],
    )
    rows = [dict(zip(audit._HASHED, r, strict=True)) for r in cur.fetchall()]
    prev = conn.execute("SELECT row_hash FROM audit_events WHERE seq = ?", [seq - 1]).fetchone()
    prev_hash = prev[0] if prev else audit.GENESIS
    for r in rows:
        h = audit.row_hash(prev_hash, r)
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?, row_hash = ? WHERE seq = ?",
            [prev_hash, h, r["seq"]],
        )
        prev_hash = h


# -- the chain -----------------------------------------------------------------------------


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(text, st.integers(-(2**62), 2**62), st.none()),
        min_size=len(audit._HASHED),
        max_size=len(audit._HASHED),
    )
)
def test_canonical_is_sorted_compact_json(values):
    row = dict(zip(audit._HASHED, values, strict=True))
    # A row from before migration 0002 (no policy) commits to the original columns only.
    hashed = row if row["policy_id"] is not None else {k: row[k] for k in audit._HASHED_V1}
    expected = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert audit.canonical(row) == expected.encode("utf-8")


@settings(max_examples=60, deadline=None)
@given(detail=text)
def test_verify_accepts_any_text_through_sqlite_json(tmp_path_factory, detail):
    # SQLite builds the canonical bytes on the fast path; odd text must never be called altered.
    s = Store(tmp_path_factory.mktemp("h") / "db")
    s.migrate(MIGRATIONS)
    try:
        s.write_sync(
            lambda db: audit.record(
                db, AuditEvent("auth.fail", user_name=detail, outcome_detail=detail)
            )
        )
        assert s.read_sync(chain_alone).rows == 1
    finally:
        s.close()


def test_record_chains_rows_and_verify_counts_them(store, key, tmp_path):
    fill(store, 25)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    report = verify(store, tmp_path)
    assert (report.rows, report.checkpoints, report.first_seq, report.last_seq) == (25, 1, 1, 25)
    assert report.unsigned_rows == 0 and report.rows_per_second > 0
    assert "verified 25 rows and 1 checkpoints" in report.summary()


def test_triggers_refuse_update_and_delete(store, key):
    fill(store, 3)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    for sql in (
        "UPDATE audit_events SET user_name = 'x' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 3",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.write_sync(lambda db, sql=sql: db.execute(sql))
    assert store.read_sync(chain_alone).rows == 3


def test_record_refuses_unknown_code(store):
    with pytest.raises(audit.AuditError):
        store.write_sync(lambda db: audit.record(db, AuditEvent("request.teleport")))


def test_record_commits_with_the_change_or_not_at_all(store):
    def change_then_fail(db):
        audit.record(db, AuditEvent("gateway.init"))
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        store.write_sync(change_then_fail)
    assert store.read_sync(lambda db: audit.head(db)) == (0, audit.GENESIS)


# -- tampering: each kind is detected and named ----------------------------------------------


def test_tamper_edited_column_is_named(store, tmp_path):
    fill(store, 10)
    raw(store).execute("UPDATE audit_events SET user_name = 'mallory' WHERE seq = 4")
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (4, "edited")
    assert "row 4 was altered" in err.reason


def test_tamper_deleted_row_is_named(store, tmp_path):
    fill(store, 10)
    raw(store).execute("DELETE FROM audit_events WHERE seq = 6")
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (6, "missing")


def test_tamper_deleted_first_row_is_named(store, tmp_path):
    fill(store, 5)
    raw(store).execute("DELETE FROM audit_events WHERE seq = 1")
    err = broken(store, tmp_path)
    assert err.context["seq"] == 1


def _shift_after(conn, seq):
    conn.execute("UPDATE audit_events SET seq = seq + 1000000 WHERE seq > ?", [seq])
    conn.execute("UPDATE audit_events SET seq = seq - 999999 WHERE seq > 1000000")


def test_tamper_inserted_row_is_named(store, tmp_path):
    fill(store, 10)
    conn = raw(store)
    _shift_after(conn, 5)
    row = dict(
        zip(
            audit._HASHED,
            conn.execute(
                f"SELECT {', '.join(audit._HASHED)} FROM audit_events WHERE seq = 5"  # noqa: S608
            ).fetchone(),
            strict=True,
        )
    )
    row.update(seq=6, event_id="forged", user_name="mallory")
    cols = [*audit._HASHED, "prev_hash", "row_hash"]
    values = [row[c] for c in audit._HASHED] + ["ab" * 32, "cd" * 32]
    conn.execute(
        f"INSERT INTO audit_events ({', '.join(cols)}) "  # noqa: S608
        f"VALUES ({', '.join('?' for _ in cols)})",
        values,
    )
    err = broken(store, tmp_path)
    assert err.context["seq"] == 6


def test_tamper_inserted_row_with_recomputed_hash_breaks_the_next_link(store, tmp_path):
    fill(store, 10)
    conn = raw(store)
    _shift_after(conn, 5)
    row = dict(
        zip(
            audit._HASHED,
            conn.execute(
                f"SELECT {', '.join(audit._HASHED)} FROM audit_events WHERE seq = 5"  # noqa: S608
            ).fetchone(),
            strict=True,
        )
    )
    prev = conn.execute("SELECT row_hash FROM audit_events WHERE seq = 5").fetchone()[0]
    row.update(seq=6, event_id="forged", user_name="mallory")
    cols = [*audit._HASHED, "prev_hash", "row_hash"]
    values = [row[c] for c in audit._HASHED] + [prev, audit.row_hash(prev, row)]
    conn.execute(
        f"INSERT INTO audit_events ({', '.join(cols)}) "  # noqa: S608
        f"VALUES ({', '.join('?' for _ in cols)})",
        values,
    )
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (7, "link")
    assert "inserted, deleted or reordered" in err.reason


def test_tamper_swapped_rows_are_named(store, tmp_path):
    fill(store, 10)
    conn = raw(store)
    cols = [*audit._HASHED, "prev_hash", "row_hash"]
    r3, r4 = (
        list(
            conn.execute(
                f"SELECT {', '.join(cols)} FROM audit_events WHERE seq = ?",  # noqa: S608
                [s],
            ).fetchone()
        )
        for s in (3, 4)
    )
    conn.execute("DELETE FROM audit_events WHERE seq IN (3, 4)")
    seq_at = cols.index("seq")
    r3[seq_at], r4[seq_at] = 4, 3
    for r in (r4, r3):
        conn.execute(
            f"INSERT INTO audit_events ({', '.join(cols)}) "  # noqa: S608
            f"VALUES ({', '.join('?' for _ in cols)})",
            r,
        )
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (3, "link")


def test_tamper_truncated_tail_after_checkpoint_is_named(store, key, tmp_path):
    fill(store, 10)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    fill(store, 5)
    raw(store).execute("DELETE FROM audit_events WHERE seq >= 8")
    # Without the checkpoint the shortened chain would still hang together:
    assert store.read_sync(chain_alone).rows == 7
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (8, "truncated")
    assert "rows 8..10 are missing" in err.reason


def test_tamper_recomputed_chain_is_caught_by_the_checkpoint(store, key, tmp_path):
    fill(store, 10)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    fill(store, 3)
    conn = raw(store)
    conn.execute("UPDATE audit_events SET user_name = 'mallory' WHERE seq = 4")
    rehash_from(conn, 4)
    assert store.read_sync(chain_alone).rows == 13  # the chain alone is fooled
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (10, "checkpoint")


def test_tamper_checkpoint_moved_to_the_rewritten_head_fails_its_signature(store, key, tmp_path):
    fill(store, 10)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    conn = raw(store)
    conn.execute("UPDATE audit_events SET outcome_detail = 'x' WHERE seq = 2")
    rehash_from(conn, 2)
    new_head = conn.execute("SELECT row_hash FROM audit_events WHERE seq = 10").fetchone()[0]
    conn.execute("UPDATE audit_checkpoints SET head_hash = ?", [new_head])
    err = broken(store, tmp_path)
    assert err.context["why"] == "signature"


def test_tamper_checkpoint_signed_with_another_key_is_refused(store, tmp_path):
    fill(store, 4)
    mallory = audit_integrity.load_or_create_checkpoint_key(tmp_path / "mallory")
    store.write_sync(lambda db: audit_integrity.checkpoint(db, mallory))
    err = broken(store, tmp_path)
    assert err.context["why"] == "unknown key"


def test_parallel_verify_names_the_same_row(store, key, tmp_path):
    fill(store, 40)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    assert verify(store, tmp_path, workers=2).rows == 40
    conn = raw(store)
    conn.execute("DELETE FROM audit_events WHERE seq = 21")  # the first row of piece 2
    err = broken(store, tmp_path, workers=2)
    assert (err.context["seq"], err.context["why"]) == (21, "missing")
    conn.execute("UPDATE audit_events SET user_role = 'x' WHERE seq = 33")
    assert broken(store, tmp_path, workers=2).context["seq"] == 21


# -- checkpoints and the key ----------------------------------------------------------------


def test_checkpoint_key_is_private_and_loaded_again(tmp_path):
    key = audit_integrity.load_or_create_checkpoint_key(tmp_path)
    path = tmp_path / audit_integrity.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = audit_integrity.load_or_create_checkpoint_key(tmp_path)
    assert audit_integrity.key_id(again.public_key()) == audit_integrity.key_id(key.public_key())
    os.chmod(path, 0o644)
    with pytest.raises(audit_integrity.AuditKeyError, match="0600"):
        audit_integrity.load_or_create_checkpoint_key(tmp_path)


def test_store_hook_signs_every_n_rows(store, tmp_path):
    hook = audit_integrity.install(store, tmp_path, every=10)
    for _ in range(25):
        fill(store, 1)
    cps = store.read_sync(audit_integrity._checkpoints)
    assert [c.seq for c in cps] == [10, 20]
    assert store.read_sync(
        lambda db: db.execute("SELECT key_id FROM audit_keys").fetchone()[0]
    ) == audit_integrity.key_id(hook.key.public_key())
    assert verify(store, tmp_path).checkpoints == 2


def test_retired_key_still_verifies_old_checkpoints(store, tmp_path):
    old = audit_integrity.load_or_create_checkpoint_key(tmp_path / "old")
    fill(store, 3)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, old))
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    assert broken(store, tmp_path).context["why"] == "unknown key"
    (tmp_path / "keys" / "audit-ed25519-2023.pub").write_text(
        audit_integrity.public_pem(old.public_key())
    )
    assert verify(store, tmp_path).checkpoints == 1


# -- retention ------------------------------------------------------------------------------


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_purge_keeps_the_rest_verifiable_and_records_itself(store, key, tmp_path):
    fill(store, 12)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    last_old = store.read_sync(
        lambda db: db.execute("SELECT recorded_at FROM audit_events WHERE seq = 12").fetchone()[0]
    )
    _time.sleep(0.01)
    fill(store, 5)
    now = _moment(last_old) + timedelta(milliseconds=1)
    now = now.replace(year=now.year + 5)
    result = store.write_sync(
        lambda db: audit_retention.purge(db, SYSTEM, key, now=now, retention_years=5)
    )
    assert result is not None
    assert (result.first_seq, result.last_seq, result.rows) == (1, 12, 12)
    report = verify(store, tmp_path)
    assert (report.first_seq, report.anchor_seq, report.rows) == (13, 12, 6)
    purge_row = store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, action, object_id FROM audit_events WHERE seq = ?",
            [result.event_seq],
        ).fetchone()
    )
    assert purge_row == ("audit.purge", "D", "12")
    # The triggers are back: the purge lifted them only inside its own transaction.
    with pytest.raises(sqlite3.IntegrityError):
        store.write_sync(lambda db: db.execute("DELETE FROM audit_events"))
    # A second purge with nothing due does nothing.
    assert (
        store.write_sync(
            lambda db: audit_retention.purge(db, SYSTEM, key, now=now, retention_years=5)
        )
        is None
    )
    fill(store, 2)
    assert verify(store, tmp_path).rows == 8


def test_purge_of_everything_restarts_from_the_anchor(store, key, tmp_path):
    fill(store, 4)
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 6)
    store.write_sync(
        lambda db: audit_retention.purge(db, SYSTEM, key, now=later, retention_years=5)
    )
    report = verify(store, tmp_path)
    assert (report.anchor_seq, report.first_seq, report.rows) == (4, 5, 1)


def test_purge_leaves_young_rows_alone(store, key):
    fill(store, 4)
    assert (
        store.write_sync(
            lambda db: audit_retention.purge(
                db, SYSTEM, key, now=datetime.now(UTC), retention_years=5
            )
        )
        is None
    )
    assert store.read_sync(chain_alone).rows == 4


def test_rows_removed_outside_a_purge_with_a_forged_anchor_are_caught(store, key, tmp_path):
    fill(store, 10)
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key, kind="periodic"))
    fill(store, 3)
    conn = raw(store)
    head10 = conn.execute("SELECT row_hash FROM audit_events WHERE seq = 10").fetchone()[0]
    conn.execute("DELETE FROM audit_events WHERE seq <= 10")
    conn.execute("INSERT INTO audit_anchor VALUES (10, ?, 1, ?, ?, 10)", [head10, NOW, NOW])
    err = broken(store, tmp_path)
    assert (err.context["seq"], err.context["why"]) == (11, "anchor")


def test_retention_cutoff_is_calendar_years():
    assert (
        audit_retention.retention_cutoff(_moment("2029-03-01T12:00:00.000Z"), 5)
        == "2024-03-01T12:00:00.000Z"
    )
    assert (
        audit_retention.retention_cutoff(_moment("2028-02-29T00:00:00.000Z"), 5)
        == "2023-02-28T00:00:00.000Z"
    )


# -- scope: an officer sees their own organisation's rows only ---------------------------------


def test_officer_sees_only_own_organisation(world):
    store, a = world
    store.write_sync(
        lambda db: (
            send(db, a["gp_a"], BSN, when=at(2)),
            send(db, a["gp_c"], BSN, when=at(3), team="x@elders.example"),
        )
    )
    start, end = at(1), at(20)

    def report(officer):
        return store.write_sync(
            lambda db: audit_report.disclosure_report(db, a[officer], BSN, start, end)
        )

    rows_a = report("po_a").rows
    assert {r["sender_org"] for r in rows_a} == {PRACTICE_A}
    assert len(rows_a) == 2
    assert {r["sender_org"] for r in report("po_c").rows} == {PRACTICE_C}
    # The receiving organisation sees what was sent to its team, not C's send elsewhere.
    rows_b = report("po_b").rows
    assert [r["recipient_org"] for r in rows_b] == [TEAM_B, TEAM_B]


def test_scope_applies_to_every_query(world):
    store, a = world
    store.write_sync(
        lambda db: (
            send(db, a["gp_a"], BSN, when=at(2)),
            send(
                db,
                a["gp_c"],
                BSN_2,
                when=at(2),
                team="x@elders.example",
                outcome="refused",
                detail="consent.missing",
            ),
            audit.record(
                db,
                AuditEvent.of(
                    a["gp_c"],
                    "request.fail",
                    patient_id=BSN_2,
                    sender_org=PRACTICE_C,
                    occurred_at=at(2, 11),
                ),
            ),
        )
    )
    start, end = at(1), at(20)
    po = a["po_a"]

    def q(fn, *args):
        return store.write_sync(lambda db: fn(db, po, *args))

    assert all(
        r["org_id"] != PRACTICE_C
        for r in q(audit_report.user_activity, a["gp_c"].user_id, start, end).by_patient
    )
    assert q(audit_report.user_activity, a["gp_c"].user_id, start, end).total == 0
    assert q(audit_report.exceptions, start, end).refusals == []
    assert q(audit_report.delivery_failures, start, end) == []
    assert [(v.sender, v.receiver) for v in q(audit_report.volume_by_org_pair, start, end)] == [
        (PRACTICE_A, NURSING_B)
    ]
    assert q(audit_report.user_activity, a["gp_a"].user_id, start, end).total == 2
    assert q(audit_review.breach_scope, start, end, _moment(at(20))).patient_ids == [BSN]


def test_reading_the_trail_leaves_a_row(world):
    store, a = world
    store.write_sync(lambda db: send(db, a["gp_a"], BSN, when=at(2)))
    report = store.write_sync(
        lambda db: audit_report.disclosure_report(db, a["po_a"], BSN, at(1), at(20))
    )
    row = store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, user_name, patient_id, object_type, object_id, outcome_detail "
            "FROM audit_events WHERE seq = ?",
            [report.view_seq],
        ).fetchone()
    )
    assert row[:5] == ("audit.view", "po_a", BSN, "audit", "disclosure")
    assert BSN not in row[5]
    # The officer's own reading now shows in the patient's disclosure report.
    again = store.write_sync(
        lambda db: audit_report.disclosure_report(
            db, a["po_a"], BSN, at(1), "2099-01-01T00:00:00.000Z"
        )
    )
    assert "audit.view" in {r["event_code"] for r in again.rows}


def test_refusal_is_403_and_leaves_access_denied(world):
    store, a = world
    gp = a["gp_a"]
    with pytest.raises(AccessDeniedError):
        audit_report.run_sync(
            store,
            gp,
            "audit.view",
            lambda db: audit_report.disclosure_report(db, gp, BSN, at(1), at(20)),
            what="disclosure",
        )
    row = store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, outcome, user_name, outcome_detail FROM audit_events "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    )
    assert row == ("access.denied", "refused", "gp_a", "audit.view: access.denied")
    assert AccessDeniedError.http_status == 403


def test_refused_send_is_listed_with_its_reason(world):
    store, a = world
    store.write_sync(
        lambda db: send(db, a["gp_a"], BSN, when=at(2), outcome="refused", detail="consent.missing")
    )
    exc = store.write_sync(lambda db: audit_report.exceptions(db, a["po_a"], at(1), at(20)))
    assert [(r["event_code"], r["outcome_detail"]) for r in exc.refusals] == [
        ("request.send", "consent.missing")
    ]


def test_exceptions_find_each_kind(world):
    store, a = world
    gp = a["gp_a"]

    def events(db):
        audit.record(
            db,
            AuditEvent.of(
                SYSTEM,
                "request.stop",
                patient_id=BSN,
                sender_org=PRACTICE_A,
                recipient_org=TEAM_B,
                outcome_detail="consent.withdrawn",
                occurred_at=at(10),
            ),
        )
        audit.record(
            db,
            AuditEvent.of(
                gp,
                "request.view",
                patient_id=BSN,
                nature="emergency",
                purpose="ETREAT",
                emergency_reason="reanimatie",
                occurred_at=at(10),
            ),
        )
        audit.record(
            db,
            AuditEvent.of(
                gp,
                "auth.fail",
                outcome="refused",
                outcome_detail="bad password",
                occurred_at=at(10),
            ),
        )
        audit.record(
            db, AuditEvent.of(gp, "request.view", patient_id=BSN_2, occurred_at=at(10, 1, 30))
        )  # 03:30 in Amsterdam
        for day in range(1, 10):  # baseline: one a day
            audit.record(db, AuditEvent.of(gp, "request.list", patient_id=BSN, occurred_at=at(day)))
        for i in range(30):  # then thirty in one day
            audit.record(
                db, AuditEvent.of(gp, "request.view", patient_id=BSN, occurred_at=at(10, 12, i))
            )

    store.write_sync(events)
    exc = store.write_sync(
        lambda db: audit_report.exceptions(
            db, a["po_a"], at(10, 0), at(11, 0), working_hours="07:00-19:00"
        )
    )
    assert [r["outcome_detail"] for r in exc.consent_stops] == ["consent.withdrawn"]
    assert [r["emergency_reason"] for r in exc.emergencies] == ["reanimatie"]
    assert [r["user_name"] for r in exc.failed_logins] == ["gp_a"]
    assert [r["patient_id"] for r in exc.outside_hours] == [BSN_2]
    assert [(x.user_name, x.count) for x in exc.anomalies] == [("gp_a", 32)]
    assert exc.anomalies[0].baseline_daily_median == 0  # 9 active days of 30
    assert exc.refusals == []


# -- reports, reviews and exports -----------------------------------------------------------


def test_disclosure_report_rejects_a_bad_bsn_without_repeating_it(world):
    store, a = world
    with pytest.raises(InputError) as info:
        store.write_sync(
            lambda db: audit_report.disclosure_report(db, a["po_a"], "123456789", at(1), at(2))
        )
    assert "123456789" not in info.value.reason


def test_period_is_local_days_in_utc():
    assert audit_report.parse_period("2024-05-01", "2024-05-31") == (
        "2024-04-30T22:00:00.000Z",
        "2024-05-31T22:00:00.000Z",
    )
    with pytest.raises(InputError):
        audit_report.parse_period("2024-06-01", "2024-05-01")


def test_review_sign_off_records_who_what_and_findings(world):
    store, a = world
    review = store.write_sync(
        lambda db: audit_review.sign_off(
            db,
            a["po_a"],
            kind="disclosure",
            start=at(1),
            end=at(20),
            bsn=BSN,
            outcome="findings",
            findings="GP viewed without a request; asked for an explanation",
        )
    )
    listed = store.write_sync(lambda db: audit_review.list_reviews(db, a["po_a"]))
    assert [r.id for r in listed] == [review.id]
    assert listed[0].reviewer_name == "PO_A" and BSN not in listed[0].subject
    event = store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, patient_id, object_id FROM audit_events WHERE seq = ?",
            [review.audit_seq],
        ).fetchone()
    )
    assert event == ("audit.review", BSN, str(review.id))
    assert store.write_sync(lambda db: audit_review.list_reviews(db, a["po_c"])) == []
    with pytest.raises(InputError):
        store.write_sync(
            lambda db: audit_review.sign_off(
                db,
                a["po_a"],
                kind="disclosure",
                start=at(1),
                end=at(2),
                outcome="findings",
                findings="",
            )
        )


def test_integrity_status_reports_checkpoint_and_last_verification(world, key, tmp_path):
    store, a = world
    store.write_sync(lambda db: audit_integrity.checkpoint(db, key))
    report = verify(store, tmp_path)
    store.write_sync(
        lambda db: audit_review.record_verification(db, SYSTEM, ok=True, detail=report.summary())
    )
    status = store.write_sync(
        lambda db: audit_review.integrity_status(db, a["po_a"], trusted(tmp_path))
    )
    assert status.checkpoint_ok is True and status.problems == []
    assert status.last_verify["outcome"] == "success"
    assert status.unsigned_rows == 1  # the audit.verify row itself


def test_exports_csv_and_fhir(world):
    store, a = world
    store.write_sync(lambda db: send(db, a["gp_a"], BSN, when=at(2)))
    scope = store.write_sync(
        lambda db: audit_export.begin_export(db, a["po_a"], "csv", at(1), at(20))
    )
    buf = io.StringIO()
    n = store.read_sync(
        lambda db: audit_export.write_csv(audit_export.export_rows(db, scope, at(1), at(20)), buf)
    )
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert n == len(rows) == 2 and rows[0]["patient_id"] == BSN and rows[0]["row_hash"]
    out = io.StringIO()
    store.read_sync(
        lambda db: audit_export.write_fhir(
            audit_export.export_rows(db, scope, at(1), at(20)), out, audit_export.org_kinds(db)
        )
    )
    ev = json.loads(out.getvalue().splitlines()[1])
    assert ev["resourceType"] == "AuditEvent" and ev["action"] == "E" and ev["outcome"] == "0"
    assert ev["subtype"][0]["code"] == "request.send"
    assert ev["entity"][0]["what"]["identifier"] == {
        "system": audit_export.BSN_SYSTEM,
        "value": BSN,
    }
    assert ev["agent"][1]["who"]["identifier"]["system"] == audit_export.AGB_SYSTEM
    assert ev["source"]["observer"]["display"] == "gateway-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ev["recorded"])
    exported = store.read_sync(
        lambda db: db.execute(
            "SELECT count(*) FROM audit_events WHERE event_code = 'audit.export'"
        ).fetchone()[0]
    )
    assert exported == 1


def test_disclosure_pdf_and_csv(world):
    store, a = world
    gp = a["gp_a"]
    store.write_sync(
        lambda db: (
            send(db, gp, BSN, when=at(2)),
            audit.record(
                db,
                AuditEvent.of(
                    gp, "request.view", patient_id=BSN, user_name="Zoë Ŋgo 医生", occurred_at=at(3)
                ),
            ),
        )
    )
    report = store.write_sync(
        lambda db: audit_report.disclosure_report(db, a["po_a"], BSN, at(1), at(20), export="pdf")
    )
    pdf = audit_export.disclosure_pdf(report)
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    buf = io.StringIO()
    assert audit_export.disclosure_csv(report, buf) == 3
    assert buf.getvalue().splitlines()[0].startswith("Datum en tijd,Handeling")
    assert "verzoek verzonden" in buf.getvalue()


# -- indexes ---------------------------------------------------------------------------------


def _plan(store, sql, params):
    return " | ".join(
        r[3]
        for r in store.read_sync(
            lambda db: db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        )
    )


def test_queries_use_indexes(world):
    store, a = world
    scope = store.read_sync(lambda db: audit_report.scope_for(db, a["po_b"]))
    where, params = scope.where("e", at(1), at(2))
    plan = _plan(store, f"SELECT e.seq FROM audit_events e WHERE {where}", params)  # noqa: S608
    for index in ("audit_org", "audit_sender", "audit_recipient"):
        assert f"USING INDEX {index}" in plan
    assert "SCAN" not in plan
    where, params = scope.where()
    plan = _plan(
        store,
        "SELECT e.seq FROM audit_events e INDEXED BY audit_patient "  # noqa: S608
        f"WHERE e.patient_id = ? AND e.occurred_at >= ? AND {where}",
        [BSN, at(1), *params],
    )
    assert "USING INDEX audit_patient (patient_id=? AND occurred_at>?)" in plan


# -- the command line ------------------------------------------------------------------------


def cli(capsys, *argv):
    """Run `securemail audit ...` (the real entry point); (status, stdout, stderr)."""
    from securemail.cli import main

    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_verify_prints_rate_and_names_the_bad_row(world, tmp_path, capsys):
    store, a = world
    home = str(tmp_path)
    assert cli(capsys, "audit", "checkpoint", "--home", home)[0] == 0
    status, out, _ = cli(capsys, "audit", "verify", "--home", home)
    assert status == 0
    assert re.search(r"verified \d+ rows and 1 checkpoints in [\d.]+ s \([\d,]+ rows/s\)", out)
    raw(store).execute("UPDATE audit_events SET user_role = 'admin' WHERE seq = 3")
    status, out, err = cli(capsys, "audit", "verify", "--home", home)
    assert status == 1
    assert "row 3 was altered" in err and "seq=3" in err
    last = store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, outcome FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    )
    assert last == ("audit.verify", "error")


def test_cli_patient_report_is_scoped_and_audited(world, tmp_path, capsys):
    store, a = world
    store.write_sync(lambda db: send(db, a["gp_a"], BSN, when=at(2)))
    home = str(tmp_path)
    status, out, _ = cli(
        capsys,
        "audit",
        "patient",
        BSN,
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-31",
        "--json",
        "--as",
        "po_a",
        "--home",
        home,
    )
    assert status == 0
    data = json.loads(out)
    assert [e["event_code"] for e in data["events"]] == ["request.create", "request.send"]
    status, out, _ = cli(
        capsys, "audit", "patient", BSN, "--from", "2024-05-01", "--as", "po_c", "--home", home
    )
    assert status == 0 and out.startswith("0 events")
    status, _, err = cli(capsys, "audit", "patient", BSN, "--as", "gp_a", "--home", home)
    assert status == 1 and "access.denied" in err
    assert BSN not in err


def test_cli_export_csv_and_fhir(world, tmp_path, capsys):
    store, a = world
    store.write_sync(lambda db: send(db, a["gp_a"], BSN, when=at(2)))
    home, target = str(tmp_path), tmp_path / "out.csv"
    status, _, err = cli(
        capsys,
        "audit",
        "export",
        "--format",
        "csv",
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-31",
        "--as",
        "po_a",
        "--output",
        str(target),
        "--home",
        home,
    )
    assert status == 0 and "exported 2 rows" in err
    assert len(list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))) == 2
    status, out, _ = cli(
        capsys,
        "audit",
        "export",
        "--format",
        "fhir",
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-31",
        "--as",
        "po_b",
        "--home",
        home,
    )
    assert status == 0
    assert [json.loads(line)["subtype"][0]["code"] for line in out.splitlines()] == [
        "request.create",
        "request.send",
    ]


def test_cli_purge_dry_run_checkpoint_key_and_codes(world, tmp_path, capsys):
    home = str(tmp_path)
    status, out, _ = cli(capsys, "audit", "purge", "--dry-run", "--home", home)
    assert status == 0 and out.startswith("0 rows recorded before")
    status, out, _ = cli(capsys, "audit", "purge", "--home", home)
    assert status == 0 and out.startswith("nothing recorded before")
    status, out, _ = cli(capsys, "audit", "key", "--home", home)
    assert "BEGIN PUBLIC KEY" in out
    status, out, _ = cli(capsys, "audit", "codes", "--home", home)
    # A starting point for docs/audit-actions.md (tests/test_docs.py checks the doc itself).
    assert all(f"| `{code}` | {action} |" in out for code, (action, _) in audit.EVENT_CODES.items())


def test_the_store_knows_the_gateways_source_id_and_refuses_another(tmp_path: Path) -> None:
    # The audit row's source_id comes from the store (the gateway's [gateway] source_id): a
    # caller that passes none gets it, a caller that passes another one is refused.
    from securemail.home import MIGRATIONS as HOME_MIGRATIONS
    from securemail.store import open_store as open_with

    s = open_with(tmp_path / "db", HOME_MIGRATIONS, source_id="huisartsenpost-7")
    try:
        event = AuditEvent.of(SYSTEM, "gateway.init", object_type="key", object_id="x")
        s.write_sync(lambda db: audit.record(db, event))
        s.write_sync(lambda db: audit.record(db, event, source_id="huisartsenpost-7"))
        with pytest.raises(audit.AuditError, match="not this gateway's"):
            s.write_sync(lambda db: audit.record(db, event, source_id="gateway-1"))
        sources = s.read_sync(
            lambda db: [r[0] for r in db.execute("SELECT source_id FROM audit_events")]
        )
        assert sources == ["huisartsenpost-7", "huisartsenpost-7"]
    finally:
        s.close()


def test_review_sign_off_keeps_only_a_keyed_hash_of_the_bsn(world, tmp_path):
    """A plain SHA-256 over the parameters is reversed by trying every BSN; the keyed hash
    is not, without the home's secrets.key (which a copy of the database lacks)."""
    import hashlib
    import json

    store, a = world
    review = store.write_sync(
        lambda db: audit_review.sign_off(
            db, a["po_a"], kind="disclosure", start=at(1), end=at(20), bsn=BSN,
            outcome="no_findings", findings="",
        )
    )  # fmt: skip
    stored = store.read_sync(
        lambda db: db.execute(
            "SELECT params_hash FROM audit_reviews WHERE id = ?", [review.id]
        ).fetchone()[0]
    )
    assert stored.startswith("hmac:")
    body = json.dumps(
        {"kind": "disclosure", "start": at(1), "end": at(20), "subject": "", "bsn": BSN},
        sort_keys=True,
        separators=(",", ":"),
    )
    plain = hashlib.sha256(b"securemail.audit.trail.review.v1\x00" + body.encode()).hexdigest()
    assert plain not in stored  # the old, guessable form is gone
    assert BSN not in stored
    # the same parameters give the same hash in this home (a reader can match a report)
    again = store.read_sync(
        lambda db: audit_review.params_hash(db, "disclosure", at(1), at(20), "", BSN)
    )
    assert again == stored
