"""Health of one gateway (database, gpg, relay), its record, and availability measured from it.

Invariants:
- a check result says ``ok`` or ``fail`` with a short English reason that names the part and
  what is wrong, never a path, a host, a version or anything about a patient (the result is
  served without login on /healthz);
- the gpg and relay checks are cached (``[monitoring] gpg_cache_seconds`` and
  ``relay_cache_seconds``) and concurrent callers share one probe, so a load balancer
  polling /healthz cannot hammer gpg or the relay; every probe has a time limit;
- the relay check never sends an envelope command and never authenticates: connect, EHLO,
  STARTTLS (or implicit TLS) with a verified certificate, QUIT;
- the server records one row per periodic check in ``health_checks`` (not the audit trail:
  no person and no patient is involved), kept ``[monitoring] health_retention_days``;
  availability counts only time covered by an ok check as available: a failed check *and*
  time nobody checked (the server was down) count against it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlite_utils
from sqlite_utils import Migrations

from securemail.config import MonitoringSettings, Settings
from securemail.errors import SecuremailError
from securemail.openpgp.keyinfo import unusable_signer_reason
from securemail.store import get_meta

if TYPE_CHECKING:  # the store imports this module for its migrations: keep that light
    from securemail.services import Services

log = logging.getLogger("securemail.health")

CHECKS = ("database", "gpg", "relay")
#: Longest a database read may take before the check calls the database unhealthy.
DATABASE_TIMEOUT_SECONDS = 5.0
#: A recorded check vouches for at most this many of its intervals (a missed beat or two
#: is jitter; beyond that nobody was checking: the server was down).
COVER_INTERVALS = 2.0
WINDOWS_DAYS = (30, 90, 365)

MIGRATIONS = Migrations("securemail.health")


@MIGRATIONS(name="0001_health_checks")
def _m1(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE health_checks (
            id INTEGER PRIMARY KEY,
            checked_at REAL NOT NULL,
            ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
            failed TEXT NOT NULL DEFAULT '',
            interval_seconds REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX health_checks_at ON health_checks (checked_at)")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, ok or not, and why (short English, nothing an attacker can use).
    ``facts`` holds what the NTA declaration reports (negotiated TLS version); never served."""

    name: str
    ok: bool
    reason: str
    facts: tuple[tuple[str, str], ...] = ()

    @property
    def status(self) -> str:
        return "ok" if self.ok else "fail"


@dataclass(frozen=True, slots=True)
class HealthReport:
    checks: tuple[CheckResult, ...]
    checked_at: float  # epoch seconds

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.ok)

    def as_json(self) -> dict[str, Any]:
        """The /healthz body: overall status and each check's status and reason."""
        return {
            "status": "ok" if self.ok else "fail",
            "checks": {c.name: {"status": c.status, "reason": c.reason} for c in self.checks},
        }


# -- the checks -------------------------------------------------------------------------------


async def check_database(svc: Services) -> CheckResult:
    """A read through the store's reader, and no migration pending."""

    def probe(db: sqlite_utils.Database) -> list[str]:
        db.execute("SELECT count(*) FROM meta").fetchone()
        return [p.name for m in svc.store.migration_sets for p in m.pending(db)]

    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            pending = await svc.store.read(probe)
    except TimeoutError:
        return CheckResult("database", False, "database read timed out")
    except sqlite3.Error:
        return CheckResult("database", False, "database cannot be read")
    if pending:
        return CheckResult(
            "database", False, f"database schema is not current ({len(pending)} pending)"
        )
    if not await database_writable(svc):
        return CheckResult("database", False, "database unwritable (disk full?)")
    return CheckResult("database", True, "database readable and writable, schema current")


class _ProbeWritten(Exception):
    """Raised inside the probe's write so that it is rolled back: nothing stays."""


#: The write probe's size: more than a page, so a full disk (or page limit) cannot hide it
#: in a free page.
PROBE_BYTES = 16 * 1024


async def database_writable(svc: Services) -> bool:
    """A small write that is rolled back: False when the database cannot grow (disk full)."""

    def probe(db: sqlite_utils.Database) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('health.write_probe', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            ["x" * PROBE_BYTES],
        )
        raise _ProbeWritten

    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            await svc.store.write(probe)
    except _ProbeWritten:
        return True
    except (TimeoutError, sqlite3.Error):
        return False
    return False


