"""Metrics of one gateway in the Prometheus text exposition format (version 0.0.4).

Invariants: every value is a count, an age, a horizon or a 0/1 state; no label carries a
reference, an address, a name, a fingerprint or anything about a patient (labels are fixed
vocabularies: outbox status, outcome, message kind, key kind, check name, window). Values
are read from the database at scrape time, so every process of one home (web app,
separate worker, CLI) is counted; a counter derived from rows (deliveries by outcome) can
drop when retention purges rows, which Prometheus treats as a counter reset.

Written by hand: prometheus_client is not in the package lists (env/packages), and the
format for a dozen on-demand gauges is a few lines (https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlite_utils

from securemail.audit import trail as audit
from securemail.delivery import outbox
from securemail.errors import NotFoundError, SecuremailError
from securemail.keys import foresight as keycheck
from securemail.openpgp.keyinfo import unusable_signer_reason
from securemail.ops import health
from securemail.ops.health import HealthReport
from securemail.region import directory
from securemail.services import Services
from securemail.store import get_meta

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PENDING = ("queued", "sending", "retrying")


@dataclass
class Metric:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Metric:
        self.samples.append((labels, value))
        return self


def _value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition: HELP, TYPE, then one line per sample."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(
                f"{m.name}{{{label}}} {_value(value)}" if label else f"{m.name} {_value(value)}"
            )
    return "\n".join(lines) + "\n"


def _iso_epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _database_metrics(db: sqlite_utils.Database, now: float) -> list[Metric]:
    by_status = outbox.counts_by_status(db)
    queue = Metric(
        "securemail_outbox_messages",
        "gauge",
        "Messages in the outbox by status (queued, sending and retrying are pending).",
    )
    for status, n in by_status.items():
        queue.add(n, status=status)
    deliveries = Metric(
        "securemail_deliveries_total",
        "counter",
        "Messages that reached a final outcome, by outcome and kind.",
    )
    for (o, k), n in outbox.final_counts(db).items():
        deliveries.add(n, outcome=o, kind=k)
    attempts = outbox.total_attempts(db)
    oldest_retry = outbox.oldest_queued_at(db, ("retrying",))
    oldest_pending = outbox.oldest_queued_at(db, outbox.PENDING)
    overdue_requests = db.execute(
        "SELECT count(*) FROM requests WHERE state = 'open' AND overdue_at != ''"
    ).fetchone()[0]
    overdue_asks = db.execute(
        "SELECT count(*) FROM asks WHERE state = 'open' AND overdue_at != ''"
    ).fetchone()[0]
    lo, hi = audit.seq_range(db)
    cp = db.execute(
        "SELECT seq, signed_at FROM audit_checkpoints ORDER BY seq DESC, id DESC LIMIT 1"
    ).fetchone()
    backed_up = audit.last_success_at(db, "gateway.backup")
    verified = audit.latest(db, "audit.verify")
    out = [
        queue, deliveries,
        Metric("securemail_delivery_attempts_total", "counter",
               "Delivery attempts made for the messages in the outbox.").add(int(attempts)),
        Metric("securemail_outbox_oldest_retrying_age_seconds", "gauge",
               "Age of the oldest message waiting for a retry (0 when none).").add(
            max(now - oldest_retry, 0.0) if oldest_retry else 0),
        Metric("securemail_outbox_oldest_pending_age_seconds", "gauge",
               "Age of the oldest message not yet delivered (0 when none).").add(
            max(now - oldest_pending, 0.0) if oldest_pending else 0),
        Metric("securemail_requests_overdue", "gauge",
               "Open requests past their answer deadline (escalated).").add(overdue_requests),
        Metric("securemail_asks_overdue", "gauge",
               "Open asks past their deadline (escalated).").add(overdue_asks),
        Metric("securemail_audit_head_seq", "gauge",
               "Sequence number of the newest audit row.").add(int(hi or 0)),
        Metric("securemail_audit_rows", "gauge", "Audit rows currently kept.").add(
            hi - lo + 1 if hi is not None and lo is not None else 0),
        Metric("securemail_audit_unsigned_rows", "gauge",
               "Audit rows after the last signed checkpoint.").add(
            int(hi or 0) - int(cp[0]) if cp else int(hi or 0)),
    ]  # fmt: skip
    if cp:
        out.append(
            Metric(
                "securemail_audit_checkpoint_age_seconds",
                "gauge",
                "Seconds since the last signed checkpoint of the audit chain.",
            ).add(max(now - _iso_epoch(cp[1]), 0.0))
        )
    if backed_up:
        out.append(
            Metric("securemail_backup_last_success_timestamp_seconds", "gauge",
                   "When the last successful `securemail backup` finished (Unix time).")
            .add(_iso_epoch(backed_up))
        )  # fmt: skip
    if verified:
        out.append(
            Metric(
                "securemail_audit_last_verify_ok",
                "gauge",
                "1 when the last full verification of the audit chain succeeded.",
            ).add(1 if verified[0] == "success" else 0)
        )
        out.append(
            Metric(
                "securemail_audit_last_verify_timestamp_seconds",
                "gauge",
                "When the audit chain was last verified (Unix time).",
            ).add(_iso_epoch(verified[1]))
        )
    return out


async def _key_metrics(svc: Services, now: datetime) -> list[Metric]:
    foresight = await keycheck.foresee(svc, now=now)
    teams = await svc.store.read(lambda db: [t.address for t in directory.list_teams(db)])
    usable_team_keys = [k for k in foresight.keys if k.kind == "team" and k.why is None]
    served = {k.owner for k in usable_team_keys}
    ends = [k.usable_until for k in usable_team_keys if k.usable_until is not None]
    team_days = min((e - now).total_seconds() for e in ends) / 86400 if ends else math.inf
    if not usable_team_keys:
        team_days = 0.0
    horizon = Metric(
        "securemail_key_expiry_horizon_days",
        "gauge",
        "Days until the first usable team key or the gateway key stops being "
        "usable (+Inf: no end; 0: none usable).",
    )
    horizon.add(round(team_days, 3), kind="team")
    fpr = await svc.store.read(lambda db: get_meta(db, "gateway_fingerprint"))
    gw_days = 0.0
    if fpr:
        try:
            info = await svc.keyring.key_info(fpr)
        except NotFoundError:
            info = None
        if info is not None and unusable_signer_reason(info, now) is None:
            gw_days = (info.expires - now).total_seconds() / 86400 if info.expires else math.inf
    horizon.add(round(gw_days, 3), kind="gateway")
    return [
        horizon,
        Metric("securemail_teams_without_usable_key", "gauge",
               "Teams with no usable pinned member key now (requests to them are refused)."
               ).add(sum(1 for t in teams if t not in served)),
        Metric("securemail_teams_at_risk", "gauge",
               f"Teams without a key usable {keycheck.RISK_DAYS} days from now."
               ).add(len(foresight.at_risk)),
    ]  # fmt: skip


def _health_metrics(report: HealthReport, avail: health.Availability) -> list[Metric]:
    m = Metric(
        "securemail_health_check_ok",
        "gauge",
        "1 when the health check passed (cached results, as /healthz).",
    )
    for c in report.checks:
        m.add(1 if c.ok else 0, check=c.name)
    out = [m]
    if avail.percent is not None:
        out.append(
            Metric(
                "securemail_availability_ratio",
                "gauge",
                "Share of the window covered by an ok recorded health check.",
            ).add(round(avail.percent / 100, 6), window=f"{avail.days}d")
        )
    return out


async def collect(svc: Services, monitor: health.Monitor) -> list[Metric]:
    """Every metric, as of now, with the monitor's (cached) health checks and availability."""
    now = time.time()
    report = await monitor.report()
    db_metrics = await svc.store.read(lambda db: _database_metrics(db, now))
    avail = await monitor.availability(30)
    try:
        keys = await _key_metrics(svc, datetime.fromtimestamp(now, UTC))
    except SecuremailError:  # gpg is down: the gpg health check says so; the rest still counts
        keys = []
    writable = Metric(
        "securemail_database_writable",
        "gauge",
        "1 when a small write probe succeeds; 0: the disk is full, sends are refused (503).",
    ).add(1 if await health.database_writable(svc) else 0)
    return db_metrics + keys + _health_metrics(report, avail) + [writable]
