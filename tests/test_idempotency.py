"""Idempotent sending over real HTTP: the API's Idempotency-Key (two concurrent posts, a
retry, a different body) and the web form's one-time send token (a double submit)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from securemail.accounts import apitoken, auth
from tests.gateway import GP_PASSPHRASE, example
from tests.web_fixtures import WebApp

CENTRUM = "centrum@zorg.example"


async def _token(webapp: WebApp) -> str:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    token, _ = webapp.svc.store.write_sync(
        lambda db: apitoken.create(
            db, gp, name="HIS", scopes="request:send request:read", now=webapp.clock.now
        )
    )
    return str(token)


def _requests(webapp: WebApp) -> list[str]:
    rows = webapp.svc.store.read_sync(
        lambda db: db.execute("SELECT reference FROM requests ORDER BY id").fetchall()
    )
    return [r[0] for r in rows]


def _outbox(webapp: WebApp) -> int:
    return int(webapp.svc.store.read_sync(lambda db: db.execute(
        "SELECT count(*) FROM outbox WHERE kind = 'request'").fetchone()[0]))  # fmt: skip


async def _post(webapp: WebApp, token: str, key: str | None, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await webapp.browser().request("POST", "/api/requests", json=body, headers=headers)


async def test_two_concurrent_posts_with_one_key_give_one_request(webapp: WebApp) -> None:
    token = await _token(webapp)
    body = {"request": example(), "passphrase": GP_PASSPHRASE, "to": CENTRUM}
    a, b = await asyncio.gather(*(_post(webapp, token, "his-83121", body) for _ in range(2)))
    assert (a.status, b.status) == (201, 201), (a.text, b.text)
    assert json.loads(a.text) == json.loads(b.text)
    assert _requests(webapp) == [json.loads(a.text)["reference"]]
    assert _outbox(webapp) == 1
    # a retry later (the client timed out) gets the first answer too, and sends nothing
    c = await _post(webapp, token, "his-83121", body)
    assert (c.status, json.loads(c.text)) == (201, json.loads(a.text))
    assert _outbox(webapp) == 1


async def test_a_different_body_under_the_same_key_is_409(webapp: WebApp) -> None:
    token = await _token(webapp)
    body = {"request": example(), "passphrase": GP_PASSPHRASE, "to": CENTRUM}
    assert (await _post(webapp, token, "k-1", body)).status == 201
    other = example()
    other["patient"]["phone"] = "0201234567"
    r = await _post(webapp, token, "k-1", {**body, "request": other})
    assert r.status == 409 and json.loads(r.text)["error"] == "idempotency.conflict"
    assert len(_requests(webapp)) == 1
    bad = await _post(webapp, token, "bad key with spaces", body)
    assert bad.status == 400 and len(_requests(webapp)) == 1


async def test_without_a_key_two_posts_are_two_requests(webapp: WebApp) -> None:
    """What the key prevents: the same post twice without one is two requests."""
    token = await _token(webapp)
    body = {"request": example(), "passphrase": GP_PASSPHRASE, "to": CENTRUM}
    for _ in range(2):
        assert (await _post(webapp, token, None, body)).status == 201
    assert len(set(_requests(webapp))) == 2


async def test_a_refused_send_frees_its_key(webapp: WebApp) -> None:
    token = await _token(webapp)
    body = {"request": example(), "passphrase": "wrong passphrase", "to": CENTRUM}
    assert (await _post(webapp, token, "k-2", body)).status != 201
    ok = await _post(webapp, token, "k-2", {**body, "passphrase": GP_PASSPHRASE})
    assert ok.status == 201, ok.text


async def test_the_forms_double_submit_shows_the_first_requests_page(webapp: WebApp) -> None:
    b = webapp.browser()
    await b.login("gp_a")
    data = example()
    data["receiver"]["team_address"] = CENTRUM
    post = {"payload": json.dumps(data), "passphrase": GP_PASSPHRASE, "send_token": "t-abc"}
    first, second = await asyncio.gather(
        b.post("/requests/send", post), b.post("/requests/send", post)
    )
    assert first.status == second.status == 303, (first.text[:300], second.text[:300])
    assert first.location == second.location and first.location.startswith("/requests/UVZ-")
    assert len(_requests(webapp)) == 1


async def test_json_nested_too_deeply_is_a_400(webapp: WebApp) -> None:
    token = await _token(webapp)
    deep = "[" * 200_000 + "]" * 200_000
    r = await webapp.browser().request(
        "POST",
        "/api/requests",
        data=deep,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status == 400, r.text[:200]
    assert json.loads(r.text)["context"]["field"] == "body"


async def test_a_send_that_dies_after_taking_its_reference_leaves_an_audit_row(
    webapp: WebApp,
) -> None:
    # Given a send that is cancelled (the client went away) once its reference is taken
    from securemail.exchange import send as exchange_send

    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    task = asyncio.ensure_future(
        exchange_send.send(webapp.svc, gp, example(), GP_PASSPHRASE, to=CENTRUM)
    )

    def taken() -> list[tuple[str, int]]:
        return webapp.svc.store.read_sync(
            lambda db: db.execute(
                "SELECT name, value FROM counters WHERE name LIKE 'UVZ-%'"
            ).fetchall()
        )

    while not taken():
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Then no request exists, and the burnt number has its refused row naming it
    ((name, value),) = taken()
    reference = f"{name}-{value:06d}"
    assert _requests(webapp) == []
    rows = webapp.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT event_code, outcome, outcome_detail FROM audit_events WHERE object_id = ? "
            "AND event_code = 'request.send'",  # the cancel may land after the consent check
            [reference],
        ).fetchall()
    )
    assert [tuple(r) for r in rows] == [("request.send", "refused", "interrupted:CancelledError")]


async def test_a_send_cancelled_while_its_number_is_being_taken_leaves_an_audit_row(
    webapp: WebApp,
) -> None:
    # Given a writer busy with something else, so that the send waits for its number
    import threading

    from securemail.exchange import send as exchange_send

    svc = webapp.svc
    gp = svc.store.read_sync(lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test"))
    gate = threading.Event()
    busy = asyncio.ensure_future(svc.store.write(lambda db: gate.wait(30)))
    task = asyncio.ensure_future(exchange_send.send(svc, gp, example(), GP_PASSPHRASE, to=CENTRUM))
    await asyncio.sleep(0.05)  # the send is waiting for its number, behind the busy write
    # When the client goes away then, and the writer takes the number afterwards
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gate.set()
    await busy

    def refused() -> list[tuple[str, str, str]]:
        return svc.store.read_sync(
            lambda db: db.execute(
                "SELECT event_code, outcome, outcome_detail FROM audit_events "
                "WHERE event_code = 'request.send'"
            ).fetchall()
        )

    for _ in range(200):  # the refusal is written after the cancellation, shielded
        if refused():
            break
        await asyncio.sleep(0.01)
    # Then the burnt number has its refused row, and no request exists
    assert [tuple(r) for r in refused()] == [
        ("request.send", "refused", "interrupted:CancelledError")
    ]
    assert _requests(webapp) == []
