"""Every forbidden path, over real HTTP against the real app: not logged in, wrong role, other
organisation, missing or wrong CSRF token, expired session, wrong TOTP, replayed TOTP, too
many failures; plus the security headers, cookies, error pages and API tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from securemail import access
from securemail.accounts import apitoken, auth
from securemail.web.login import LoginThrottle, throttle_key
from securemail.web.middleware import ACTION_ATTR, OPEN_ROUTES, SECOND_FACTOR_ROUTES, requires
from tests.auth_fixtures import PASSWORD
from tests.gateway import EXAMPLE
from tests.web_fixtures import Browser, WebApp, another_web

ROLE_OF = {
    "gp": "gp_a",
    "nurse": "nurse_c",
    "privacy_officer": "privacy_a",
    "admin": "admin",
    "coordinator": "coord_r",
}
#: A sample value for each route parameter (no patient data is ever a parameter).
SAMPLE_PARAMS = {
    "reference": "UVZ-2025-000001",
    "token_id": "999999",
    "user_id": "999999",
    "team_id": "999999",
    "token": "A" * 24,
    "fmt": "pdf",  # an export format (pdf, json, fhir), never patient data
    "draft": "D" * 22,  # a draft's random id (securemail.exchange.drafts)
    "action": "wijzigen",  # a follow-up of a request: wijzigen | verlengen | kopieren
}
SESSION_ENDING = {"logout_all"}


async def logged_in(webapp: WebApp, username: str) -> Browser:
    b = webapp.browser()
    r = await b.login(username)
    assert (r.status, r.location) == (303, "/"), r.text[:300]
    return b


CENTRUM, OOST = "centrum@zorg.example", "oost@zorg.example"
BSN = EXAMPLE["patient"]["bsn"]


# -- not logged in ---------------------------------------------------------------------------


def _guarded_routes(app: web.Application) -> list[tuple[str, str, str, str]]:
    """(method, path, route name, action) for every route that needs a full session."""
    out = []
    for route in app.router.routes():
        name = route.resource.name if route.resource else None
        if route.method == "HEAD" or name in OPEN_ROUTES or name in SECOND_FACTOR_ROUTES:
            continue
        info = route.resource.get_info()
        params = {
            k: SAMPLE_PARAMS[k]
            for k in re.findall(r"\{(\w+)", info.get("formatter", info.get("path", "")))
        }
        path = str(route.resource.url_for(**params))
        out.append((route.method, path, name, getattr(route.handler, ACTION_ATTR, None)))
    return out


async def test_every_route_outside_login_declares_a_policy_action(webapp):
    routes = _guarded_routes(webapp.app)
    assert len(routes) >= 10
    undeclared = [name for _, _, name, action in routes if action is None]
    assert undeclared == [], "declare @requires(action) on these routes"
    for _, _, _, action in routes:
        assert action in access.POLICY


async def test_route_parameters_never_carry_patient_data(webapp):
    for route in webapp.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        params = set(re.findall(r"\{(\w+)", info.get("formatter", info.get("path", ""))))
        assert params <= set(SAMPLE_PARAMS), f"{route.resource.name}: {params}"


async def test_not_logged_in_every_route_redirects_to_login_or_401(webapp):
    b = webapp.browser()
    for method, path, name, _ in _guarded_routes(webapp.app):
        r = await b.request(method, path, data={} if method == "POST" else None)
        if path.startswith("/api/"):
            assert r.status == 401, (name, r.status)
            assert json.loads(r.text)["error"] == "auth.required"
        else:
            assert (r.status, r.location) == (303, "/login"), (name, r.status)


async def test_password_only_session_reaches_nothing_but_the_second_factor(webapp):
    b = webapp.browser()
    r = await b.password("gp_a")
    assert (r.status, r.location) == (303, "/login/totp")
    for method, path, name, _ in _guarded_routes(webapp.app):
        r = await b.request(method, path, data={} if method == "POST" else None)
        if path.startswith("/api/"):
            assert r.status == 401, name
        else:
            assert (r.status, r.location) == (303, "/login/totp"), name


# -- wrong role: the whole table, over HTTP --------------------------------------------------


async def test_role_by_route_table(webapp):
    browsers = {role: await logged_in(webapp, user) for role, user in ROLE_OF.items()}
    denied_before = len(webapp.audit("access.denied"))
    expected_denials = 0
    # Routes that end the session go last: "logout everywhere" would log the table out.
    routes = sorted(_guarded_routes(webapp.app), key=lambda r: r[2] in SESSION_ENDING)
    for method, path, name, action in routes:
        for role, b in browsers.items():
            r = await b.request(
                method, path, data={"csrf_token": b.csrf} if method == "POST" else None
            )
            if role in access.POLICY[action]:
                assert r.status != 403, (name, role, r.status, r.text[:200])
                assert r.status < 500, (name, role, r.status, r.text[:300])
            else:
                expected_denials += 1
                assert r.status == 403, (name, role, r.status)
                rows = webapp.audit("access.denied")
                assert rows[-1]["user_name"] == ROLE_OF[role], (name, role)
                assert rows[-1]["check_authz"] == f"deny:{action}"
                assert rows[-1]["outcome"] == "refused"
    assert len(webapp.audit("access.denied")) - denied_before >= expected_denials > 10


async def test_wrong_role_json_refusal_names_the_action(webapp):
    b = await logged_in(webapp, "admin")
    r = await b.get("/requests", headers={"Accept": "application/json"})
    assert r.status == 403
    body = json.loads(r.text)
    assert body["error"] == "access.denied"
    assert body["context"]["action"] == "request.list"


# -- other organisation, other team ------------------------------------------------------


async def test_gp_of_another_practice_gets_404_and_an_audit_row(webapp):
    ref = await webapp.send("gp_a", CENTRUM)
    b = await logged_in(webapp, "gp_b")
    r = await b.get(f"/requests/{ref}")
    missing = await b.get("/requests/UVZ-2025-999999")
    assert r.status == missing.status == 404
    assert r.text == missing.text  # a refusal looks exactly like a missing request
    row = webapp.audit("access.denied")[-1]
    assert (row["user_name"], row["object_id"], row["check_authz"]) == (
        "gp_b",
        ref,
        "deny:request.view",
    )
    assert webapp.audit("request.view") == []


async def test_nurse_of_another_team_gets_404_and_an_audit_row(webapp):
    ref = await webapp.send("gp_a", CENTRUM)
    webapp.secrets["nurse_o"] = webapp.svc.store.write_sync(
        lambda db: auth.enrol_totp_for_demo(db, auth.user_by_name(db, "nurse_o").id)
    )
    b = await logged_in(webapp, "nurse_o")
    r = await b.get(f"/requests/{ref}", headers={"Accept": "application/json"})
    assert r.status == 404
    assert json.loads(r.text) == {"error": "not_found", "message_nl": "Niet gevonden."}
    row = webapp.audit("access.denied")[-1]
    assert (row["user_name"], row["object_id"]) == ("nurse_o", ref)


async def test_list_shows_only_own_practice_and_own_teams(webapp):
    a_centrum = await webapp.send("gp_a", CENTRUM)
    b_centrum = await webapp.send("gp_b", CENTRUM)
    a_oost = await webapp.send("gp_a", OOST)
    gp_b = await logged_in(webapp, "gp_b")
    text = (await gp_b.get("/requests")).text
    assert b_centrum in text
    assert a_centrum not in text
    assert a_oost not in text
    nurse_c = await logged_in(webapp, "nurse_c")
    text = (await nurse_c.get("/requests")).text
    assert a_centrum in text
    assert b_centrum in text
    assert a_oost not in text
    # and what a person may list, they may open; the rest is 404
    assert (await nurse_c.get(f"/requests/{a_centrum}")).status == 200
    assert (await nurse_c.get(f"/requests/{a_oost}")).status == 404
    assert (await gp_b.get(f"/requests/{b_centrum}")).status == 200


# -- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
async def test_state_change_without_the_right_csrf_token_is_refused(webapp, token):
    b = await logged_in(webapp, "gp_a")
    other = await logged_in(webapp, "gp_a")
    data = {} if token is None else {"csrf_token": token}
    r = await b.post("/logout/all", data, csrf=False)
    assert r.status == 403
    assert "Dit formulier is verlopen" in r.text
    # Nothing happened: both sessions live on.
    assert (await other.get("/account")).status == 200
    assert (await b.get("/account")).status == 200
    # Another session's token is wrong too.
    r = await b.post("/logout/all", {"csrf_token": other.csrf}, csrf=False)
    assert r.status == 403


async def test_csrf_header_for_json_requests(webapp):
    b = await logged_in(webapp, "gp_a")
    r = await b.request("POST", "/account/recovery-codes", headers={"X-CSRF-Token": "nope"})
    assert r.status == 403
    r = await b.request("POST", "/account/recovery-codes", headers={"X-CSRF-Token": b.csrf})
    assert r.status == 422  # past the CSRF check; refused for want of password and code


async def test_login_form_has_its_own_csrf_token(webapp):
    b = webapp.browser()
    r = await b.request("POST", "/login", data={"username": "gp_a", "password": PASSWORD})
    assert r.status == 403
    page = await b.get("/login")
    r = await b.request(
        "POST",
        "/login",
        data={
            "login_token": page.field("login_token") + "x",
            "username": "gp_a",
            "password": PASSWORD,
        },
    )
    assert r.status == 403
    # A cross-site form post carries no SameSite=Strict login cookie: same refusal.
    fresh = webapp.browser()
    r = await fresh.request(
        "POST",
        "/login",
        data={"login_token": page.field("login_token"), "username": "gp_a", "password": PASSWORD},
    )
    assert r.status == 403


# -- sessions ------------------------------------------------------------------------------------


async def test_idle_session_expires(webapp):
    b = await logged_in(webapp, "nurse_c")
    webapp.clock.advance(minutes=14)
    assert (await b.get("/account")).status == 200
    webapp.clock.advance(minutes=16)
    r = await b.get("/account")
    assert (r.status, r.location) == (303, "/login")


async def test_absolute_lifetime_ends_an_active_session(webapp):
    b = await logged_in(webapp, "nurse_c")
    for _ in range(8 * 6 - 1):
        webapp.clock.advance(minutes=10)
        assert (await b.get("/account")).status == 200
    webapp.clock.advance(minutes=11)
    r = await b.get("/account")
    assert (r.status, r.location) == (303, "/login")


async def test_password_stage_expires_after_five_minutes(webapp):
    b = webapp.browser()
    await b.password("gp_a")
    webapp.clock.advance(minutes=6)
    r = await b.get("/login/totp")
    assert (r.status, r.location) == (303, "/login")


async def test_session_id_rotates_at_each_step_and_old_ids_are_dead(webapp):
    b = webapp.browser()
    await b.password("gp_a")
    password_sid = b.cookie("securemail_session")
    r = await b.second_factor(webapp.code("gp_a"))
    assert r.status == 303
    full_sid = b.cookie("securemail_session")
    assert password_sid and full_sid and password_sid != full_sid
    # Someone holding the pre-login id (session fixation) gets nothing.
    thief = webapp.browser()
    thief.session.cookie_jar.update_cookies(
        {"securemail_session": password_sid}, webapp.client.make_url("/")
    )
    assert (await thief.get("/account")).location == "/login"
    # Logging in again from the same browser ends the earlier session.
    await b.password("gp_a")
    thief.session.cookie_jar.update_cookies(
        {"securemail_session": full_sid}, webapp.client.make_url("/")
    )
    assert (await thief.get("/account")).location == "/login"


async def test_logout_and_logout_everywhere(webapp):
    one = await logged_in(webapp, "gp_a")
    webapp.clock.advance(seconds=31)
    two = await logged_in(webapp, "gp_a")
    r = await one.post("/logout")
    assert (r.status, r.location) == (303, "/login")
    assert (await one.get("/account")).location == "/login"
    assert (await two.get("/account")).status == 200
    webapp.clock.advance(seconds=31)
    three = await logged_in(webapp, "gp_a")
    r = await two.post("/logout/all")
    assert (r.status, r.location) == (303, "/login")
    assert (await three.get("/account")).location == "/login"
    details = [r["outcome_detail"] for r in webapp.audit("auth.logout")]
    assert details == ["this session", "all sessions (2)"]


async def test_session_cookie_flags(webapp, web_template, aiohttp_client):
    b = webapp.browser()
    r = await b.password("gp_a")
    (cookie,) = [c for c in r.set_cookies() if c.startswith("securemail_session=")]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP in this test; see the TLS variant below
    async with another_web(
        web_template, aiohttp_client, web_settings={"secure_cookies": True}
    ) as tls:
        b = tls.browser()
        page = await b.get("/login")
        (login_cookie,) = [c for c in page.set_cookies() if c.startswith("securemail_login=")]
        assert "Secure" in login_cookie
        # Over plain HTTP the client rightly keeps a Secure cookie to itself; hand it over as
        # the browser would over TLS.
        token = page.field("login_token")
        r = await b.request(
            "POST",
            "/login",
            headers={"Cookie": f"securemail_login={token}"},
            data={"login_token": token, "username": "gp_a", "password": PASSWORD},
        )
        (cookie,) = [c for c in r.set_cookies() if c.startswith("securemail_session=")]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie


# -- second factor --------------------------------------------------------------------------


async def test_wrong_totp_is_refused_and_audited(webapp):
    b = webapp.browser()
    await b.password("gp_a")
    wrong = webapp.code("gp_a", offset=5)
    r = await b.second_factor(wrong)
    assert r.status == 401
    assert "klopt niet" in r.text
    assert (await b.get("/account")).location == "/login/totp"
    row = webapp.audit("auth.fail")[-1]
    assert (row["user_name"], row["outcome_detail"]) == ("gp_a", "second factor: wrong code")
    assert wrong not in json.dumps(webapp.audit("auth.fail"))


async def test_replayed_totp_is_refused(webapp):
    code = webapp.code("privacy_a")
    first = webapp.browser()
    assert (await first.login("privacy_a", code=code)).status == 303
    second = webapp.browser()
    await second.password("privacy_a")
    r = await second.second_factor(code)
    assert r.status == 401
    assert webapp.audit("auth.fail")[-1]["outcome_detail"] == "second factor: code already used"
    # The next step's code works.
    webapp.clock.advance(seconds=30)
    r = await second.second_factor(webapp.code("privacy_a"))
    assert r.status == 303


async def test_too_many_failures_lock_the_account_audited(webapp):
    b = webapp.browser()
    for i in range(webapp.settings.web.login_max_failures):
        r = await b.password("nurse_c", "wrong password " + str(i))
    assert r.status == 429
    assert "tijdelijk geblokkeerd" in r.text
    (lock,) = webapp.audit("auth.lockout")
    assert lock["user_name"] == "nurse_c"
    assert len([r for r in webapp.audit("auth.fail") if r["user_name"] == "nurse_c"]) == 5
    # The right password does not help during the lock...
    r = await b.password("nurse_c")
    assert r.status == 429
    # ...until it runs out.
    webapp.clock.advance(minutes=webapp.settings.web.lockout_minutes + 1)
    assert (await b.login("nurse_c")).status == 303


async def test_second_factor_failures_lock_too_and_end_the_password_session(webapp):
    b = webapp.browser()
    await b.password("gp_a")
    for i in range(webapp.settings.web.login_max_failures):
        r = await b.second_factor(f"{i:06d}")
    assert r.status == 429
    assert (await b.get("/login/totp")).location == "/login"
    assert len(webapp.audit("auth.lockout")) == 1


async def test_a_known_password_does_not_reset_the_failure_count(webapp):
    b = webapp.browser()
    for _ in range(webapp.settings.web.login_max_failures - 1):
        await b.password("gp_a")
        await b.second_factor("000000")
    r = await b.password("gp_a")  # right password: still counts on
    await b.second_factor("000000")
    assert len(webapp.audit("auth.lockout")) == 1
    assert r.status == 303


async def test_source_address_is_throttled(web_template, aiohttp_client):
    def small_throttle(app: web.Application) -> None:
        app[throttle_key] = LoginThrottle(limit=3)

    async with another_web(web_template, aiohttp_client, prepare=small_throttle) as w:
        b = w.browser()
        for name in ("nobody", "gp_a", "gp_b"):
            await b.password(name, "spray-password-1")
        r = await b.password("nurse_c")  # the right password, but from a throttled address
        assert r.status == 429
        assert "vanaf dit adres" in r.text
        assert w.audit("auth.fail")[-1]["outcome_detail"] == "source address throttled"


async def test_unknown_user_and_wrong_password_look_the_same(webapp):
    b = webapp.browser()
    r1 = await b.password("nobody-here")
    r2 = await b.password("gp_a", "wrong password!")
    assert r1.status == r2.status == 401
    assert "Gebruikersnaam of wachtwoord onjuist." in r1.text
    assert "Gebruikersnaam of wachtwoord onjuist." in r2.text


async def test_first_login_pairs_an_authenticator_and_shows_recovery_codes_once(webapp):
    import pyotp

    b = webapp.browser()
    r = await b.password("nurse_o")
    assert (r.status, r.location) == (303, "/login/enrol")
    assert (await b.get("/login/totp")).location == "/login/enrol"
    page = await b.get("/login/enrol")
    assert 'src="data:image/svg+xml' in page.text
    secret = re.search(r"secret=([A-Z2-7]+)", page.text)
    assert secret is None  # the otpauth URI is only inside the QR image
    shown = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text)
    assert shown
    secret_value = shown.group(1).replace(" ", "")
    # A reload shows a new secret; the first one no longer pairs.
    again = await b.get("/login/enrol")
    new_secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', again.text)
    assert new_secret
    assert new_secret.group(1).replace(" ", "") != secret_value
    stale = pyotp.TOTP(secret_value).at(webapp.clock.now)
    r = await b.post(
        "/login/enrol", {"csrf_token": again.field("csrf_token"), "code": stale}, csrf=False
    )
    assert r.status == 422
    assert "<img" not in r.text  # the secret is not shown twice
    code = pyotp.TOTP(new_secret.group(1).replace(" ", "")).at(webapp.clock.now)
    r = await b.post(
        "/login/enrol", {"csrf_token": again.field("csrf_token"), "code": code}, csrf=False
    )
    assert r.status == 200
    codes = re.findall(r"<code>([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})</code>", r.text)
    assert len(codes) == 10
    # Logged in fully now, with a new session id.
    assert (await b.get("/account")).status == 200
    # Once paired, /login/enrol is closed to a password-only session (no re-pairing by
    # someone who only knows the password).
    other = webapp.browser()
    await other.password("nurse_o")
    r = await other.get("/login/enrol")
    assert r.location == "/login/totp"
    # A recovery code logs in once.
    r = await other.second_factor(codes[0])
    assert r.status == 200
    assert "nog 9 over" in r.text
    third = webapp.browser()
    await third.password("nurse_o")
    assert (await third.second_factor(codes[0])).status == 401


async def test_full_session_is_sent_home_from_the_login_steps(webapp):
    b = await logged_in(webapp, "gp_a")
    assert (await b.get("/login/totp")).location == "/"
    assert (await b.get("/login/enrol")).location == "/"


async def test_admin_reset_forces_reenrolment_over_http(webapp):
    gp = await logged_in(webapp, "gp_a")
    webapp.svc.store.write_sync(
        lambda db: auth.reset_password(db, access.SYSTEM, "gp_a", "a brand new password")
    )
    assert (await gp.get("/account")).location == "/login"
    b = webapp.browser()
    r = await b.password("gp_a", "a brand new password")
    assert r.location == "/login/enrol"


# -- headers, errors ------------------------------------------------------------------------


def assert_security_headers(r: Any, where: str) -> None:
    csp = r.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp, where
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert "script-src 'self'" in csp, where
    assert r.headers.get("X-Content-Type-Options") == "nosniff", where
    assert r.headers.get("Referrer-Policy") == "no-referrer", where


async def test_security_headers_on_every_kind_of_response(web_template, aiohttp_client):

    @requires("account.self")
    async def boom(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("patient Jansen, BSN 999990019")  # must never reach the page

    def add_boom(app: web.Application) -> None:
        app.router.add_get("/boom", boom, name="boom")
        app.router.add_get("/boom.json", boom, name="boom_json")

    async with another_web(web_template, aiohttp_client, prepare=add_boom) as w:
        anon = w.browser()
        for path in ("/login", "/static/app.css", "/health", "/no-such-page", "/requests"):
            assert_security_headers(await anon.get(path), path)
        b = w.browser()
        await b.login("admin")
        for path in ("/account", "/requests", "/requests/UVZ-2025-000001", "/boom"):
            assert_security_headers(await b.get(path), path)
        assert_security_headers(
            await b.post("/logout/all", {"csrf_token": "x"}, csrf=False), "csrf refusal"
        )
        r = await b.get("/boom")
        assert r.status == 500
        assert re.search(r"Kenmerk: <code>[0-9a-f]{12}</code>", r.text)
        for leak in ("Traceback", "RuntimeError", "Jansen", "999990019"):
            assert leak not in r.text
        r = await b.get("/boom.json", headers={"Accept": "application/json"})
        body = json.loads(r.text)
        assert body["error"] == "internal"
        assert re.fullmatch(r"[0-9a-f]{12}", body["incident"])
        assert "Jansen" not in r.text


async def test_no_template_has_inline_script_or_style():
    templates = Path(__file__).resolve().parents[1] / "securemail" / "web" / "templates"
    for path in templates.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "<script>" not in text and "<script " not in text.replace('<script src="', ""), path
        assert " onclick=" not in text and " onload=" not in text, path
        assert "<style" not in text and ' style="' not in text, path


# -- API tokens ---------------------------------------------------------------------------


async def _token(webapp: WebApp, username: str, scopes: str) -> str:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, username), "test")
    )
    token, _ = webapp.svc.store.write_sync(
        lambda db: apitoken.create(db, gp, name="HIS", scopes=scopes, now=webapp.clock.now)
    )
    return token


async def test_api_without_or_with_a_bad_token_is_401_and_audited(webapp):
    b = webapp.browser()
    r = await b.request("GET", "/api/requests/UVZ-2025-000001/status")
    assert r.status == 401
    for header in ("Bearer smk_nope", "Basic Z3BfYTpwdw==", "Bearer "):
        r = await b.request(
            "GET", "/api/requests/UVZ-2025-000001/status", headers={"Authorization": header}
        )
        assert r.status == 401, header
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert webapp.audit("auth.fail")[-1]["outcome_detail"].startswith("api token:")


async def test_api_token_scope_and_organisation(webapp):
    ref = await webapp.send("gp_a", CENTRUM)
    read_only = await _token(webapp, "gp_a", "request:read")
    other_practice = await _token(webapp, "gp_b", "request:read request:send")
    b = webapp.browser()
    r = await b.request(
        "GET", f"/api/requests/{ref}/status", headers={"Authorization": f"Bearer {read_only}"}
    )
    assert r.status == 200
    status = json.loads(r.text)
    assert status["reference"] == ref
    assert BSN not in r.text
    # Out of scope: 403 and an audit row (and no CSRF token asked for: no cookie session).
    r = await b.request(
        "POST",
        "/api/requests",
        json={"request": {}, "passphrase": "x"},
        headers={"Authorization": f"Bearer {read_only}"},
    )
    assert r.status == 403
    assert webapp.audit("access.denied")[-1]["check_authz"] == "deny:request.send"
    # Another practice's request: 404, like a missing one.
    r = await b.request(
        "GET", f"/api/requests/{ref}/status", headers={"Authorization": f"Bearer {other_practice}"}
    )
    assert r.status == 404
    # In scope, no CSRF token needed; a bad body is the caller's error, not a refusal.
    r = await b.request(
        "POST",
        "/api/requests",
        json={"request": {}},
        headers={"Authorization": f"Bearer {other_practice}"},
    )
    assert r.status == 400
    assert json.loads(r.text)["context"]["field"] == "passphrase"


async def test_api_token_stops_when_revoked_or_owner_leaves(webapp):
    token = await _token(webapp, "gp_a", "request:read")
    b = webapp.browser()
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        await b.request("GET", "/api/requests/UVZ-2025-000009/status", headers=headers)
    ).status == 404
    webapp.svc.store.write_sync(
        lambda db: db.execute("UPDATE users SET active = 0 WHERE username = 'gp_a'")
    )
    assert (
        await b.request("GET", "/api/requests/UVZ-2025-000009/status", headers=headers)
    ).status == 401


async def test_gp_creates_and_revokes_a_token_in_the_browser(webapp):
    gp = await logged_in(webapp, "gp_a")
    r = await gp.post("/account/tokens", {"name": "Medicom", "scopes": "request:read"})
    assert r.status == 200
    token = re.search(r'<code class="secret">(smk_[^<]+)</code>', r.text)
    assert token
    api = webapp.browser()
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    assert (
        await api.request("GET", "/api/requests/UVZ-2025-000009/status", headers=headers)
    ).status == 404
    page = await gp.get("/account")
    assert token.group(1) not in page.text  # shown once
    (token_id,) = re.findall(r"/account/tokens/(\d+)/revoke", page.text)
    other = await logged_in(webapp, "gp_b")
    assert (await other.post(f"/account/tokens/{token_id}/revoke")).status == 404
    assert (await gp.post(f"/account/tokens/{token_id}/revoke")).location == "/account"
    assert (
        await api.request("GET", "/api/requests/UVZ-2025-000009/status", headers=headers)
    ).status == 401
    assert [r["outcome_detail"].split(" ")[0] for r in webapp.audit("auth.token")] == [
        "created",
        "revoked",
    ]


async def test_admin_resets_a_password_and_unlocks_in_the_browser(webapp):
    gp = await logged_in(webapp, "gp_a")
    admin = await logged_in(webapp, "admin")
    page = await admin.get("/admin")
    assert page.status == 200
    assert "gp_a" in page.text
    r = await admin.post("/admin/users/reset-password", {"username": "gp_a", "password": "short"})
    assert r.status == 400
    r = await admin.post(
        "/admin/users/reset-password", {"username": "gp_a", "password": "a brand new password"}
    )
    assert r.status == 200
    assert "1 sessie(s) beëindigd" in r.text
    assert "a brand new password" not in r.text
    assert (await gp.get("/account")).location == "/login"
    assert (await webapp.browser().password("gp_a", "a brand new password")).location == (
        "/login/enrol"
    )
    # A lock, lifted by the admin before it runs out
    b = webapp.browser()
    for i in range(webapp.settings.web.login_max_failures):
        await b.password("nurse_c", f"wrong {i}")
    assert (await b.password("nurse_c")).status == 429
    r = await admin.post("/admin/users/unlock", {"username": "nurse_c"})
    assert "gedeblokkeerd" in r.text
    assert (await b.login("nurse_c")).status == 303
    details = [row["outcome_detail"] for row in webapp.audit("user.update")]
    assert details[-1] == "unlocked"
    assert details[-2].startswith("password reset; second factor to enrol again")
