"""The GP's web path over real HTTP on 127.0.0.1: form, errors next to fields, preview, sign,
send, list and request page; and what the page says when delivery cannot happen safely."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from securemail.web import create_app
from tests.e2e.webflow import csrf_of, form_fields, login, send_via_form
from tests.gateway import EXAMPLE, GP_PASSPHRASE, GP_PASSWORD, Gateway, deliver_all, example

GP = {"username": "huisarts", "password": GP_PASSWORD}


def gp_login(gw: Gateway) -> dict[str, str]:
    """The GP's credentials as the login form needs them: password and authenticator secret."""
    return {**GP, "totp_secret": gw.extra["totp_secrets"]["huisarts"]}


@pytest.fixture
async def client(gw: Gateway, aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_app(gw.svc.settings, services=gw.svc, run_worker=False))


async def test_form_with_mistakes_shows_each_error_next_to_its_field_and_keeps_values(
    client: Any, gw: Gateway
) -> None:
    await login(client, "", gp_login(gw))
    async with client.get("/requests/new") as r:
        token = csrf_of(await r.text())
    data = example()
    data["patient"]["bsn"] = "123456789"
    data["procedures"][0]["code"] = "WOUND_CARE"
    async with client.post(
        "/requests/preview", data={**form_fields(data), "csrf_token": token}
    ) as r:
        page = await r.text()
    assert r.status == 422
    assert re.search(r'data-field="patient.bsn"[^>]*>[^<]*elfproef', page)
    assert 'data-field="procedures.0.code"' in page
    assert "geen uitvoeringsverzoek nodig" in page
    assert 'value="123456789"' in page  # what was typed stays in the form
    assert gw.svc.store.read_sync(lambda db: db["outbox"].count) == 0


async def test_gp_sends_from_the_web_and_sees_it_delivered_on_the_request_page(
    client: Any, gw: Gateway, smtp_server: Any
) -> None:
    await login(client, "", gp_login(gw))
    reference = await send_via_form(client, "", example(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    async with client.get(f"/requests/{reference}") as r:
        page = await r.text()
    assert r.status == 200
    assert "verzonden" in page
    assert gw.member_fingerprints[0] in page  # the keys it was encrypted to are shown
    async with client.get("/requests") as r:
        listing = await r.text()
    assert reference in listing
    assert EXAMPLE["patient"]["bsn"] not in listing  # a list shows no patient data
    raw = next(iter(smtp_server.handler.mailbox().values()))
    assert EXAMPLE["patient"]["bsn"].encode() not in raw


async def test_wrong_passphrase_on_the_web_says_so_and_queues_nothing(
    client: Any, gw: Gateway
) -> None:
    await login(client, "", gp_login(gw))
    with pytest.raises(AssertionError):
        await send_via_form(client, "", example(), "wrong passphrase")
    assert gw.svc.store.read_sync(lambda db: db["outbox"].count) == 0


async def test_relay_without_starttls_sends_nothing_and_the_page_says_why(
    tmp_path: Any,
    team_member_keys: Any,
    relay_factory: Any,
    relay_cafile: str,
    aiohttp_client: Any,
) -> None:
    from tests.gateway import build_gateway

    relay = relay_factory("plain")
    gw = await build_gateway(
        team_keys=team_member_keys,
        smtp={
            "host": "127.0.0.1",
            "port": relay.port,
            "cafile": relay_cafile,
            "timeout_seconds": 5.0,
        },
    )
    try:
        client = await aiohttp_client(
            create_app(gw.svc.settings, services=gw.svc, run_worker=False)
        )
        await login(client, "", gp_login(gw))
        reference = await send_via_form(client, "", example(), GP_PASSPHRASE)
        hooks_worker = asyncio.create_task(deliver_all(gw.svc, timeout=3))
        await hooks_worker
        async with client.get(f"/requests/{reference}") as r:
            page = await r.text()
        assert "nieuwe poging volgt" in page
        assert "STARTTLS" in page
        assert EXAMPLE["patient"]["bsn"].encode() not in bytes(relay.received)
        assert EXAMPLE["patient"]["name"].encode() not in bytes(relay.received)
        assert relay.handler.snapshot() == []
    finally:
        gw.svc.close()
