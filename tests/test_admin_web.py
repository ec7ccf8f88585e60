"""Administration in the browser (issue 20): deactivating a person who leaves ends the account,
every session and every API token at once; the delivery queue's retry and cancel; each
audited, each a redirect (a refresh changes nothing). Real app over HTTP (webapp), sqlite."""

from __future__ import annotations

from securemail.accounts import apitoken, auth
from tests.test_withdraw_web import CENTRUM
from tests.web_fixtures import Browser, WebApp


async def _login(webapp: WebApp, username: str) -> Browser:
    b = webapp.browser()
    r = await b.login(username)
    assert r.status == 303
    return b


def _token(webapp: WebApp, username: str) -> str:
    def make(db):  # type: ignore[no-untyped-def]
        gp = auth.actor_for(db, auth.user_by_name(db, username), "test")
        return apitoken.create(db, gp, name="HIS", scopes="request:read", now=webapp.clock.now)[0]

    return webapp.svc.store.write_sync(make)


async def test_a_deactivated_persons_sessions_and_tokens_stop_at_once(webapp: WebApp) -> None:
    reference = await webapp.send("gp_a", CENTRUM)
    gp = await _login(webapp, "gp_a")
    gp_phone = await _login(webapp, "gp_a")  # a second session, on the phone
    token = _token(webapp, "gp_a")
    api = f"/api/requests/{reference}/status"
    auth_header = {"Authorization": f"Bearer {token}"}
    assert (await gp.get("/requests")).status == 200
    assert (await gp.get(api, headers=auth_header)).status == 200

    admin = await _login(webapp, "admin")
    r = await admin.post("/admin/users/deactivate", {"username": "gp_a"})
    assert (r.status, r.location) == (303, "/admin?gedaan=gedeactiveerd")
    page = await admin.get(r.location)
    assert "gp_a (inactief)" in page.text and "direct beëindigd" in page.text

    # at once: the next request of each session and of the token is refused
    for b in (gp, gp_phone):
        r = await b.get("/requests")
        assert (r.status, r.location) == (303, "/login")
    assert (await gp.get(api, headers=auth_header)).status == 401
    # and no new login
    again = webapp.browser()
    r = await again.password("gp_a")
    assert r.location != "/login/totp"
    (row,) = [x for x in webapp.audit("user.update") if "deactivated" in x["outcome_detail"]]
    assert row["user_name"] == "admin" and row["object_id"] == "gp_a"
    assert "2 sessions ended; 1 api tokens revoked" in row["outcome_detail"]
    # a refresh of the page after the redirect changes nothing
    await admin.get("/admin?gedaan=gedeactiveerd")
    assert (
        len([x for x in webapp.audit("user.update") if "deactivated" in x["outcome_detail"]]) == 1
    )


async def test_deactivate_needs_the_admin_and_csrf(webapp: WebApp) -> None:
    gp = await _login(webapp, "gp_b")
    assert (await gp.post("/admin/users/deactivate", {"username": "gp_a"})).status == 403
    admin = await _login(webapp, "admin")
    r = await admin.post("/admin/users/deactivate", {"username": "gp_a"}, csrf=False)
    assert r.status == 403
    unknown = await admin.post("/admin/users/deactivate", {"username": "niemand"})
    assert unknown.status == 404
    active = webapp.svc.store.read_sync(lambda db: auth.user_by_name(db, "gp_a").active)
    assert active


def _status(webapp: WebApp, reference: str) -> str:
    return webapp.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT status FROM outbox WHERE reference = ? ORDER BY id DESC", [reference]
        ).fetchone()[0]
    )


async def test_the_queue_cancel_and_retry(webapp: WebApp) -> None:
    reference = await webapp.send("gp_a", CENTRUM)  # no worker runs: it stays queued
    admin = await _login(webapp, "admin")
    page = await admin.get("/admin/queue")
    assert page.status == 200 and reference in page.text and "Annuleren" in page.text
    r = await admin.post("/admin/queue/cancel", {"reference": reference})
    assert (r.status, r.location) == (303, "/admin/queue?gedaan=geannuleerd")
    assert _status(webapp, reference) == "cancelled"
    assert webapp.audit("outbox.cancel")[-1]["user_name"] == "admin"
    # nothing left to cancel: said on the page, nothing changed
    again = await admin.post("/admin/queue/cancel", {"reference": reference})
    assert again.status == 409 and "error" in again.text
    # a failed delivery goes again with the same sealed bytes
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE outbox SET status = 'failed' WHERE reference = ?", [reference]
        )
    )
    assert "Opnieuw versturen" in (await admin.get("/admin/queue")).text
    r = await admin.post("/admin/queue/retry", {"reference": reference})
    assert (r.status, r.location) == (303, "/admin/queue?gedaan=opnieuw")
    assert _status(webapp, reference) == "queued"
    assert webapp.audit("outbox.retry")[-1]["user_name"] == "admin"


async def test_the_queue_is_the_admins_only(webapp: WebApp) -> None:
    reference = await webapp.send("gp_a", CENTRUM)
    for username in ("gp_a", "nurse_c", "privacy_a"):
        b = await _login(webapp, username)
        assert (await b.get("/admin/queue")).status == 403
        assert (await b.post("/admin/queue/cancel", {"reference": reference})).status == 403
    admin = await _login(webapp, "admin")
    r = await admin.post("/admin/queue/cancel", {"reference": reference}, csrf=False)
    assert r.status == 403 and _status(webapp, reference) == "queued"
