"""Guessing stopped wherever a secret is checked: the GP's signing passphrase (the tenth
wrong one within a minute is refused without asking gpg), the source-address throttle
(bounded, expiring, a delay that grows but never keeps anyone out for good)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from securemail.accounts import auth
from securemail.exchange import send as exchange
from securemail.guesses import Guesses
from securemail.openpgp.keyring import SigningError
from tests.clock import Clock, working_wednesday
from tests.gateway import GP_PASSPHRASE, example
from tests.web_fixtures import WebApp


async def test_the_tenth_wrong_passphrase_in_a_minute_is_refused_without_gpg(
    webapp: WebApp,
) -> None:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, "gp_a"), "test")
    )
    to = "centrum@zorg.example"
    for _ in range(9):
        with pytest.raises(SigningError):
            await exchange.send(webapp.svc, gp, example(), "wrong-passphrase", to=to)
    # The right passphrase now: refused all the same, so gpg was not asked.
    with pytest.raises(exchange.PassphraseThrottledError) as caught:
        await exchange.send(webapp.svc, gp, example(), GP_PASSPHRASE, to=to)
    assert caught.value.http_status == 429
    refusals = webapp.audit("request.send")
    assert refusals[-1]["outcome_detail"] == "seal.passphrase_throttled"
    webapp.clock.advance(seconds=61)
    result = await exchange.send(webapp.svc, gp, example(), GP_PASSPHRASE, to=to)
    assert result.reference


def test_guesses_delay_grows_and_expires() -> None:
    clock = Clock(working_wednesday())
    g = Guesses(
        3, timedelta(minutes=1), base_delay=timedelta(minutes=1), max_delay=timedelta(minutes=8)
    )
    for _ in range(3):
        g.fail("a", clock.now)
    assert g.blocked("a", clock.now)
    clock.advance(seconds=61)
    assert not g.blocked("a", clock.now)
    for _ in range(3):
        g.fail("a", clock.now)
    assert g.blocked_until("a", clock.now) == clock.now + timedelta(minutes=2)  # grew
    for _ in range(30):  # keeps guessing: the refusal never exceeds max_delay
        for _ in range(3):
            g.fail("a", clock.now)
    until = g.blocked_until("a", clock.now)
    assert until is not None and until - clock.now <= timedelta(minutes=8)
    clock.advance(minutes=17)  # quiet for longer than max_delay: forgotten entirely
    assert not g.blocked("a", clock.now) and len(g) == 0


def test_guesses_table_is_bounded() -> None:
    clock = Clock(working_wednesday())
    g = Guesses(
        3,
        timedelta(minutes=1),
        base_delay=timedelta(minutes=1),
        max_delay=timedelta(hours=1),
        max_keys=100,
    )
    for i in range(10_000):
        g.fail(f"10.0.{i // 256}.{i % 256}", clock.now)
    assert len(g) == 100


async def _logged_in(webapp: WebApp, username: str):  # type: ignore[no-untyped-def]
    b = webapp.browser()
    r = await b.login(username)
    assert (r.status, r.location) == (303, "/")
    return b


async def test_repairing_the_authenticator_is_no_password_oracle(webapp: WebApp) -> None:
    b = await _logged_in(webapp, "nurse_c")
    for _ in range(webapp.settings.web.login_max_failures):
        await b.get("/account/totp")
        r = await b.post("/account/totp", {"password": "guess", "code": "000000"})
        assert r.status >= 400
    fails = [e for e in webapp.audit("auth.fail") if e["object_id"] == "nurse_c"]
    assert len(fails) >= webapp.settings.web.login_max_failures
    assert webapp.audit("auth.lockout")
    # Locked now: even the right password is not checked from this session.
    from tests.auth_fixtures import PASSWORD

    await b.get("/account/totp")
    r = await b.post("/account/totp", {"password": PASSWORD, "code": "000000"})
    assert "geblokkeerd" in r.text


async def test_new_recovery_codes_need_the_password_and_a_code(webapp: WebApp) -> None:
    from tests.auth_fixtures import PASSWORD

    b = await _logged_in(webapp, "gp_a")
    r = await b.post("/account/recovery-codes", {})
    assert r.status == 422
    r = await b.post("/account/recovery-codes", {"password": PASSWORD, "code": "000000"})
    assert r.status == 422 and "code klopt niet" in r.text
    r = await b.post(
        "/account/recovery-codes", {"password": PASSWORD, "code": webapp.fresh_code("gp_a")}
    )
    assert r.status == 200


async def test_an_outsider_cannot_keep_a_person_locked_out(web_template, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    from tests.web_fixtures import another_web

    outsider = {"X-Forwarded-For": "203.0.113.9"}
    person = {"X-Forwarded-For": "198.51.100.7"}
    async with another_web(
        web_template, aiohttp_client, web_settings={"trusted_proxies": "127.0.0.1/32"}
    ) as w:
        attacker = w.browser()
        attacker.session.headers.update(outsider)
        for i in range(w.settings.web.login_max_failures):
            r = await attacker.password("nurse_c", f"guess-{i}")
        assert r.status == 429 and w.audit("auth.lockout")
        from tests.auth_fixtures import PASSWORD

        # The attacker's address stays locked out, even with the right password...
        assert (await attacker.password("nurse_c", PASSWORD)).status == 429
        # ...but the person, from their own address, logs in (password and code) at once,
        # which lifts the lock: no administrator needed.
        b = w.browser()
        b.session.headers.update(person)
        r = await b.login("nurse_c")
        assert (r.status, r.location) == (303, "/")
        assert (
            w.svc.store.read_sync(
                lambda db: __import__("securemail.accounts.totp", fromlist=["x"]).locked_until(
                    db, auth.user_by_name(db, "nurse_c").id, w.clock.now
                )
            )
            is None
        )
