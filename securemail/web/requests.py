"""Request pages: the GP's form, preview, sign-and-send; the list; one request's page.

Patient data travels only in POST bodies and page content, never in URLs: a request's
page is addressed by its reference. A request drafted from a nurse's ask carries the ask's
reference (never its content) through the form, the preview and the send.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from securemail import deadlines
from securemail.access import org_of
from securemail.consent.model import ConsentRefusedError
from securemail.errors import InputError, NotFoundError, SecuremailError
from securemail.exchange import answer, asks, drafts, order_end, orders, record
from securemail.exchange import send as exchange
from securemail.form import request as forms
from securemail.form.definition import FormDefinition
from securemail.inbound import replies
from securemail.openpgp.keystore import RecipientKeyError
from securemail.region import directory
from securemail.region import map as regionmap
from securemail.region import view as regionview
from securemail.services import Services
from securemail.web import document, worklist
from securemail.web import thread as threadview
from securemail.web.keys import ACTOR, services_key
from securemail.web.middleware import requires

PREVIEW_REFERENCE = "UVZ-CONCEPT"
NO_USABLE_KEY = (
    "Dit wijkteam kan nu niet veilig worden bereikt: geen van de sleutels van het team is "
    "bruikbaar. Kies een ander team (bijvoorbeeld met de regiokaart hieronder) of bel het team; "
    "de beheerder is op de hoogte."
)
PROCEDURE_ROWS = 3


@dataclass(frozen=True, slots=True)
class ReceiverOption:
    """A team in the form's receiver list, with why it is there (preferred first)."""

    address: str
    name: str
    note: str  # "voorkeursaanbieder", "regionaal doorbemiddelingsadres", "vroeg om een verzoek"


def receiver_options(
    db: Any, practice_org_id: int, passing_on: str, ask: str = ""
) -> list[ReceiverOption]:
    """The practice's preferred providers in their order, then the regional passing-on
    address, then, for the request that answers an ask, the team that asked."""
    preferred = {t.id for t in directory.preferred_teams(db, practice_org_id)}
    out: list[ReceiverOption] = []
    for t in directory.allowed_receivers(db, practice_org_id, passing_on):
        note = (
            "voorkeursaanbieder"
            if t.id in preferred
            else "regionaal doorbemiddelingsadres"
            if t.address == passing_on
            else ""
        )
        out.append(ReceiverOption(t.address, t.name, note))
    seen = {o.address for o in out}
    out += [
        ReceiverOption(t.address, t.name, "vroeg om een verzoek")
        for t in asks.asking_teams(db, practice_org_id, ask or None)
        if t.address not in seen
    ]
    return out


def ask_of(post: Any) -> str:
    value = str(post.get("ask", "") or "")
    return value if asks.REFERENCE_RE.fullmatch(value) else ""


#: Form fields that steer the page, not the request: never parsed into the signed document.
NOT_IN_REQUEST = ("csrf_token", "ask", "specialism", "suggest", "choose", "draft")


def draft_of(post: Any) -> str:
    """The draft a form or preview continues (its random id), or ""."""
    value = str(post.get("draft", "") or "")
    return value if drafts.ID_RE.fullmatch(value) else ""


