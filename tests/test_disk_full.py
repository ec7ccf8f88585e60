"""A full disk is a clear refusal. Simulated with sqlite's ``PRAGMA max_page_count`` on the
store's writer connection (the database cannot grow by one page: SQLITE_FULL, "database or
disk is full", exactly as on a full filesystem), over the real app and HTTP."""

from __future__ import annotations

import json

from securemail.accounts import apitoken, auth
from tests.gateway import GP_PASSPHRASE, example
from tests.web_fixtures import WebApp

CENTRUM = "centrum@zorg.example"


def _fill(webapp: WebApp, full: bool) -> None:
    store = webapp.svc.store
    with store._lock:  # between writes, on the writer connection itself
        conn = store._writer_conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if full else 2**30}")


def _count(webapp: WebApp, sql: str) -> int:
    return int(webapp.svc.store.read_sync(lambda db: db.execute(sql).fetchone()[0]))


async def test_a_full_disk_refuses_sends_with_503_and_healthz_says_unwritable(
    webapp: WebApp,
) -> None:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    token, _ = webapp.svc.store.write_sync(
        lambda db: apitoken.create(db, gp, name="HIS", scopes="request:send", now=webapp.clock.now)
    )
    b = webapp.browser()
    body = {"request": example(), "passphrase": GP_PASSPHRASE, "to": CENTRUM}
    headers = {"Authorization": f"Bearer {token}"}
    # Given: the database cannot grow
    _fill(webapp, True)
    requests_before = _count(webapp, "SELECT count(*) FROM requests")
    # When: a practice sends
    r = await b.request("POST", "/api/requests", json=body, headers=headers)
    # Then: 503 with a Dutch and an English reason and Retry-After; nothing half-written
    assert r.status == 503, r.text
    answer = json.loads(r.text)
    assert answer["error"] == "storage.full"
    assert "schijf is vol" in answer["message_nl"] and "cannot be written" in answer["reason"]
    assert int(r.headers["Retry-After"]) > 0
    assert _count(webapp, "SELECT count(*) FROM requests") == requests_before
    assert _count(webapp, "SELECT count(*) FROM outbox") == 0
    # ... and readiness names it
    health = await b.get("/healthz")
    assert health.status == 503
    db_check = json.loads(health.text)["checks"]["database"]
    assert db_check == {"status": "fail", "reason": "database unwritable (disk full?)"}
    # When: there is room again, the gateway recovers by itself
    _fill(webapp, False)
    r = await b.request("POST", "/api/requests", json=body, headers=headers)
    assert r.status == 201, r.text
    health = await b.get("/healthz")
    assert json.loads(health.text)["checks"]["database"]["status"] == "ok"


async def test_the_metric_names_an_unwritable_database(webapp: WebApp) -> None:
    from securemail.ops import health, metrics

    _fill(webapp, True)
    monitor = health.Monitor(webapp.svc)
    text = metrics.render(await metrics.collect(webapp.svc, monitor))
    assert "securemail_database_writable 0" in text
    _fill(webapp, False)
    text = metrics.render(await metrics.collect(webapp.svc, monitor))
    assert "securemail_database_writable 1" in text
