"""`securemail nta-declaration`: the values follow this installation's settings and measured
state (real gpg keys, a real relay, recorded health checks); Markdown and a valid PDF."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from securemail.ops import health, nta
from securemail.ops.health import CheckResult, HealthReport
from tests.gateway import EXAMPLE, OTHER_TEAM, Gateway, env_for_cli


def with_settings(gw: Gateway, **sections: Any) -> None:
    gw.svc.settings = gw.svc.settings.replace(**sections)


async def test_declaration_shows_required_starttls_and_a_verified_relay(
    gw: Gateway, smtp_server: Any
) -> None:
    d = await nta.build(gw.svc)
    comm = d.by_clause("6.1.11")
    assert "STARTTLS required" in comm.achieved
    assert "relay now: TLSv1." in comm.achieved
    # the e2e home has an https base_url but no Secure cookies: shown as not met
    assert comm.status == nta.NOT_MET
    assert "NOT configured for TLS" in comm.achieved
    with_settings(gw, web={"secure_cookies": True})
    assert (await nta.build(gw.svc)).by_clause("6.1.11").status == nta.MET


async def test_declaration_follows_a_change_to_implicit_tls(
    gw: Gateway, relay_factory: Any
) -> None:
    implicit = relay_factory("implicit")
    with_settings(
        gw, smtp={"starttls": "implicit", "port": implicit.port}, web={"secure_cookies": True}
    )
    text = nta.markdown(await nta.build(gw.svc))
    assert "implicit TLS from the first byte" in text
    assert "STARTTLS required" not in text


async def test_declaration_says_not_measured_when_the_relay_is_down(gw: Gateway) -> None:
    from tests.smtp_fixtures import free_port

    with_settings(gw, smtp={"port": free_port()}, web={"secure_cookies": True})
    comm = (await nta.build(gw.svc)).by_clause("6.1.11")
    assert comm.status == nta.NOT_MEASURED
    assert "relay unreachable" in comm.achieved


async def test_declaration_shows_keys_expiring_and_teams_that_cannot_receive(
    gw: Gateway, smtp_server: Any
) -> None:
    now = gw.svc.now()
    d = await nta.build(gw.svc, now=now)
    conf = d.by_clause("6.1.9")
    assert "cv25519 x2" in conf.achieved
    assert "1 of 2 active teams without a usable key (requests to them are refused" in (
        conf.achieved
    )
    assert OTHER_TEAM in conf.achieved
    keys = next(f for f in d.facts if f.name == "Key management")
    assert "(729 days)" in keys.achieved or "(730 days)" in keys.achieved
    # Two years on, the team keys (made for 2y) are about to expire: the horizon says so
    later = await nta.build(gw.svc, now=now + timedelta(days=725))
    keys = next(f for f in later.facts if f.name == "Key management")
    assert "(4 days)" in keys.achieved or "(5 days)" in keys.achieved


async def test_availability_comes_from_the_recorded_checks(gw: Gateway, smtp_server: Any) -> None:
    assert (await nta.build(gw.svc)).by_clause("6.1.2").status == nta.NOT_MEASURED
    now = time.time()

    def checks(db: Any, fail_from: int) -> None:
        for i in range(600):  # ten hours, one check a minute
            ok = i < fail_from
            health.record(
                db, HealthReport((CheckResult("relay", ok, "x"),), now - 36000 + i * 60), 60
            )

    gw.svc.store.write_sync(lambda db: checks(db, 600))
    avail = (await nta.build(gw.svc)).by_clause("6.1.2")
    assert avail.status == nta.MET
    assert "30 d: 100.000 % (600 checks, 0 failed" in avail.achieved
    gw.svc.store.write_sync(lambda db: db.execute("DELETE FROM health_checks"))
    gw.svc.store.write_sync(lambda db: checks(db, 590))  # the last ten minutes failed
    avail = (await nta.build(gw.svc)).by_clause("6.1.2")
    assert avail.status == nta.NOT_MET
    assert "10 failed" in avail.achieved
    assert "98.3" in avail.achieved


async def test_declaration_verifies_the_chain_and_audits_that(
    gw: Gateway, smtp_server: Any
) -> None:
    d = await nta.build(gw.svc)
    assert d.by_clause("6.1.7").status == nta.MET
    rows = gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT outcome, outcome_detail FROM audit_events WHERE event_code = 'audit.verify'"
        ).fetchall()
    )
    assert rows[-1][0] == "success"
    assert rows[-1][1].startswith("nta-declaration: verified")


async def test_markdown_lists_every_table_2_criterion_and_no_patient_data(
    gw: Gateway, smtp_server: Any
) -> None:
    text = nta.markdown(await nta.build(gw.svc))
    for clause in (
        "6.1.2",
        "6.1.3",
        "6.1.4",
        "6.1.5",
        "6.1.6",
        "6.1.7",
        "6.1.9",
        "6.1.10",
        "6.1.11",
        "6.1.13",
        "6.1.14",
        "6.1.15",
        "6.1.16",
        "6.1.17",
        "6.1.18",
        "6.1.19",
        "7.2",
    ):
        assert f"| {clause} |" in text
    assert "## Instructions for the care organisation" in text
    assert "phone code" in text
    assert "webtoolmanagementsystemen.nl" in text
    for marker in (EXAMPLE["patient"]["bsn"], EXAMPLE["patient"]["name"]):
        assert marker not in text


def test_cli_writes_markdown_and_a_valid_pdf(gw: Gateway, smtp_server: Any, tmp_path: Path) -> None:
    gw.svc.close()
    out = tmp_path / "nta.pdf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "securemail",
            "nta-declaration",
            "--home",
            str(gw.home),
            "--format",
            "pdf",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    if shutil.which("pdftotext"):
        text = subprocess.run(
            ["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert "NTA 7516 provider declaration" in text
        assert "Communicatievertrouwelijkheid" in text
    md = subprocess.run(
        [sys.executable, "-m", "securemail", "nta-declaration", "--home", str(gw.home)],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=180,
        check=False,
    )
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("# NTA 7516 provider declaration")


@pytest.mark.parametrize("command", ["nta-declaration", "health", "availability"])
def test_cli_help_works(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "securemail", command, "--help"],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


async def test_an_unusable_audit_key_shows_as_not_met(gw: Gateway, smtp_server: Any) -> None:
    key = gw.home / "keys" / "audit-ed25519.pem"
    key.chmod(0o644)  # a loose mode: verification refuses to trust it
    d = await nta.build(gw.svc)
    assert d.by_clause("6.1.7").status == nta.NOT_MET
    assert "audit.key" in d.by_clause("6.1.7").achieved
    audit_fact = next(f for f in d.facts if f.name.startswith("Logging and audit"))
    assert audit_fact.status == nta.NOT_MET


async def test_declaration_follows_the_retention_settings(gw: Gateway, smtp_server: Any) -> None:
    with_settings(gw, retention={"content_days": 14, "metadata_days": 365})
    d = await nta.build(gw.svc)
    assert "purged 14 days after the final outcome, metadata after 365 days" in (
        d.by_clause("6.1.18").achieved
    )
    retention = next(f for f in d.facts if f.name == "Retention")
    assert retention.achieved.startswith("content (sealed at rest) is purged 14 days")


async def test_data_loss_criterion_needs_a_real_backup(gw: Gateway, smtp_server: Any) -> None:
    from securemail.access import SYSTEM
    from securemail.ops import backup, health, metrics
    from tests.test_backup import _drop, _make_offline

    d = await nta.build(gw.svc)
    assert d.by_clause("6.1.4").status == nta.NOT_MET
    assert "no backup key configured" in d.by_clause("6.1.4").achieved
    offline = _make_offline("Backup")
    try:
        await gw.svc.keyring.import_keys(offline.public)
        with_settings(gw, backup={"recipient": offline.fingerprint})
        await asyncio.to_thread(
            backup.make_backup, gw.svc.settings, gw.home.parent / f"{gw.home.name}.gpg", SYSTEM
        )
        d = await nta.build(gw.svc)
        assert d.by_clause("6.1.4").status == nta.MET
        assert f"offline key {offline.fingerprint[-16:]}" in d.by_clause("6.1.4").achieved
        assert "last successful backup 20" in d.by_clause("6.1.4").achieved
        text = metrics.render(await metrics.collect(gw.svc, health.Monitor(gw.svc)))
        assert "\nsecuremail_backup_last_success_timestamp_seconds 1" in text
    finally:
        _drop(offline.home)
        (gw.home.parent / f"{gw.home.name}.gpg").unlink(missing_ok=True)


async def test_each_logging_duty_names_the_audit_events_that_meet_it(
    gw: Gateway, smtp_server: Any
) -> None:
    from securemail.audit import trail as audit
    from securemail.exchange import send as exchange
    from tests.gateway import GP_PASSPHRASE, deliver_all, example

    before = {d.duty: d for d in (await nta.build(gw.svc)).logging}
    await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    d = await nta.build(gw.svc)
    duties = {duty.duty.split(":")[0]: duty for duty in d.logging}
    assert {"Sending", "Delivery", "Opening"} <= set(duties)
    for duty in d.logging:
        assert duty.events and all(e in audit.EVENT_CODES for e in duty.events)
    delivery = duties["Delivery"]
    counts = dict(zip(delivery.events, delivery.counts, strict=True))
    old = dict(zip(delivery.events, before[delivery.duty].counts, strict=True))
    assert counts["request.deliver"] == old["request.deliver"] + 1
    assert delivery.status == nta.MET
    # Opening in the team's own mail client is outside the gateway: said, not claimed.
    assert duties["Opening"].status == nta.REPORTED and "mail client" in duties["Opening"].note
    text = nta.markdown(d)
    assert "## Logging duties and the audit events that meet them" in text
    assert "`request.deliver` (" in text
    assert nta.pdf(d).startswith(b"%PDF")
