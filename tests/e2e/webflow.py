"""Drive the web app over real HTTP as a browser would (forms, cookies, CSRF tokens)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import aiohttp

from securemail.form import request as forms
from securemail.form.fields import relative_date
from tests.clock import AMS

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
LOGIN_TOKEN_RE = re.compile(r'name="login_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


async def login(http: aiohttp.ClientSession, base: str, user: dict[str, Any]) -> None:
    """Password, then the TOTP code from the account's secret (the demo credentials carry it),
    until a full session. ``user["clock"]`` (optional): the gateway's clock (Services.clock)
    when a test moves it, so the code is the one the server expects at its time."""
    import pyotp

    async with http.get(f"{base}/login") as r:
        page = await r.text()
    token = LOGIN_TOKEN_RE.search(page)
    assert token, "login page has no login token"
    data = {
        "username": user["username"],
        "password": user["password"],
        "login_token": token.group(1),
    }
    async with http.post(f"{base}/login", data=data) as r:
        page = await r.text()
        assert r.status == 200, page
        assert str(r.url).endswith("/login/totp"), f"password refused: {r.url}"
    clock = user.get("clock")
    code = (
        pyotp.TOTP(user["totp_secret"]).at(clock())
        if clock
        else pyotp.TOTP(user["totp_secret"]).now()
    )
    async with http.post(
        f"{base}/login/totp", data={"csrf_token": csrf_of(page), "code": code}
    ) as r:
        assert r.status == 200, await r.text()
        assert "/login" not in str(r.url), "second factor refused"


def form_fields(data: dict[str, Any]) -> dict[str, str]:
    """The request as the web form posts it: dotted names, no principal (from the profile)."""
    flat = forms.flatten(data)
    return {
        k: v
        for k, v in flat.items()
        if not k.startswith("principal.") and k not in ("reference", "form_id", "form_version")
    }


def typed_dates(fields: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Relative dates in a template (examples/) as a person types them on `now`'s day in
    Amsterdam: a date input takes no "today+6m", a datetime-local input no "now"."""
    local = now.astimezone(AMS)
    out = dict(fields)
    for name, value in fields.items():
        if value == "now":
            out[name] = local.strftime("%Y-%m-%dT%H:%M")
        elif isinstance(value, str) and (day := relative_date(value, local.date())):
            out[name] = day.isoformat()
    return out


async def send_via_form(
    http: aiohttp.ClientSession, base: str, data: dict[str, Any], passphrase: str
) -> str:
    """Fill the form, preview, sign and send; return the reference of the request page."""
    async with http.get(f"{base}/requests/new") as r:
        assert r.status == 200
        token = csrf_of(await r.text())
    async with http.post(
        f"{base}/requests/preview", data={**form_fields(data), "csrf_token": token}
    ) as r:
        page = await r.text()
        assert r.status == 200, page
    payload = re.search(r'name="payload" value="([^"]*)"', page)
    assert payload
    import html as html_mod

    async with http.post(
        f"{base}/requests/send",
        data={
            "csrf_token": csrf_of(page),
            "payload": html_mod.unescape(payload.group(1)),
            "passphrase": passphrase,
            "sign": "1",
        },
    ) as r:
        assert r.status == 200, await r.text()
        match = re.search(r"/requests/(UVZ-\d{4}-\d{6})$", str(r.url))
        assert match, f"not on a request page: {r.url}"
        return match.group(1)
