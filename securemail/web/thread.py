"""The conversation on a request's or an ask's page: the thread's entries for those pages and
the posting of a message (the routes live with their pages, web/requests.py and
web/asks.py, which redirect after a post and re-render themselves after a refusal).

Thin: the rule who may read and post lives in the access policy (``thread.read``,
``thread.post``), the storing, sealing and notifying in securemail.exchange.thread. The
message travels in the POST body only; a refusal re-renders the page it came from with
the field error and the text kept (422), another organisation's reference is 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils
from aiohttp import web

from securemail.access import Actor, is_allowed
from securemail.exchange import thread
from securemail.form import request as forms
from securemail.web.keys import ACTOR, services_key


def entries(db: sqlite_utils.Database, actor: Actor, reference: str) -> list[dict[str, Any]] | None:
    """The thread for a page already allowed to this actor (audited thread.read), or None
    when this actor's role may not read threads (the page then shows none)."""
    if not is_allowed(actor, "thread.read", thread.subject_of(db, reference).resource):
        return None
    return thread.read(db, actor, reference)


def context(
    actor: Actor,
    reference: str,
    shown: list[dict[str, Any]] | None,
    *,
    page: str,
    purged: bool,
    body: str = "",
    errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The template's view of a thread (requests/detail.html and asks/detail.html)."""
    return {
        "thread": shown,
        "thread_action": f"/{page}/{reference}/thread",
        "thread_can_post": shown is not None and not purged,
        "thread_body": body,
        "thread_errors": errors or {},
        "thread_max": thread.MAX_BODY,
        "thread_full": shown is not None and len(shown) >= thread.MAX_MESSAGES,
    }


def _errors(exc: forms.FormInvalidError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        out.setdefault(e.field, []).append(e.message_nl)
    return out


@dataclass(frozen=True, slots=True)
class Refused:
    """A message not stored: the text to keep in the field, the errors, the status."""

    body: str
    errors: dict[str, list[str]]
    status: int


async def submit(request: web.Request) -> Refused | None:
    """Store the posted message (None), or say why not. 404 (hidden refusal) propagates."""
    svc = request.app[services_key]
    reference = request.match_info["reference"]
    body = str((await request.post()).get("body", ""))
    try:
        await thread.post(svc, request[ACTOR], reference, body)
    except forms.FormInvalidError as exc:
        return Refused(body, _errors(exc), 422)
    except thread.ThreadFullError as exc:
        return Refused(body, {"": [exc.message_nl()]}, 409)
    return None