async def check_gpg(svc: Services) -> CheckResult:
    """gpg answers a fresh listing of the gateway's secret key, that key may sign, and the
    last decrypt (a reply) did not fail on gpg's side."""
    try:
        fpr = await svc.store.read(lambda db: get_meta(db, "gateway_fingerprint"))
    except sqlite3.Error:
        return CheckResult("gpg", False, "gateway key unknown (database cannot be read)")
    if not fpr:
        return CheckResult("gpg", False, "gateway has no key (run securemail init)")
    try:
        info = await svc.keyring.probe_secret(fpr)
    except SecuremailError:
        return CheckResult("gpg", False, "gpg does not answer")
    if info is None:
        return CheckResult("gpg", False, "gateway secret key missing from the keyring")
    if svc.keyring.decrypt_fault is not None:  # the reply listener answers 451 meanwhile
        return CheckResult("gpg", False, "gpg failed decrypting the last reply (sender retries)")
    why = unusable_signer_reason(info, datetime.now(UTC))
    if why is not None:
        return CheckResult("gpg", False, f"gateway key unusable ({why})")
    return CheckResult("gpg", True, "gpg answers, gateway key usable")


async def check_relay(settings: Settings) -> CheckResult:
    """TCP connect, EHLO, STARTTLS offered and a verified TLS session; then QUIT."""
    import aiosmtplib

    from securemail.delivery import relay

    s = settings.smtp
    implicit = s.starttls == "implicit"
    try:
        ctx = relay.tls_context(settings)
    except SecuremailError:
        return CheckResult("relay", False, "relay CA bundle cannot be read")
    client = aiosmtplib.SMTP(
        hostname=s.host, port=s.port, timeout=s.timeout_seconds, use_tls=implicit,
        start_tls=not implicit, validate_certs=True, tls_context=ctx,
    )  # fmt: skip
    try:
        async with asyncio.timeout(s.timeout_seconds + 1):
            await client.connect()
            sslobj = client.get_transport_info("ssl_object")
            version = sslobj.version() if sslobj is not None else None
            if version is None:  # defence in depth, as relay.connect
                relay.discard(client)
                return CheckResult("relay", False, "relay session is not TLS-protected")
            await relay.goodbye(client)
    except BaseException as exc:
        relay.discard(client)
        if isinstance(exc, asyncio.CancelledError):
            raise
        if not isinstance(exc, Exception):
            raise
        return CheckResult("relay", False, _relay_reason(exc))
    how = "implicit TLS" if implicit else "STARTTLS"
    return CheckResult(
        "relay",
        True,
        f"relay reachable, {how} with a verified certificate",
        facts=(("tls_version", str(version)),),
    )


def _relay_reason(exc: Exception) -> str:
    """Why the relay check failed, in words that name no host, port or library."""
    import aiosmtplib

    cause: BaseException | None = exc
    for _ in range(5):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "relay certificate is not trusted"
        if isinstance(cause, ssl.SSLError):
            return "relay TLS handshake failed"
        if cause is None:
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return "relay timed out"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"relay answered {int(exc.code)} during session set-up"
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in exc.message.upper():
        return "relay does not offer STARTTLS"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "relay closed the connection"
    return "relay unreachable"


# -- the cached monitor of one process ---------------------------------------------------------


class _Cached:
    """One check's last result, reused for ``ttl`` seconds; concurrent callers share a probe."""

    def __init__(
        self, probe: Callable[[], Awaitable[CheckResult]], ttl: float, clock: Callable[[], float]
    ) -> None:
        self.probe, self.ttl, self.clock = probe, ttl, clock
        self.lock = asyncio.Lock()
        self.result: CheckResult | None = None
        self.at = 0.0

    async def get(self) -> CheckResult:
        async with self.lock:
            now = self.clock()
            if self.result is None or now - self.at >= self.ttl:
                self.result = await self.probe()
                self.at = self.clock()
            return self.result


class Monitor:
    """The health checks of one gateway process (the web app holds one under an AppKey)."""

    def __init__(self, svc: Services, *, clock: Callable[[], float] = time.monotonic) -> None:
        m = svc.settings.monitoring
        self.svc = svc
        self._gpg = _Cached(lambda: check_gpg(svc), m.gpg_cache_seconds, clock)
        self._relay = _Cached(lambda: check_relay(svc.settings), m.relay_cache_seconds, clock)
        self.last: HealthReport | None = None
        self._clock = clock
        self._availability: dict[int, tuple[float, Availability]] = {}

    async def availability(self, days: int) -> Availability:
        """Availability over ``days``, recomputed at most once per check interval (new checks
        arrive no faster; a 30-day window is 43,200 rows a scrape need not re-read)."""
        now = self._clock()
        cached = self._availability.get(days)
        if cached and now - cached[0] < self.svc.settings.monitoring.health_check_seconds:
            return cached[1]
        value = await self.svc.store.read(lambda db: availability(db, time.time(), days))
        self._availability[days] = (now, value)
        return value

    async def report(self) -> HealthReport:
        """Every check: the database afresh (cheap), gpg and the relay from their caches."""
        results = await asyncio.gather(check_database(self.svc), self._gpg.get(), self._relay.get())
        self.last = HealthReport(tuple(results), time.time())
        return self.last


# -- the record and availability --------------------------------------------------------------


