"""The privacy officer's console: integrity, exceptions, disclosure reports, user activity,
breach scope, consent register, delivery failures, volumes and review sign-off: /privacy.

Invariants: every route declares its policy action (the middleware's role gate), then
asks the access policy again with the officer's organisation (``_guard``: audit.view, or
audit.export for downloads); a refusal is a 403 with an ``access.denied`` row; every
page that shows audit rows records its own audit.view/export row in the same
transaction as the read; a BSN travels only in POST bodies and page content, never in
a URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web

from securemail.access import POLICY, Actor, Resource, is_allowed
from securemail.accounts import auth
from securemail.audit import export as audit_export
from securemail.audit import integrity as audit_integrity
from securemail.audit import report as audit_report
from securemail.audit import review as audit_review
from securemail.errors import AccessDeniedError, InputError, SecuremailError
from securemail.region import map as regionmap
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

OVERVIEW_DAYS = 7
REVIEW_KINDS_NL = {
    "disclosure": "Inzageoverzicht patiënt",
    "user": "Activiteit gebruiker",
    "exceptions": "Uitzonderingen",
    "delivery_failures": "Bezorgfouten",
    "volume": "Volumes per organisatiepaar",
    "integrity": "Integriteit auditlog",
    "breach": "Omvang datalek",
}
OUTCOMES_NL = {
    "no_findings": "geen bevindingen",
    "findings": "bevindingen",
    "action_required": "actie nodig",
}


async def _guard(request: web.Request, action: str, what: str) -> None:
    """Refuse with 403 and an access.denied row unless the actor may do action."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    if action == "audit.verify":
        # Verifying the whole chain shows no rows and belongs to no organisation: the role
        # decides (privacy officers and admins).
        if actor.role in POLICY[action]:
            return
    elif (
        is_allowed(actor, action, Resource(action.split(".")[0], org_id=actor.org_id))
        and actor.org_id
    ):
        return
    exc = AccessDeniedError(f"{actor.role} {actor.username} may not {action}", action=action)
    await svc.store.write(lambda db: audit_report.record_denial(db, actor, action, exc, what=what))
    raise exc


async def _run(request: web.Request, action: str, what: str, fn: Any) -> Any:
    svc = request.app[services_key]
    return await audit_report.run(
        svc.store, request[ACTOR], action, fn, what=what, source_id=svc.settings.gateway.source_id
    )


def _period(request: web.Request, values: Any, days: int) -> tuple[str, str, dict[str, str]]:
    """(start, end) in UTC from from/to dates in values; the dates back for the form."""
    svc = request.app[services_key]
    raw = {"from": str(values.get("from", "") or ""), "to": str(values.get("to", "") or "")}
    tz = svc.settings.deadlines.timezone
    start, end = audit_report.parse_period(
        raw["from"] or None, raw["to"] or None, tz=tz, now=svc.now(), default_days=days
    )
    zone = ZoneInfo(tz)

    def local_day(iso: str, back: timedelta = timedelta(0)) -> str:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")) - back
        return moment.astimezone(zone).date().isoformat()

    # The form shows the period actually used, defaults included (the end is inclusive).
    return start, end, {"from": local_day(start), "to": local_day(end, timedelta(milliseconds=1))}


def _ctx(request: web.Request, **kw: Any) -> dict[str, Any]:
    svc = request.app[services_key]
    return {
        "tz": svc.settings.deadlines.timezone,
        "labels": audit_export.LABELS_NL,
        "kinds": REVIEW_KINDS_NL,
        "outcomes": OUTCOMES_NL,
        **kw,
    }


#: Who ran the last full check, when it was not someone of the reader's own organisation.
OTHER_VERIFIER = "een functionaris van een andere organisatie of de beheerder"


def _own_verifier(db: Any, actor: Actor, status: Any) -> Any:
    """The chain is one for all organisations: its last verification may be another
    organisation's officer's, whose name is not this officer's to see."""
    last = status.last_verify
    name = (last or {}).get("user_name") or ""
    if not name:
        return status
    found = auth.find_user(db, name)
    if found is not None and found[0].org_id == actor.org_id:
        return status
    return dataclasses.replace(status, last_verify={**last, "user_name": OTHER_VERIFIER})