async def form_context(
    request: web.Request,
    values: dict[str, str],
    errors: dict[str, list[str]],
    ask: str = "",
    *,
    specialism: str = "",
    with_suggestions: bool = False,
    draft: str | None = None,
) -> dict[str, Any]:
    svc = request.app[services_key]
    if draft is None:
        # the post is read once and cached by aiohttp; a GET continues no draft
        draft = draft_of(await request.post()) if request.method == "POST" else ""
    actor = request[ACTOR]
    passing_on = svc.settings.gateway.passing_on_address
    pc4 = regionmap.pc4_of(values.get("patient.postcode", ""))
    part = regionview.part_of_week(svc.now(), svc.settings.region, svc.settings.deadlines.timezone)
    specialism = specialism if specialism in regionmap.SERVICES else ""

    def load(db: Any) -> tuple[list[ReceiverOption], list[regionview.Suggestion] | None]:
        teams = receiver_options(db, org_of(actor), passing_on, ask)
        if not with_suggestions:
            return teams, None
        # the same ordering as the receiver list: the practice's preferred providers first
        preferred = [t.id for t in directory.preferred_teams(db, org_of(actor))]
        return teams, regionview.suggest(
            regionmap.entries(db),
            preferred=preferred,
            passing_on=passing_on,
            pc4=pc4,
            specialism=specialism,
            part=part,
            now=svc.now(),
            stale_days=svc.settings.region.stale_days,
            selectable=frozenset(t.address for t in teams),
        )

    teams, suggestions = await svc.store.read(load)
    definition = _definition_of(svc, values)
    return {
        "suggestions": suggestions,
        "specialism": specialism,
        "pc4_known": pc4 is not None,
        "part_now": part,
        "region_parts": regionmap.PARTS,
        "region_services": regionmap.SERVICES,
        "definition": definition,
        "values": values,
        "errors": errors,
        "teams": teams,
        "procedure_rows": _rows_in(
            values, forms.list_limit(definition.request.child("procedures"))
        ),
        "general_errors": errors.get("", []),
        "ask": ask,
        "draft": draft,
        "draft_saved": False,
        "draft_form": "request-form",  # the session warning's "save now" submits this form
        "follow_up": None,
        "consent_step": "",  # consent.missing | consent.denied: the next step is shown
    }


def _definition_of(svc: Services, post: Any) -> FormDefinition:
    """The form a page or post is about, by its ``form_id`` (none or unknown: the execution
    request, whose form then refuses what does not belong to it)."""
    return svc.definition_for(post.get("form_id")) or svc.definition


def _rows_in(values: dict[str, str], limit: int) -> int:
    """Procedure rows to render: the rows filled in (at least PROCEDURE_ROWS), never more
    than the form allows, whatever index a post names (parse_form_post refuses those)."""
    idx = [
        int(part)
        for k in values
        if k.startswith("procedures.")
        and (part := k.split(".")[1]).isascii()
        and part.isdigit()
        and len(part) <= 6
    ]
    return min(limit, max(PROCEDURE_ROWS, max(idx) + 1 if idx else 0))


async def _parsed_post(request: web.Request, post: Any) -> dict[str, Any] | web.StreamResponse:
    """The posted form as nested data, or the form again (422) with the shape errors."""
    svc = request.app[services_key]
    try:
        return forms.parse_form_post(_definition_of(svc, post), post, ignore=NOT_IN_REQUEST)
    except forms.FormShapeError as exc:
        values = forms.flatten(exc.data)
        ctx = await form_context(request, values, _errors_by_field(exc), ask_of(post))
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)