def record(db: sqlite_utils.Database, report: HealthReport, interval_seconds: float) -> None:
    """One row per periodic check: when, ok or not, which checks failed (names only)."""
    db.execute(
        "INSERT INTO health_checks (checked_at, ok, failed, interval_seconds) VALUES (?, ?, ?, ?)",
        [report.checked_at, int(report.ok), ",".join(report.failed), interval_seconds],
    )


def purge(db: sqlite_utils.Database, now: float, retention_days: int) -> int:
    """Delete recorded checks older than the retention; returns how many."""
    cur = db.execute(
        "DELETE FROM health_checks WHERE checked_at < ?", [now - retention_days * 86400]
    )
    return int(cur.rowcount or 0)


@dataclass(frozen=True, slots=True)
class Availability:
    """Availability over a window, measured from the recorded checks."""

    days: int
    since: float  # start of the measured span: the window start, or the first check
    until: float
    checks: int
    failed_checks: int
    up_seconds: float
    down_seconds: float  # covered by a failed check
    unmonitored_seconds: float  # covered by no check: the server (or its checks) was down
    longest_outage_seconds: float  # longest span not covered by an ok check

    @property
    def span_seconds(self) -> float:
        return max(self.until - self.since, 0.0)

    @property
    def percent(self) -> float | None:
        if self.checks == 0 or self.span_seconds <= 0:
            return None
        return 100.0 * self.up_seconds / self.span_seconds


#: One pass over the window's checks: each check's covered segment, then the sums and the
#: longest span between ok segments. ``seg`` is used twice, so SQLite materialises it once.
_AVAILABILITY = """
    WITH s AS (
        SELECT checked_at AS t, ok, interval_seconds AS iv,
               LEAD(checked_at, 1, :now) OVER (ORDER BY checked_at) AS nxt
        FROM health_checks WHERE checked_at >= :lo AND checked_at <= :now
    ), seg AS MATERIALIZED (
        SELECT a, b, ok FROM (
            SELECT max(t, :since) AS a, min(nxt, t + :cover * iv, :now) AS b, ok FROM s
        ) WHERE b > a
    ), up AS (
        SELECT a, b, LAG(b) OVER (ORDER BY a) AS pb FROM seg WHERE ok
    )
    SELECT coalesce(sum(CASE WHEN ok THEN b - a ELSE 0 END), 0),
           coalesce(sum(CASE WHEN ok THEN 0 ELSE b - a END), 0),
           (SELECT max(a - coalesce(pb, :since)) FROM up),
           (SELECT max(b) FROM up)
    FROM seg
"""


def availability(db: sqlite_utils.Database, now: float, days: int) -> Availability:
    """Availability over the ``days`` before ``now`` from the recorded checks.

    Each check vouches for the time until the next check, at most COVER_INTERVALS of its
    interval; the span starts at the window start when an earlier check exists (the
    installation is older than the window), else at the first check. Computed in SQL
    (window functions): a scrape covers 43,200 checks for 30 days."""
    start = now - days * 86400
    checks, failed, first = db.execute(
        "SELECT count(*), coalesce(sum(1 - ok), 0), min(checked_at) FROM health_checks "
        "WHERE checked_at >= ? AND checked_at <= ?",
        [start, now],
    ).fetchone()
    if not checks:
        return Availability(days, start, now, 0, 0, 0.0, 0.0, 0.0, 0.0)
    prior = db.execute(
        "SELECT max(checked_at) FROM health_checks WHERE checked_at < ?", [start]
    ).fetchone()[0]
    since = start if prior is not None else float(first)
    params = {
        "now": now,
        "lo": prior if prior is not None else start,
        "since": since,
        "cover": COVER_INTERVALS,
    }
    up, down, gap, last_end = db.execute(_AVAILABILITY, params).fetchone()
    longest = max(float(gap or 0.0), now - float(last_end if last_end is not None else since))
    total = max(now - since, 0.0)
    return Availability(
        days=days, since=since, until=now, checks=int(checks), failed_checks=int(failed),
        up_seconds=float(up), down_seconds=float(down),
        unmonitored_seconds=max(total - float(up) - float(down), 0.0),
        longest_outage_seconds=longest,
    )  # fmt: skip


def _record_and_purge(
    db: sqlite_utils.Database, *, report: HealthReport, settings: MonitoringSettings
) -> None:
    record(db, report, settings.health_check_seconds)
    purge(db, report.checked_at, settings.health_retention_days)


async def run(monitor: Monitor, stop: asyncio.Event) -> None:
    """The periodic check of the web app: check, record, purge old rows; until ``stop``."""
    from securemail.delivery.relay import sleep_or_stop

    svc = monitor.svc
    m = svc.settings.monitoring
    while not stop.is_set():
        try:
            report = await monitor.report()
            await svc.store.write(partial(_record_and_purge, report=report, settings=m))
            if not report.ok:
                log.warning(
                    "health check failed: %s",
                    "; ".join(c.reason for c in report.checks if not c.ok),
                )
        except Exception:
            log.exception("health check could not be recorded")
        await sleep_or_stop(stop, m.health_check_seconds)
