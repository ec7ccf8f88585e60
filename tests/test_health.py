"""Availability from recorded health checks (a real sqlite store), and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail import logsetup
from securemail.home import open_store
from securemail.ops import health
from securemail.ops.health import CheckResult, HealthReport

T0 = 1_800_000_000.0  # a fixed epoch; the clock is a parameter (style.md section 4)


def report(at: float, ok: bool = True) -> HealthReport:
    return HealthReport(
        (
            CheckResult("database", True, "fine"),
            CheckResult("relay", ok, "fine" if ok else "relay unreachable"),
        ),
        at,
    )


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "h.db")
    yield s
    s.close()


def record_every(
    store, start: float, end: float, step: float = 60.0, failing: tuple[float, float] | None = None
) -> None:
    def tx(db):
        t = start
        while t < end:
            ok = not (failing and failing[0] <= t < failing[1])
            health.record(db, report(t, ok), step)
            t += step

    store.write_sync(tx)


def test_availability_is_100_percent_when_every_check_passed(store) -> None:
    record_every(store, T0, T0 + 3600)
    a = store.read_sync(lambda db: health.availability(db, T0 + 3600, 30))
    assert a.checks == 60
    assert a.failed_checks == 0
    assert a.percent == pytest.approx(100.0)
    assert a.since == T0  # a young installation is measured from its first check
    assert a.longest_outage_seconds == pytest.approx(0.0)


def test_failed_checks_count_as_unavailable(store) -> None:
    record_every(store, T0, T0 + 3600, failing=(T0 + 600, T0 + 900))  # 5 failed checks
    a = store.read_sync(lambda db: health.availability(db, T0 + 3600, 30))
    assert a.failed_checks == 5
    assert a.percent == pytest.approx(100 * 3300 / 3600)
    assert a.down_seconds == pytest.approx(300)
    assert a.longest_outage_seconds == pytest.approx(300)


def test_time_nobody_checked_counts_as_unavailable(store) -> None:
    # The server was down for 20 minutes: nothing recorded then.
    record_every(store, T0, T0 + 1200)
    record_every(store, T0 + 2400, T0 + 3600)
    a = store.read_sync(lambda db: health.availability(db, T0 + 3600, 30))
    # the last check before the gap (at 1140 s) vouches for at most 2 intervals: to 1260 s
    covered = 1260 + 1200
    assert a.percent == pytest.approx(100 * covered / 3600)
    assert a.unmonitored_seconds == pytest.approx(3600 - covered)
    assert a.longest_outage_seconds == pytest.approx(2400 - 1260)


def test_window_starts_at_its_start_when_older_checks_exist(store) -> None:
    record_every(store, T0, T0 + 40 * 86400, step=3600)
    a = store.read_sync(lambda db: health.availability(db, T0 + 40 * 86400, 30))
    assert a.since == T0 + 10 * 86400
    assert a.percent == pytest.approx(100.0)
    assert a.checks == 30 * 24


def test_no_checks_is_not_a_percentage(store) -> None:
    a = store.read_sync(lambda db: health.availability(db, T0, 30))
    assert a.percent is None


def test_purge_keeps_only_the_retention(store) -> None:
    record_every(store, T0, T0 + 10 * 86400, step=86400)
    gone = store.write_sync(lambda db: health.purge(db, T0 + 10 * 86400, 5))
    assert gone == 5
    assert store.read_sync(lambda db: db["health_checks"].count) == 5


def reference_availability(
    rows: list[tuple[float, bool, float]], prior: bool, start: float, now: float
) -> tuple[float, float, float]:
    """(up, down, longest outage) the plain way: walk the checks one by one."""
    since = start if prior else rows[0][0]
    up = down = 0.0
    spans = []
    for i, (at, ok, interval) in enumerate(rows):
        following = rows[i + 1][0] if i + 1 < len(rows) else now
        a, b = max(at, since), min(following, at + health.COVER_INTERVALS * interval, now)
        if b <= a:
            continue
        if ok:
            up += b - a
            spans.append((a, b))
        else:
            down += b - a
    longest, cursor = 0.0, since
    for a, b in spans:
        longest, cursor = max(longest, a - cursor), max(cursor, b)
    return up, down, max(longest, now - cursor)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-86400, 86400), st.booleans(), st.sampled_from([30, 60])),
        max_size=40,
        unique_by=lambda x: x[0],
    )
)
def test_availability_in_sql_matches_walking_the_checks(tmp_path_factory, samples) -> None:
    s = open_store(tmp_path_factory.mktemp("h") / "h.db")
    now, days = T0 + 86400, 1  # the window starts at T0; samples before it are "prior"
    try:
        s.write_sync(
            lambda db: [health.record(db, report(T0 + t, ok), iv) for t, ok, iv in samples]
        )
        a = s.read_sync(lambda db: health.availability(db, now, days))
        at = [(T0 + t, ok, float(iv)) for t, ok, iv in samples]  # as stored: T0 + t rounds
        inside = sorted(x for x in at if x[0] >= T0)
        before = sorted(x for x in at if x[0] < T0)
        if not inside:
            assert a.percent is None
            return
        rows = before[-1:] + inside
        up, down, longest = reference_availability(rows, bool(before), T0, now)
        assert a.up_seconds == pytest.approx(up)
        assert a.down_seconds == pytest.approx(down)
        assert a.longest_outage_seconds == pytest.approx(longest)
        assert a.percent is None or 0.0 <= a.percent <= 100.0 + 1e-9  # None: an empty span
        total = a.up_seconds + a.down_seconds + a.unmonitored_seconds
        assert total == pytest.approx(a.span_seconds)
    finally:
        s.close()


def test_healthz_body_names_checks_and_reasons_only() -> None:
    body = report(T0, ok=False).as_json()
    assert body == {
        "status": "fail",
        "checks": {
            "database": {"status": "ok", "reason": "fine"},
            "relay": {"status": "fail", "reason": "relay unreachable"},
        },
    }


def test_json_log_lines_carry_the_fixed_fields_only() -> None:
    buf = io.StringIO()
    handler = logsetup.configure("json", stream=buf, force=True)
    try:
        token = logsetup.request_id.set("abcdef0123456789")
        log = logging.getLogger("securemail.test")
        log.info("delivered %s", "UVZ-1")
        try:
            raise ValueError("secret local value")
        except ValueError:
            log.exception("failed, incident %s", "inc123", extra={"incident": "inc123"})
        logsetup.request_id.reset(token)
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["message"] == "delivered UVZ-1"
    assert lines[0]["request_id"] == "abcdef0123456789"
    assert set(lines[0]) == {"time", "level", "logger", "message", "request_id"}
    assert lines[1]["incident"] == "inc123"
    assert lines[1]["exception"] == "ValueError"
    assert "secret local value" not in buf.getvalue()  # no traceback text in JSON


def test_log_format_setting_is_validated(tmp_path: Path) -> None:
    from securemail import config
    from securemail.errors import ConfigError

    assert (
        config.load(tmp_path, env={"SECUREMAIL_GATEWAY_LOG_FORMAT": "json"}).gateway.log_format
        == "json"
    )
    with pytest.raises(ConfigError, match="log_format"):
        config.load(tmp_path, env={"SECUREMAIL_GATEWAY_LOG_FORMAT": "xml"})


def test_configure_leaves_a_foreign_handler_alone_unless_forced() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    saved = list(root.handlers)
    for h in saved:
        root.removeHandler(h)
    root.addHandler(foreign)
    try:
        assert logsetup.configure("json") is None  # like logging.basicConfig
        assert root.handlers == [foreign]
        ours = logsetup.configure("json", force=True)
        again = logsetup.configure("text", force=True)  # replaces its own, keeps the foreign
        assert root.handlers == [foreign, again]
        assert ours not in root.handlers
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
