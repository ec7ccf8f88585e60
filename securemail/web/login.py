"""Login and logout. A password opens a session; the second factor (TOTP) completes it."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from securemail import audit, auth, session
from securemail.web.keys import SESSION, services_key
from securemail.web.middleware import access_point


def set_session_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    settings = request.app[services_key].settings
    response.set_cookie(
        session.COOKIE, sid, httponly=True, samesite="Strict",
        secure=settings.web.secure_cookies, path="/",
    )


@aiohttp_jinja2.template("login.html")
async def login_page(request: web.Request) -> dict[str, object]:
    return {"error": None, "username": ""}


async def login_post(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    form = await request.post()
    username = str(form.get("username", "")).strip().lower()
    password = str(form.get("password", ""))
    now = svc.now()
    found = await svc.store.read(lambda db: auth.find_user(db, username))
    ok = found is not None and found[0].active and auth.check_password(password, found[1])
    src = svc.settings.gateway.source_id
    ap = access_point(request)
    if not ok:
        await svc.store.write(lambda db: audit.record(db, audit.AuditEvent(
            event_code="auth.fail", user_name=username[:64], access_point=ap,
            outcome="refused", outcome_detail="bad username or password"), source_id=src))
        return aiohttp_jinja2.render_template(
            "login.html", request,
            {"error": "Gebruikersnaam of wachtwoord onjuist.", "username": username}, status=401,
        )
    assert found is not None
    user = found[0]

    def start(db):  # type: ignore[no-untyped-def]
        sid, _ = session.create(db, user.id, now=now, stage="full", access_point=ap)
        actor = auth.actor_for(db, user, ap)
        audit.record(db, audit.AuditEvent.of(actor, "auth.login"), source_id=src)
        return sid

    sid = await svc.store.write(start)
    response = web.HTTPSeeOther("/")
    set_session_cookie(request, response, sid)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    sess = request[SESSION]
    await svc.store.write(lambda db: session.end(db, sess))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(session.COOKIE, path="/")
    raise response


def setup(app: web.Application) -> None:
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_post, name="login_post")
    app.router.add_post("/logout", logout, name="logout")
