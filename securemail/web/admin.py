"""The gateway operator's pages: people and their accounts (no patient content anywhere).

Invariants: every route is ``user.manage`` or ``outbox.manage`` (admin only); a password
reset ends every session of that person and forces a new authenticator
(``auth.reset_password``), an unlock lifts a temporary lock, a deactivation ends the account,
its sessions and its API tokens in one transaction (``auth.deactivate``), all audited as
``user.update``; the delivery queue's retry and cancel are ``outbox.retry`` /
``outbox.cancel`` rows. Deactivation and the queue's changes answer with a redirect
(Post/Redirect/Get: a refresh changes nothing). The new password travels only in the POST
body and is never shown or logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp_jinja2
import sqlite_utils
from aiohttp import web

from securemail.access import Resource, require
from securemail.accounts import auth, totp
from securemail.delivery import outbox
from securemail.errors import InputError, NotFoundError, SecuremailError
from securemail.region import directory
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires


def people(db: sqlite_utils.Database, now: datetime) -> list[dict[str, Any]]:
    """Every account with its organisation and second-factor state, by username."""
    orgs = {o.id: o for o in directory.list_orgs(db)}
    out = []
    for row in db.table("users").rows_where(order_by="username"):
        until = totp.locked_until(db, row["id"], now)
        org = orgs.get(row["org_id"])
        out.append(
            {
                "username": row["username"],
                "name": row["name"],
                "role": row["role"],
                "org": f"{org.name} ({org.code})" if org else "",
                "active": bool(row["active"]),
                "paired": not totp.needs_enrolment(db, row["id"]),
                "locked_until": until.isoformat(timespec="minutes") if until else "",
            }
        )
    return out


async def _page(
    request: web.Request, *, notice: str | None = None, error: str | None = None, status: int = 200
) -> web.StreamResponse:
    svc = request.app[services_key]
    require(request[ACTOR], "user.manage", Resource("user"))
    rows = await svc.store.read(lambda db: people(db, svc.now()))
    return aiohttp_jinja2.render_template(
        "admin/users.html",
        request,
        {"people": rows, "notice": notice, "error": error},
        status=status,
    )


@requires("user.manage")
async def users_page(request: web.Request) -> web.StreamResponse:
    return await _page(request, notice=DONE_NOTICES.get(request.query.get("gedaan", "")))


@requires("user.manage")
async def reset_password(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    form = await request.post()
    username = str(form.get("username", ""))
    password = str(form.get("password", ""))
    try:
        ended = await svc.store.write(
            lambda db: auth.reset_password(
                db,
                request[ACTOR],
                username,
                password,
                source_id=svc.settings.gateway.source_id,
                now=svc.now(),
                settings=svc.settings,
            )
        )
    except (InputError, NotFoundError) as exc:
        return await _page(request, error=exc.message_nl(), status=exc.http_status)
    return await _page(
        request,
        notice=(
            f"Nieuw wachtwoord voor {username} ingesteld; {ended} sessie(s) beëindigd. Bij de "
            "volgende login koppelt deze persoon opnieuw een authenticator-app."
        ),
    )


@requires("user.manage")
async def unlock(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    username = str((await request.post()).get("username", ""))
    try:
        await svc.store.write(
            lambda db: auth.unlock(
                db, request[ACTOR], username, source_id=svc.settings.gateway.source_id
            )
        )
    except (InputError, NotFoundError) as exc:
        return await _page(request, error=exc.message_nl(), status=exc.http_status)
    return await _page(request, notice=f"{username} is gedeblokkeerd.")


#: What the redirect after a change may say (by key, so no text travels in the URL).
DONE_NOTICES = {
    "gedeactiveerd": "Account gedeactiveerd: inloggen kan niet meer; alle sessies en API-tokens "
    "zijn direct beëindigd.",
    "opnieuw": "De bezorging staat weer in de wachtrij.",
    "geannuleerd": "De bezorging is geannuleerd.",
}


@requires("user.manage")
async def deactivate(request: web.Request) -> web.StreamResponse:
    """End a person's account: no login, every session and API token ended at once."""
    svc = request.app[services_key]
    username = str((await request.post()).get("username", ""))
    try:
        await svc.store.write(
            lambda db: auth.deactivate(db, request[ACTOR], username, now=svc.now())
        )
    except (InputError, NotFoundError) as exc:
        return await _page(request, error=exc.message_nl(), status=exc.http_status)
    raise web.HTTPSeeOther("/admin?gedaan=gedeactiveerd")


# -- the delivery queue --------------------------------------------------------------------
QUEUE_STATUSES = ("failed", "stopped", "retrying", "queued")


@requires("outbox.manage")
async def queue_page(request: web.Request) -> web.StreamResponse:
    return await _queue_page(request)


async def _queue_page(request: web.Request, error: str | None = None) -> web.StreamResponse:
    """Deliveries that need a look: failed, stopped, retrying, queued (references and
    outcomes only; never a message's content)."""
    svc = request.app[services_key]
    require(request[ACTOR], "outbox.manage", Resource("outbox"))

    def load(db: sqlite_utils.Database) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for status in QUEUE_STATUSES:
            rows += outbox.list_rows(db, status, limit=200)
        return rows

    rows = await svc.store.read(load)
    notice = None if error else DONE_NOTICES.get(request.query.get("gedaan", ""))
    return aiohttp_jinja2.render_template(
        "admin/queue.html",
        request,
        {"rows": rows, "notice": notice, "error": error},
        status=409 if error else 200,
    )


async def _queue_change(request: web.Request, change: Any, done: str) -> web.StreamResponse:
    svc = request.app[services_key]
    reference = str((await request.post()).get("reference", ""))
    now = svc.now().timestamp()
    try:
        await svc.store.write(lambda db: change(db, reference, request[ACTOR], now=now))
    except SecuremailError as exc:
        return await _queue_page(request, exc.message_nl())
    raise web.HTTPSeeOther(f"/admin/queue?gedaan={done}")


@requires("outbox.manage")
async def queue_retry(request: web.Request) -> web.StreamResponse:
    return await _queue_change(request, outbox.retry, "opnieuw")


@requires("outbox.manage")
async def queue_cancel(request: web.Request) -> web.StreamResponse:
    return await _queue_change(request, outbox.cancel, "geannuleerd")


def setup(app: web.Application) -> None:
    app.router.add_get("/admin", users_page, name="admin")
    app.router.add_post("/admin/users/deactivate", deactivate, name="admin_deactivate")
    app.router.add_get("/admin/queue", queue_page, name="admin_queue")
    app.router.add_post("/admin/queue/retry", queue_retry, name="admin_queue_retry")
    app.router.add_post("/admin/queue/cancel", queue_cancel, name="admin_queue_cancel")
    app.router.add_post("/admin/users/reset-password", reset_password, name="admin_reset_password")
    app.router.add_post("/admin/users/unlock", unlock, name="admin_unlock")