@requires("audit.view")
async def overview(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "overview")
    svc = request.app[services_key]
    actor = request[ACTOR]
    try:
        start, end, dates = _period(request, request.query, OVERVIEW_DAYS)
    except InputError:
        start, end, dates = _period(request, {}, OVERVIEW_DAYS)
    keys = await asyncio.to_thread(audit_integrity.trusted_keys, svc.settings.home)

    def read(db: Any) -> dict[str, Any]:
        return {
            "status": _own_verifier(db, actor, audit_review.integrity_status(db, actor, keys)),
            "exceptions": audit_report.exceptions(
                db,
                actor,
                start,
                end,
                working_hours=svc.settings.audit.working_hours,
                working_hours_by_role=svc.settings.audit.working_hours_by_role,
                working_hours_by_team=regionmap.hours_by_team(
                    db, svc.settings.audit.working_hours_by_team
                ),
                tz=svc.settings.deadlines.timezone,
            ),
            "failures": audit_report.delivery_failures(db, actor, start, end),
            "volumes": audit_report.volume_by_org_pair(db, actor, start, end),
            "names": audit_report.names(db),
        }

    data = await _run(request, "audit.view", "overview", read)
    return aiohttp_jinja2.render_template(
        "privacy/overview.html", request, _ctx(request, dates=dates, start=start, end=end, **data)
    )


@requires("audit.verify")
async def verify_now(request: web.Request) -> web.StreamResponse:
    """Recompute the whole chain and every checkpoint; the outcome becomes an audit.verify row."""
    await _guard(request, "audit.verify", "chain")
    svc = request.app[services_key]
    actor = request[ACTOR]
    keys = await asyncio.to_thread(audit_integrity.trusted_keys, svc.settings.home)
    try:
        report = await svc.store.read(lambda db: audit_integrity.verify(db, keys))
        ok, detail = True, report.summary()
    except SecuremailError as exc:
        ok, detail = False, exc.reason
    await svc.store.write(
        lambda db: audit_review.record_verification(db, actor, ok=ok, detail=detail)
    )
    raise web.HTTPSeeOther("/privacy" if actor.role == "privacy_officer" else "/")


@requires("audit.view")
async def patient_form(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "disclosure")
    return aiohttp_jinja2.render_template(
        "privacy/patient.html",
        request,
        _ctx(request, report=None, dates={"from": "", "to": ""}, error=None, table=[]),
    )


def _patient_query(
    request: web.Request, post: Any
) -> tuple[str, str, str, dict[str, str]] | web.Response:
    """(bsn, start, end, dates) of a patient form (the BSN from the body, never a URL), or
    the form again with the error (422; the BSN is not echoed)."""
    dates = {"from": str(post.get("from", "")), "to": str(post.get("to", ""))}
    try:
        start, end, dates = _period(request, post, 365)
        bsn = audit_report.parse_bsn(str(post.get("bsn", "")))
    except InputError as exc:
        return aiohttp_jinja2.render_template(
            "privacy/patient.html",
            request,
            _ctx(request, report=None, dates=dates, error=exc.reason, table=[]),
            status=422,
        )
    return bsn, start, end, dates


