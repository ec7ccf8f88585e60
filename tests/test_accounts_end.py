"""Accounts that end: after a password reset or a deactivation the person's API tokens no
longer work and their sessions end at once, audited; the operator can list and revoke any
practice's token."""

from __future__ import annotations

from securemail.access import SYSTEM
from securemail.accounts import apitoken, auth
from tests.web_fixtures import WebApp


def _token(webapp: WebApp, username: str = "gp_a") -> str:
    gp = webapp.svc.store.read_sync(
        lambda db: auth.actor_for(db, auth.user_by_name(db, username), "test")
    )
    token, _ = webapp.svc.store.write_sync(
        lambda db: apitoken.create(db, gp, name="HIS", scopes="request:read", now=webapp.clock.now)
    )
    return token


async def _status(webapp: WebApp, token: str) -> int:
    r = await webapp.browser().request(
        "GET",
        "/api/requests/UVZ-2025-000001/status",
        headers={"Authorization": f"Bearer {token}"},
    )
    return r.status


async def test_an_old_token_fails_after_a_password_reset(webapp: WebApp) -> None:
    token = _token(webapp)
    assert await _status(webapp, token) == 404  # works: no such request
    webapp.svc.store.write_sync(
        lambda db: auth.reset_password(
            db, SYSTEM, "gp_a", "a-new-long-password-1", now=webapp.clock.now
        )
    )
    assert await _status(webapp, token) == 401
    rows = webapp.audit("user.update")
    assert "api tokens revoked" in rows[-1]["outcome_detail"]


async def test_deactivation_ends_sessions_and_tokens_at_once(webapp: WebApp) -> None:
    token = _token(webapp)
    b = webapp.browser()
    assert (await b.login("gp_a")).status == 303
    assert (await b.get("/requests")).status == 200
    ended, revoked = webapp.svc.store.write_sync(
        lambda db: auth.deactivate(db, SYSTEM, "gp_a", now=webapp.clock.now)
    )
    assert (ended, revoked) == (1, 1)
    assert (await b.get("/requests")).status == 303
    assert await _status(webapp, token) == 401
    assert "deactivated" in webapp.audit("user.update")[-1]["outcome_detail"]
    assert (await webapp.browser().password("gp_a")).location != "/login/totp"


async def test_the_operator_lists_and_revokes_any_token(webapp: WebApp) -> None:
    token = _token(webapp, "gp_b")
    tokens = webapp.svc.store.read_sync(apitoken.list_every)
    assert [t.prefix for t in tokens if token.startswith(t.prefix)]
    webapp.svc.store.write_sync(
        lambda db: apitoken.revoke(db, SYSTEM, tokens[-1].id, now=webapp.clock.now)
    )
    assert await _status(webapp, token) == 401


async def test_the_cli_deactivates_and_lists_and_revokes_tokens(webapp: WebApp) -> None:
    import subprocess
    import sys

    token = _token(webapp, "gp_b")
    home = str(webapp.settings.home)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "securemail", "account", *args, "--home", home],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return done.stdout

    listed = cli("tokens")
    assert "live" in listed
    token_id = next(
        line.split("\t")[0] for line in listed.splitlines() if token.startswith(line.split("\t")[1])
    )
    assert "revoked" in cli("revoke-token", "--token-id", token_id)
    assert await _status(webapp, token) == 401
    assert "deactivated" in cli("deactivate", "--username", "gp_a")
    assert webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, "gp_a").active) is False


def _notices_to(webapp: WebApp, address: str) -> list[dict[str, object]]:
    return webapp.svc.store.read_sync(
        lambda db: list(db["outbox"].rows_where("kind = 'notice' AND recipient = ?", [address]))
    )


async def test_the_person_is_told_when_an_admin_resets_their_account(webapp: WebApp) -> None:
    from securemail.message import notify

    webapp.svc.store.write_sync(
        lambda db: db["users"].update(
            auth.user_by_name(db, "gp_a").id, {"email": "dr.a@example.org"}
        )
    )
    b = webapp.browser()
    assert (await b.login("admin")).status == 303
    r = await b.post(
        "/admin/users/reset-password",
        {"username": "gp_a", "password": "a-new-long-password-1"},
    )
    assert r.status == 200
    [row] = _notices_to(webapp, "dr.a@example.org")
    mime = bytes(row["mime"])  # type: ignore[arg-type]
    notify.require_notice_mime(mime, webapp.settings)  # the fixed, patient-free text
    assert b"X-Securemail-Notice: account_reset" in mime
    assert str(row["reference"]).startswith("ACCT-")
    assert b"gp_a" not in mime  # no name or username: the reference says which account
    assert "person told (ACCT-" in webapp.audit("user.update")[-1]["outcome_detail"]


async def test_a_person_without_an_address_is_told_through_the_organisation(
    webapp: WebApp,
) -> None:
    user = webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, "gp_a"))
    webapp.svc.store.write_sync(lambda db: db["users"].update(user.id, {"email": ""}))
    org = webapp.svc.store.read_sync(
        lambda db: auth.org_by_id(db, user.org_id)  # type: ignore[arg-type]
    )
    if not org.notify_address:
        webapp.svc.store.write_sync(
            lambda db: db["organisations"].update(
                org.id, {"notify_address": "praktijk@example.org"}
            )
        )
    to = org.notify_address or "praktijk@example.org"
    webapp.svc.store.write_sync(
        lambda db: auth.reset_password(
            db,
            SYSTEM,
            "gp_a",
            "a-new-long-password-1",
            now=webapp.clock.now,
            settings=webapp.settings,
        )
    )
    assert len(_notices_to(webapp, to)) == 1
