"""Bounded input: every request body is read, decoded and sized here, before any handler.

Owns the limits on what a client may send (body size is aiohttp's ``client_max_size``;
here the charset, the number of form fields, JSON's nesting) and the one answer to
input that breaks them: 400 with a clear message (InputError), never a 500 and never a
traceback in the log.

Invariant: when a handler runs, ``await request.post()`` and ``await request.json()``
return without raising on what the client sent (aiohttp caches the parsed form and the
body bytes, so the handler sees what was checked here), the form has at most
MAX_FORM_FIELDS fields, and a JSON body is nested at most MAX_JSON_DEPTH deep.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from securemail.errors import UnreadableInputError as InputError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Our largest page (the request form, ten procedure rows) posts about 250 fields.
MAX_FORM_FIELDS = 1000
#: The deepest document we take (request -> procedures -> row -> medication) is 4 levels.
MAX_JSON_DEPTH = 16
#: What a body may be written in; anything else is refused before decoding.
CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` (parsed JSON) nests at most ``limit`` deep. Iterative: O(nodes)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return True


def _charset_ok(request: web.Request) -> bool:
    charset = request.charset
    return charset is None or charset.lower() in CHARSETS


async def _check_form(request: web.Request) -> None:
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError, ValueError, AssertionError):
        raise InputError("the form could not be read (encoding or format)", field="body") from None
    if len(form) > MAX_FORM_FIELDS:
        raise InputError(f"more than {MAX_FORM_FIELDS} form fields", field="body")


async def _check_json(request: web.Request) -> None:
    body = await request.read()
    if not body.strip():
        return  # the handler says what it expected
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError("the body is not valid UTF-8 JSON", field="body") from None
    if not json_depth_ok(value):
        raise InputError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field="body")


@web.middleware
async def input_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the body before the login check reads it (CSRF) or a handler does."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        if request.can_read_body and not _charset_ok(request):
            raise InputError("send the body in UTF-8", field="charset")
        # A form is read even when the body is empty: an empty multipart body has no
        # boundary, and aiohttp raises on it wherever it is read first (the CSRF check).
        if request.content_type in FORM_TYPES:
            await _check_form(request)
        elif request.content_type == "application/json" and request.can_read_body:
            await _check_json(request)
    return await handler(request)
