"""/health, /healthz and /metrics on the real app over real HTTP, with real gpg and a real
STARTTLS relay on 127.0.0.1 (or none, or one without STARTTLS)."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from securemail.exchange import send as exchange
from securemail.home import gateway_fingerprint
from securemail.web import create_app
from tests.gateway import EXAMPLE, GP_PASSPHRASE, Gateway, deliver_all, env_for_cli, example
from tests.smtp_fixtures import free_port

TOKEN = "metrics-token-made-in-the-test"
FORBIDDEN = [
    EXAMPLE["patient"]["bsn"],
    EXAMPLE["patient"]["name"],
    EXAMPLE["patient"]["birth_date"],
    "UVZ-",
    "@",
    "/tmp",
    "gnupg",
    "127.0.0.1",
    "aiohttp",
    "Python",
    "gpg (GnuPG)",
]


async def client_for(gw: Gateway, aiohttp_client: Any, **sections: Any) -> Any:
    if sections:
        gw.svc.settings = gw.svc.settings.replace(**sections)
    app = create_app(gw.svc.settings, services=gw.svc, run_worker=False)
    return await aiohttp_client(app)


def assert_nothing_revealing(text: str, gw: Gateway) -> None:
    for word in [*FORBIDDEN, str(gw.home)]:
        assert word not in text, f"{word!r} must not appear"


async def test_healthz_is_ok_with_a_real_relay_and_gpg(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client)
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 200, body
    assert body["status"] == "ok"
    assert {k: v["status"] for k, v in body["checks"].items()} == {
        "database": "ok",
        "gpg": "ok",
        "relay": "ok",
    }
    assert_nothing_revealing(await r.text(), gw)
    # /health stays the bare liveness answer; neither needs a login
    live = await client.get("/health")
    assert live.status == 200
    assert await live.json() == {"status": "ok"}
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-ID"])


async def test_healthz_is_503_and_names_the_relay_when_it_is_down(
    gw: Gateway, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client, smtp={"port": free_port()})
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503
    assert body["status"] == "fail"
    assert body["checks"]["relay"] == {"status": "fail", "reason": "relay unreachable"}
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["gpg"]["status"] == "ok"
    assert_nothing_revealing(await r.text(), gw)


async def test_healthz_names_a_relay_that_does_not_offer_starttls(
    gw: Gateway, plain_smtp_server: Any, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client, smtp={"port": plain_smtp_server.port})
    r = await client.get("/healthz")
    assert r.status == 503
    assert (await r.json())["checks"]["relay"]["reason"] == "relay does not offer STARTTLS"
    # the check sent no envelope: nothing but the session set-up reached the relay
    assert b"MAIL FROM" not in bytes(plain_smtp_server.received)


async def test_healthz_names_a_relay_with_an_untrusted_certificate(
    gw: Gateway, untrusted_smtp_server: Any, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client, smtp={"port": untrusted_smtp_server.port})
    r = await client.get("/healthz")
    assert r.status == 503
    assert (await r.json())["checks"]["relay"]["reason"] == "relay certificate is not trusted"


async def test_healthz_polling_does_not_hammer_the_relay(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client)
    for _ in range(5):
        assert (await client.get("/healthz")).status == 200
    assert smtp_server.sessions == 1  # [monitoring] relay_cache_seconds: one probe for five


async def test_healthz_is_503_when_the_schema_is_not_current(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:
    # A home left behind by an upgrade: one migration the code knows was never applied.
    with sqlite3.connect(gw.svc.settings.db_path) as conn:
        conn.execute("DELETE FROM _sqlite_migrations WHERE migration_set = 'securemail.health'")
    client = await client_for(gw, aiohttp_client)
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503
    assert body["checks"]["database"] == {
        "status": "fail",
        "reason": "database schema is not current (1 pending)",
    }
    assert body["checks"]["relay"]["status"] == "ok"


async def test_healthz_is_503_when_the_gateway_key_is_gone(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:

    fpr = gateway_fingerprint(gw.svc.store)
    await gw.svc.keyring.delete(fpr)
    client = await client_for(gw, aiohttp_client)
    r = await client.get("/healthz")
    assert r.status == 503
    assert (await r.json())["checks"]["gpg"] == {
        "status": "fail",
        "reason": "gateway secret key missing from the keyring",
    }


# -- /metrics ---------------------------------------------------------------------------------


async def test_metrics_is_refused_without_a_configured_token(
    gw: Gateway, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client)
    r = await client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert r.status == 403
    assert (await r.json())["error"] == "metrics.disabled"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer "])
async def test_metrics_is_refused_without_the_right_token(
    gw: Gateway, aiohttp_client: Any, header: str | None
) -> None:
    client = await client_for(gw, aiohttp_client, monitoring={"metrics_token": TOKEN})
    r = await client.get("/metrics", headers={"Authorization": header} if header else {})
    assert r.status == 401
    assert (await r.json())["error"] == "metrics.token_required"
    assert "securemail_" not in await r.text()


def parse(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def scrape(client: Any) -> tuple[str, dict[str, float]]:
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await r.text()
    return text, parse(text)


async def test_metrics_match_a_known_state(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:
    client = await client_for(gw, aiohttp_client, monitoring={"metrics_token": TOKEN})
    _, before = await scrape(client)
    assert before['securemail_outbox_messages{status="queued"}'] == 0
    assert before['securemail_deliveries_total{outcome="sent",kind="request"}'] == 0
    assert before["securemail_teams_without_usable_key"] == 1  # the team without a key
    assert 600 < before['securemail_key_expiry_horizon_days{kind="team"}'] < 2 * 366
    # Given two requests queued and not yet delivered
    for _ in range(2):
        await exchange.send(gw.svc, gw.gp, example(), GP_PASSPHRASE)
    text, queued = await scrape(client)
    assert queued['securemail_outbox_messages{status="queued"}'] == 2
    assert queued["securemail_outbox_oldest_pending_age_seconds"] >= 0
    assert queued["securemail_audit_head_seq"] > before["securemail_audit_head_seq"]
    assert_nothing_revealing(text, gw)
    # When the worker delivers them (and the practice's notices)
    await deliver_all(gw.svc)
    text, after = await scrape(client)
    assert after['securemail_outbox_messages{status="queued"}'] == 0
    assert after['securemail_deliveries_total{outcome="sent",kind="request"}'] == 2
    assert after['securemail_deliveries_total{outcome="sent",kind="notice"}'] == 2
    assert after['securemail_deliveries_total{outcome="failed",kind="request"}'] == 0
    assert after["securemail_delivery_attempts_total"] == 4
    assert after["securemail_outbox_oldest_retrying_age_seconds"] == 0
    assert after["securemail_requests_overdue"] == 0
    assert after['securemail_health_check_ok{check="relay"}'] == 1
    assert_nothing_revealing(text, gw)


async def test_the_server_records_its_health_checks_for_availability(
    gw: Gateway, smtp_server: Any, aiohttp_client: Any
) -> None:
    import asyncio

    gw.svc.settings = gw.svc.settings.replace(monitoring={"health_check_seconds": 0.2})
    app = create_app(gw.svc.settings, services=gw.svc, run_worker=True)
    await aiohttp_client(app)
    for _ in range(100):
        rows = gw.svc.store.read_sync(
            lambda db: db.execute("SELECT ok, failed FROM health_checks").fetchall()
        )
        if len(rows) >= 3:
            break
        await asyncio.sleep(0.1)
    assert len(rows) >= 3
    assert all(tuple(r) == (1, "") for r in rows)


async def test_the_worker_alone_records_its_health_checks_and_stops_gracefully(
    gw: Gateway, smtp_server: Any
) -> None:
    # A host that runs `securemail worker` without the web app still feeds the availability
    # figures (and runs the retention purge, the same loop `serve` runs).
    def recorded() -> int:
        return gw.svc.store.read_sync(
            lambda db: db.execute("SELECT count(*) FROM health_checks").fetchone()[0]
        )

    before = recorded()
    with subprocess.Popen(
        [sys.executable, "-m", "securemail", "worker", "--home", str(gw.home)],
        env=env_for_cli(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while recorded() == before:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the worker recorded no health check"
                await asyncio.sleep(0.1)
            last_ok = gw.svc.store.read_sync(
                lambda db: db.execute("SELECT ok FROM health_checks ORDER BY id DESC").fetchone()[0]
            )
            assert last_ok == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