def _errors_by_field(exc: forms.FormInvalidError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        out.setdefault(e.field, []).append(e.message_nl)
    return out


def local_minute(svc: Services) -> str:
    """Now on the region's wall clock, as a datetime-local input shows it (the server's own
    zone, often UTC, would date a request an hour or two early)."""
    return deadlines.local(svc.now(), svc.settings.deadlines).strftime("%Y-%m-%dT%H:%M")


#: How old the date the gateway put on a preview may be when the GP signs on that preview page
#: (the session ends after 15 idle minutes anyway); older or not the gateway's: dated anew.
PREVIEW_DATE_MINUTES = 60


def dated_at_signing(
    svc: Services, data: dict[str, Any], *, keep_preview: bool = False
) -> dict[str, Any]:
    """The request dated by the gateway on the region's clock, whatever the form said: at the
    preview (the page where the GP signs) "now"; at the send the preview's date is kept when it
    is a recent gateway date (so a double click is the same request), else "now" again."""
    now = local_minute(svc)
    given = str(data.get("issued_at", ""))
    if keep_preview and _recent_minute(svc, given):
        return data
    return {**data, "issued_at": now}


def _recent_minute(svc: Services, text: str) -> bool:
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M")
    except ValueError:
        return False
    here = deadlines.local(svc.now(), svc.settings.deadlines).replace(tzinfo=None)
    return timedelta(0) <= here - moment <= timedelta(minutes=PREVIEW_DATE_MINUTES)


@requires("request.create")
@aiohttp_jinja2.template("requests/form.html")
async def new_form(request: web.Request) -> dict[str, Any]:
    svc = request.app[services_key]
    values = {
        "kind": "nieuw",
        "urgency": "regulier",
        "issued_at": local_minute(svc),
    }
    # ?form=aanmelding_wijkverpleging: the care request; another kind is one query away
    chosen = svc.definition_for(request.query.get("form"))
    if chosen is None:
        raise web.HTTPNotFound()
    if chosen is not svc.definition:
        values["form_id"] = chosen.form_id
    return await form_context(request, values, {})


@requires("request.create")
async def preview(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    ask = ask_of(post)
    data = await _parsed_post(request, post)
    if isinstance(data, web.StreamResponse):
        return data
    data = dated_at_signing(svc, data)
    values = forms.flatten(data)
    try:
        prepared = await exchange.prepare(
            svc, actor, data, reference=PREVIEW_REFERENCE, ask=ask or None
        )
    except forms.FormInvalidError as exc:
        ctx = await form_context(request, values, _errors_by_field(exc), ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except ConsentRefusedError as exc:
        # before signing: the GP records the consent (the next step) and signs after that
        ctx = await form_context(request, values, {"": [exc.message_nl()]}, ask)
        ctx["consent_step"] = exc.code
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        ctx = await form_context(request, values, {"": [exc.message_nl()]}, ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    try:
        # a team whose keys cannot be used is said now, not after the GP has signed
        await exchange.usable_recipients(svc, prepared.team)
    except RecipientKeyError:
        ctx = await form_context(request, values, {"receiver.team_address": [NO_USABLE_KEY]}, ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    return aiohttp_jinja2.render_template(
        "requests/preview.html",
        request,
        {
            "text": prepared.rendered.text,
            "team": prepared.team,
            "payload": json.dumps(data, ensure_ascii=False),
            "error": None,
            "ask": ask,
            "draft": draft_of(post),
            # one send per preview: a double click or a resubmit gets the first request's page
            "send_token": secrets.token_urlsafe(18),
        },
    )


@requires("request.create")
async def suggest(request: web.Request) -> web.StreamResponse:
    """The form again, with the regional map's suggestions for the patient's postcode area;
    "Kies dit team" fills the receiver. The postcode travels in this POST body only."""
    post = await request.post()
    parsed = await _parsed_post(request, post)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    values = forms.flatten(parsed)
    ctx = await form_context(
        request,
        values,
        {},
        ask_of(post),
        specialism=str(post.get("specialism", "")),
        with_suggestions=True,
    )
    chosen = str(post.get("choose", ""))
    if chosen and any(s.address == chosen and s.selectable for s in ctx["suggestions"] or []):
        ctx["values"] = {**values, "receiver.team_address": chosen}
    return aiohttp_jinja2.render_template("requests/form.html", request, ctx)


@requires("request.send")
async def send(request: web.Request) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    post = await request.post()
    try:
        data = json.loads(str(post.get("payload", "")))
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise web.HTTPSeeOther("/requests/new")
    ask = ask_of(post)
    try:
        data = forms.check_bounds(_definition_of(svc, data), data)
    except forms.FormShapeError as exc:
        ctx = await form_context(request, forms.flatten(exc.data), _errors_by_field(exc), ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    if "back" in post:
        values = forms.flatten(data)
        ctx = await form_context(request, values, {}, ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx)
    passphrase = str(post.get("passphrase", ""))
    token = str(post.get("send_token", ""))
    data = dated_at_signing(svc, data, keep_preview=True)
    try:
        result = await exchange.send(
            svc,
            actor,
            data,
            passphrase,
            ask=ask or None,
            idempotency_key=f"form:{token}" if token else None,
        )
    except forms.FormInvalidError as exc:
        ctx = await form_context(request, forms.flatten(data), _errors_by_field(exc), ask)
        return aiohttp_jinja2.render_template("requests/form.html", request, ctx, status=422)
    except SecuremailError as exc:
        prepared_text = ""
        return aiohttp_jinja2.render_template(
            "requests/preview.html",
            request,
            {
                "text": prepared_text,
                "team": None,
                "ask": ask,
                "draft": draft_of(post),
                "payload": json.dumps(data, ensure_ascii=False),
                "send_token": token,  # refused, nothing stored: the same send may be retried
                "error": exc.message_nl(),
            },
            status=exc.http_status if exc.http_status != 400 else 422,
        )
    await _drop_draft(svc, actor, draft_of(post))
    raise web.HTTPSeeOther(f"/requests/{result.reference}")


async def _drop_draft(svc: Services, actor: Any, draft: str) -> None:
    """A sent request's draft goes (a double click finds it gone already: nothing to do)."""
    if not draft:
        return

    def drop(db: Any) -> None:
        with contextlib.suppress(NotFoundError):
            drafts.delete(db, actor, draft)

    await svc.store.write(drop)


@requires("request.view")
@aiohttp_jinja2.template("requests/detail.html")
async def detail(request: web.Request) -> dict[str, Any]:
    return await detail_context(request)


async def detail_context(
    request: web.Request,
    *,
    answer_values: dict[str, str] | None = None,
    answer_errors: dict[str, list[str]] | None = None,
    thread_body: str = "",
    thread_errors: dict[str, list[str]] | None = None,
    end_values: dict[str, str] | None = None,
    end_errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """One request's page (audited view); for a nurse of its current team, the answer form
    (open request) or the form to end the order (accepted, running); for both sides, the
    conversation (audited thread.read in the same write)."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]

    def load(db: Any) -> dict[str, Any]:
        # The replies on its thread are opened in the write that records this request.view.
        view = exchange.get_request(db, actor, reference)
        view["replies"] = [] if view["purged"] else replies.for_request(db, reference)
        view["thread"] = threadview.entries(db, actor, reference)
        view["can_end"] = order_end.can_end(db, actor, view)
        return view

    view = await svc.store.write(load)
    can_answer = (
        actor.role == "nurse"
        and view["state"] == "open"
        and view["kind"] != "intrekking"
        and view["team_id"] in actor.team_ids
    )
    other_teams = await answer.pass_on_choices(svc, view) if can_answer else []
    can_answer = can_answer and not view["purged"]
    purged = view["purged"] or view["document"] is None
    return {
        "r": view,
        "document_html": "" if purged else document.document_html(svc, view["document"]),
        "phones": [] if purged else document.phones(view["document"]),
        "can_answer": can_answer,
        "content_days": svc.settings.retention.content_days,
        # the answer form of the request's own kind (execution or care request)
        "answer_spec": (
            svc.definition_for((view["document"] or {}).get("form_id")) or svc.definition
        ).answer,
        "other_teams": other_teams,
        "answer_values": answer_values or {},
        "answer_errors": answer_errors or {},
        "can_end": view["can_end"],
        "end_reasons": orders.END_REASONS,
        "end_values": end_values or {},
        "end_errors": end_errors or {},
        **threadview.context(
            actor, reference, view["thread"], page="requests", purged=view["purged"],
            body=thread_body, errors=thread_errors,
        ),
    }  # fmt: skip


@requires("thread.post")
async def thread_post(request: web.Request) -> web.StreamResponse:
    """A message on the request's conversation (POST/Redirect/Get)."""
    refused = await threadview.submit(request)
    if refused is None:
        raise web.HTTPSeeOther(f"/requests/{request.match_info['reference']}#thread")
    ctx = await detail_context(request, thread_body=refused.body, thread_errors=refused.errors)
    return aiohttp_jinja2.render_template(
        "requests/detail.html", request, ctx, status=refused.status
    )


# -- copy, change (wijziging), extend (verlenging): the form prefilled from the earlier request --
#: URL word -> the new request's kind; a copy is a new request that supersedes nothing.
FOLLOW_UPS = {"wijzigen": "wijziging", "verlengen": "verlenging", "kopieren": "nieuw"}
#: Parts of the earlier document never carried over: its identity and the signer's block
#: (the principal comes from the signing GP's profile at the send).
NOT_CARRIED = ("reference", "supersedes", "principal", "issued_at", "form_version")


def follow_up_of(earlier: dict[str, Any], kind: str, issued_at: str) -> dict[str, str]:
    """The form's values for a change, extension or copy of an earlier signed request: its
    content as signed, the new kind, what it supersedes (not for a copy), dated now."""
    data = {k: v for k, v in earlier.items() if k not in NOT_CARRIED}
    values = forms.flatten(data)
    values.update({"kind": kind, "issued_at": issued_at})
    if kind != "nieuw":
        values["supersedes"] = str(earlier["reference"])
    return values


@requires("request.create")
async def follow_up_form(request: web.Request) -> web.StreamResponse:
    """GET /requests/{ref}/wijzigen|verlengen|kopieren: the form filled in on the server from the
    earlier request (audited request.view, scoped to the practice: another's is not found). A
    GP signs it; a practice assistant checks it and saves it as a draft for a GP."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    kind = FOLLOW_UPS[request.match_info["action"]]
    earlier = await svc.store.write(
        lambda db: exchange.follow_up_source(db, actor, reference, kind)
    )
    if earlier is None:
        raise web.HTTPGone(text="De inhoud van dit verzoek is verwijderd (bewaartermijn).")
    if kind == "verlenging":  # the order goes on: it starts the day after the earlier end
        today = deadlines.local(svc.now(), svc.settings.deadlines).date()
        values = forms.flatten(orders.extension_of(earlier, today))
        values["issued_at"] = local_minute(svc)
    else:
        values = follow_up_of(earlier, kind, local_minute(svc))
    ctx = await form_context(request, values, {}, draft="")
    ctx["follow_up"] = {"kind": kind, "of": reference}
    return aiohttp_jinja2.render_template("requests/form.html", request, ctx)


#: A request's reference as typed into "Vervolg op een eerder verzoek" (any form's prefix).
REFERENCE_TYPED = re.compile(r"[A-Z]{3}-[0-9]{4}-[0-9]{6}")


@requires("request.create")
async def follow_up_start(request: web.Request) -> web.StreamResponse:
    """GET /requests/vervolg?kenmerk=REF&soort=wijzigen|verlengen|kopieren: the drafts page's
    way to a follow-up by its reference (an assistant has no request list); it only redirects,
    the follow-up form checks access. A reference is no patient data, so the URL may hold it."""
    reference = request.query.get("kenmerk", "").strip().upper()[:32]
    action = request.query.get("soort", "")
    if action not in FOLLOW_UPS:
        raise InputError("unknown follow-up kind", field="soort")
    if not REFERENCE_TYPED.fullmatch(reference):
        raise InputError("not a request reference", field="kenmerk")
    raise web.HTTPSeeOther(f"/requests/{reference}/{action}")


@requires("request.record")
async def dossier(request: web.Request) -> web.StreamResponse:
    """GET /requests/{ref}/dossier.pdf|json|fhir: "voor het dossier", for the practice's own GPs."""
    return await dossier_response(request)


async def dossier_response(request: web.Request) -> web.StreamResponse:
    """The export as a download named by the reference only; never cached (patient data)."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference, fmt = request.match_info["reference"], request.match_info["fmt"]
    out = await svc.store.write(lambda db: record.export(db, svc, actor, reference, fmt))
    return web.Response(
        body=out.body,
        content_type=out.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{out.file_name}"',
            "Cache-Control": "no-store",
        },
    )


# -- a withdrawal (intrekking) from the earlier request: only the reason is asked ------------
WITHDRAW_REASON_MAX = 1000


def withdrawal_of(earlier: dict[str, Any], reason: str, issued_at: str) -> dict[str, Any]:
    """The withdrawal of an earlier request, prefilled on the server from its signed document:
    kind intrekking, supersedes it, dated now, the reason first in the binding instructions.
    The principal comes from the signing GP's profile at the send, as for every request."""
    data = {k: v for k, v in earlier.items() if k not in ("reference", "supersedes")}
    instructions = dict(data.get("instructions") or {})
    instructions["instructions"] = f"Reden van intrekking: {reason}"
    return {
        **data,
        "kind": "intrekking",
        "supersedes": earlier["reference"],
        "issued_at": issued_at,
        "instructions": instructions,
    }


async def _withdraw_page(
    request: web.Request, *, reason: str = "", errors: dict[str, list[str]], status: int = 200
) -> web.StreamResponse:
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    view = await svc.store.write(lambda db: exchange.get_request(db, actor, reference))
    can = view["state"] in ("open", "answered") and view["kind"] != "intrekking"
    can = can and not view["purged"]
    return aiohttp_jinja2.render_template(
        "requests/withdraw.html",
        request,
        {
            "r": view,
            "can_withdraw": can,
            "reason": reason,
            "errors": errors,
            "send_token": secrets.token_urlsafe(18),
        },
        status=status,
    )


@requires("request.create")
async def withdraw_form(request: web.Request) -> web.StreamResponse:
    return await _withdraw_page(request, errors={})


@requires("request.send")
async def withdraw_send(request: web.Request) -> web.StreamResponse:
    """Sign and send the withdrawal: the GP gives the reason and the signing passphrase; the
    rest is the earlier request as it was signed."""
    svc = request.app[services_key]
    actor = request[ACTOR]
    reference = request.match_info["reference"]
    post = await request.post()
    reason = " ".join(str(post.get("reason", "") or "").split())[:WITHDRAW_REASON_MAX]
    if not reason:
        errors = {"reason": ["Vul de reden van de intrekking in."]}
        return await _withdraw_page(request, errors=errors, status=422)
    view = await svc.store.write(lambda db: exchange.get_request(db, actor, reference))
    if view["purged"] or view["document"] is None:
        errors = {"": ["De inhoud van dit verzoek is verwijderd; intrekken kan niet meer."]}
        return await _withdraw_page(request, reason=reason, errors=errors, status=409)
    data = withdrawal_of(view["document"], reason, local_minute(svc))
    token = str(post.get("send_token", ""))
    try:
        result = await exchange.send(
            svc,
            actor,
            data,
            str(post.get("passphrase", "")),
            idempotency_key=f"withdraw:{token}" if token else None,
        )
    except SecuremailError as exc:
        errors = {"": [exc.message_nl()]}
        if isinstance(exc, forms.FormInvalidError):
            errors = {"": [e.message_nl for e in exc.errors]}
        return await _withdraw_page(
            request,
            reason=reason,
            errors=errors,
            status=exc.http_status if exc.http_status != 400 else 422,
        )
    raise web.HTTPSeeOther(f"/requests/{result.reference}")


def setup(app: web.Application) -> None:
    app.router.add_get("/requests", worklist.list_page, name="requests")
    app.router.add_post("/requests", worklist.list_page, name="requests_search")
    app.router.add_get("/requests/new", new_form, name="request_new")
    app.router.add_post("/requests/preview", preview, name="request_preview")
    app.router.add_post("/requests/suggest", suggest, name="request_suggest")
    app.router.add_post("/requests/send", send, name="request_send")
    app.router.add_get("/requests/vervolg", follow_up_start, name="request_follow_up_start")
    app.router.add_get(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}", detail, name="request_detail"
    )
    app.router.add_post(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/thread",
        thread_post,
        name="request_thread",
    )
    app.router.add_get(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/dossier.{fmt:pdf|json|fhir}",
        dossier,
        name="request_dossier",
    )
    app.router.add_get(
        r"/requests/{reference:[A-Z]{3}-[0-9]{4}-[0-9]{6}}/{action:wijzigen|verlengen|kopieren}",
        follow_up_form,
        name="request_follow_up",
    )
    app.router.add_get(
        r"/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}/withdraw",
        withdraw_form,
        name="request_withdraw",
    )
    app.router.add_post(
        r"/requests/{reference:UVZ-[0-9]{4}-[0-9]{6}}/withdraw",
        withdraw_send,
        name="request_withdraw_send",
    )
