"""Bounds on every input and malformed input as a clear 4xx, over real HTTP against the real app:
form rows beyond the form's maximum, a body in a broken encoding or another charset, JSON
nested too deep, a non-object where an object belongs, odd digits; no 5xx, no traceback in
the log, no reference number burnt."""

from __future__ import annotations

import json
import logging
import re

import pytest

from securemail.accounts import apitoken, auth
from tests.gateway import EXAMPLE
from tests.web_fixtures import Browser, WebApp

ROW_ROUTES = ("/requests/preview", "/requests/suggest")


async def logged_in(webapp: WebApp, username: str) -> Browser:
    b = webapp.browser()
    r = await b.login(username)
    assert (r.status, r.location) == (303, "/"), r.text[:300]
    return b


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]


def rows_rendered(html: str) -> int:
    return len(set(re.findall(r'name="procedures\.([0-9]+)\.code"', html)))


def references_issued(webapp: WebApp) -> int:
    return webapp.svc.store.read_sync(lambda db: db["requests"].count)


@pytest.mark.parametrize("route", ROW_ROUTES)
@pytest.mark.parametrize(
    "name", ["procedures.1000000.code", "procedures.999999.code", "procedures.x.code"]
)
async def test_a_row_index_beyond_the_form_is_a_field_error_not_a_row_per_index(
    webapp: WebApp, caplog: pytest.LogCaptureFixture, route: str, name: str
) -> None:
    b = await logged_in(webapp, "gp_a")
    r = await b.post(route, {name: "INJ_SC", "procedures.0.code": "INJ_SC"})
    assert r.status == 422
    assert "Hoogstens 10 regels" in r.text or "verwachte vorm" in r.text
    assert rows_rendered(r.text) <= 10
    no_traceback(caplog)


async def test_a_payload_with_more_rows_than_the_form_is_refused_on_send(
    webapp: WebApp, caplog: pytest.LogCaptureFixture
) -> None:
    b = await logged_in(webapp, "gp_a")
    payload = {**EXAMPLE, "procedures": [EXAMPLE["procedures"][0]] * 50}
    before = references_issued(webapp)
    r = await b.post("/requests/send", {"payload": json.dumps(payload), "passphrase": "x"})
    assert r.status == 422
    assert "Hoogstens 10 regels" in r.text
    assert rows_rendered(r.text) <= 10
    assert references_issued(webapp) == before
    no_traceback(caplog)


async def test_health_answers_while_a_crafted_form_is_refused(webapp: WebApp) -> None:
    b = await logged_in(webapp, "gp_a")
    r = await b.post("/requests/preview", {"procedures.1000000.code": "INJ_SC"})
    assert r.status == 422
    assert (await b.get("/health")).status == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"username=\xff\xfe&password=x", "application/x-www-form-urlencoded"),
        (b"username=a&password=x", "application/x-www-form-urlencoded; charset=klingon"),
        (b"username=a&password=x", "application/x-www-form-urlencoded; charset=utf-16"),
        (b"--b\r\nContent-Disposition: form-data; name=\"u\"\r\n\r\n\xff\r\n--b--\r\n",
         "multipart/form-data; boundary=b"),
        ("&".join(f"f{i}=1" for i in range(2000)).encode(), "application/x-www-form-urlencoded"),
    ],
)  # fmt: skip
async def test_malformed_login_body_is_a_400_without_a_traceback(
    webapp: WebApp, caplog: pytest.LogCaptureFixture, body: bytes, content_type: str
) -> None:
    b = webapp.browser()
    r = await b.request("POST", "/login", data=body, headers={"Content-Type": content_type})
    assert r.status in (400, 413)  # 413: aiohttp's own limit of 1000 form fields
    assert r.status == 413 or "konden niet worden gelezen" in r.text
    no_traceback(caplog)


async def test_malformed_form_with_a_session_is_a_400(
    webapp: WebApp, caplog: pytest.LogCaptureFixture
) -> None:
    b = await logged_in(webapp, "gp_a")
    r = await b.request(
        "POST",
        "/requests/preview",
        data=b"patient.name=\xc3\x28",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": b.csrf},
    )
    assert r.status == 400
    no_traceback(caplog)


@pytest.mark.parametrize("body", [b"", b"no boundary here", b"--x\r\n"])
async def test_a_multipart_form_without_its_boundary_is_a_400(
    webapp: WebApp, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    # Found by the route fuzz test: an empty multipart body passed the input check (no body
    # to read) and the CSRF check's read raised "Could not find starting boundary": a 500.
    b = await logged_in(webapp, "gp_a")
    r = await b.request(
        "POST",
        "/account/recovery-codes",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status == 400, r.text[:300]
    no_traceback(caplog)


async def _token(webapp: WebApp) -> str:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    token, _ = webapp.svc.store.write_sync(
        lambda db: apitoken.create(
            db, gp, name="HIS", scopes="request:send request:read", now=webapp.clock.now
        )
    )
    return token


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"request": {"a": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}}",
        b'{"request": "\xff"}',
        json.dumps({"request": {**EXAMPLE, "patient": "jan"}, "passphrase": "x"}).encode(),
        json.dumps({"request": {**EXAMPLE, "patient": [1, 2]}, "passphrase": "x"}).encode(),
        json.dumps({"request": {**EXAMPLE, "principal": "x", "receiver": 1}, "passphrase": "x",
                    "to": "centrum@zorg.example"}).encode(),
        json.dumps(
            {"request": {**EXAMPLE, "procedures": [EXAMPLE["procedures"][0]] * 200},
             "passphrase": "x"}
        ).encode(),
        json.dumps({"request": {**EXAMPLE, "patient": {**EXAMPLE["patient"], "bsn": "²²²"}},
                    "passphrase": "x"}).encode(),
    ],
)  # fmt: skip
async def test_malformed_json_on_the_api_is_a_4xx_and_burns_no_reference(
    webapp: WebApp, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    token = await _token(webapp)
    before = references_issued(webapp)
    b = webapp.browser()
    r = await b.request(
        "POST",
        "/api/requests",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert 400 <= r.status < 500, r.text[:300]
    assert "traceback" not in r.text.lower()
    assert references_issued(webapp) == before
    no_traceback(caplog)


async def test_server_header_names_no_framework(webapp: WebApp) -> None:
    b = webapp.browser()
    for path in ("/login", "/health", "/nope"):
        r = await b.get(path)
        assert r.headers["Server"] == "securemail"