@requires("audit.view")
async def patient_report(request: web.Request) -> web.StreamResponse:
    """POST bsn, from, to, format (page|csv|pdf): the disclosure report, audited."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    fmt = str(post.get("format", "page"))
    fmt = fmt if fmt in ("page", "csv", "pdf") else "page"
    action = "audit.view" if fmt == "page" else "audit.export"
    await _guard(request, action, "disclosure")
    tz = svc.settings.deadlines.timezone
    query = _patient_query(request, post)
    if isinstance(query, web.Response):
        return query
    bsn, start, end, dates = query
    report = await _run(
        request,
        action,
        "disclosure",
        lambda db: audit_report.disclosure_report(
            db,
            actor,
            bsn,
            start,
            end,
            export="" if fmt == "page" else fmt,
        ),
    )
    # A download's name carries the date, never the BSN.
    stamp = svc.now().astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    if fmt == "csv":
        buf = io.StringIO()
        audit_export.disclosure_csv(report, buf, tz)
        return web.Response(
            body=buf.getvalue().encode("utf-8"),
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="inzage-{stamp}.csv"',
            },
        )
    if fmt == "pdf":
        pdf = await asyncio.to_thread(audit_export.disclosure_pdf, report, tz)
        return web.Response(
            body=pdf,
            headers={
                "Content-Type": "application/pdf",
                "Content-Disposition": f'attachment; filename="inzage-{stamp}.pdf"',
            },
        )
    return aiohttp_jinja2.render_template(
        "privacy/patient.html",
        request,
        _ctx(
            request,
            report=report,
            dates=dates,
            error=None,
            table=audit_export.disclosure_table(report, tz),
        ),
    )


@requires("privacy.disclosure_pdf")
async def patient_pdf(request: web.Request) -> web.StreamResponse:
    """POST bsn, from, to: the patient's version of the disclosure report (Wabvpz art. 15e)
    as a PDF to hand over; audited as privacy.disclosure_pdf. The file name is the date only
    and the response is never cached."""
    await _guard(request, "privacy.disclosure_pdf", "disclosure")
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    query = _patient_query(request, post)
    if isinstance(query, web.Response):
        return query
    bsn, start, end, _ = query
    report = await _run(
        request,
        "privacy.disclosure_pdf",
        "disclosure",
        lambda db: audit_report.patient_disclosure(db, actor, bsn, start, end),
    )
    tz = svc.settings.deadlines.timezone
    now = svc.now()
    pdf = await asyncio.to_thread(audit_export.patient_pdf, report, tz, created=now)
    day = now.astimezone(ZoneInfo(tz)).date().isoformat()
    return web.Response(
        body=pdf,
        headers={
            "Content-Type": "application/pdf",
            "Content-Disposition": f'attachment; filename="inzage-{day}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@requires("audit.view")
async def users(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "users")
    actor = request[ACTOR]
    rows = await _run(request, "audit.view", "users", lambda db: audit_report.org_users(db, actor))
    return aiohttp_jinja2.render_template("privacy/users.html", request, _ctx(request, users=rows))


@requires("audit.view")
async def user_activity(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "user")
    svc = request.app[services_key]
    actor = request[ACTOR]
    user_id = int(request.match_info["user_id"])
    start, end, dates = _period(request, request.query, 30)
    activity = await _run(
        request,
        "audit.view",
        f"user:{user_id}",
        lambda db: audit_report.user_activity(
            db, actor, user_id, start, end, source_id=svc.settings.gateway.source_id
        ),
    )
    return aiohttp_jinja2.render_template(
        "privacy/user.html", request, _ctx(request, activity=activity, dates=dates)
    )


@requires("audit.view")
async def breach(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "breach")
    svc = request.app[services_key]
    actor = request[ACTOR]
    start, end, dates = _period(request, request.query, 7)
    aware = svc.now()
    scope = await _run(
        request,
        "audit.view",
        "breach",
        lambda db: audit_review.breach_scope(db, actor, start, end, aware),
    )
    names = await svc.store.read(audit_report.names)
    return aiohttp_jinja2.render_template(
        "privacy/breach.html", request, _ctx(request, scope=scope, dates=dates, names=names)
    )


@requires("audit.view")
async def reviews(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "reviews")
    actor = request[ACTOR]
    rows = await _run(
        request,
        "audit.view",
        "reviews",
        lambda db: audit_review.list_reviews(db, actor),
    )
    return aiohttp_jinja2.render_template(
        "privacy/reviews.html", request, _ctx(request, reviews=rows, error=None, values={})
    )


@requires("audit.view")
async def review_post(request: web.Request) -> web.StreamResponse:
    await _guard(request, "audit.view", "reviews")
    actor = request[ACTOR]
    post = await request.post()
    values = {
        k: str(post.get(k, ""))
        for k in ("kind", "from", "to", "subject", "bsn", "outcome", "findings")
    }
    try:
        start, end, _ = _period(request, post, 30)
        await _run(
            request,
            "audit.view",
            "reviews",
            lambda db: audit_review.sign_off(
                db,
                actor,
                kind=values["kind"],
                start=start,
                end=end,
                outcome=values["outcome"],
                findings=values["findings"],
                subject=values["subject"],
                bsn=values["bsn"],
            ),
        )
    except InputError as exc:
        rows = await _run(
            request,
            "audit.view",
            "reviews",
            lambda db: audit_review.list_reviews(db, actor),
        )
        values.pop("bsn")  # never echo a BSN back into the page
        return aiohttp_jinja2.render_template(
            "privacy/reviews.html",
            request,
            _ctx(request, reviews=rows, error=exc.reason, values=values),
            status=422,
        )
    raise web.HTTPSeeOther("/privacy/reviews")


def setup(app: web.Application) -> None:
    # times show through the app-wide local_time filter (securemail.web.clock)
    app.router.add_get("/privacy", overview, name="privacy")
    app.router.add_post("/privacy/verify", verify_now, name="privacy_verify")
    app.router.add_get("/privacy/patient", patient_form, name="privacy_patient_form")
    app.router.add_post("/privacy/patient", patient_report, name="privacy_patient")
    app.router.add_post("/privacy/patient/inzage", patient_pdf, name="privacy_patient_pdf")
    app.router.add_get("/privacy/users", users, name="privacy_users")
    app.router.add_get(r"/privacy/user/{user_id:\d{1,12}}", user_activity, name="privacy_user")
    app.router.add_get("/privacy/breach", breach, name="privacy_breach")
    app.router.add_get("/privacy/reviews", reviews, name="privacy_reviews")
    app.router.add_post("/privacy/reviews", review_post, name="privacy_review_post")
