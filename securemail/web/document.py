"""The request as a document on its page: the same HTML layout as the mail's rendering
(securemail.form.render), and the numbers a nurse taps to call the GP.

Invariant: the HTML comes only from the form's own autoescaped template (free text can never
inject markup); only its <body> is embedded, without the mail's page styles or the "answer
here" link (the page is that place). A phone link carries digits and a leading + only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from securemail.form import kinds, render
from securemail.services import Services

_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.DOTALL)
_NOT_DIAL = re.compile(r"[^0-9+]")


@dataclass(frozen=True, slots=True)
class Phone:
    """A number to call from the request's page: what the GP typed, and its tel: target."""

    label: str
    shown: str
    dial: str


def document_html(svc: Services, document: dict[str, Any]) -> Markup:
    """The body of the request's HTML rendering, ready to embed in the page."""
    req = kinds.document_from(document)  # every kind, by its form_id
    definition = svc.definition_for(req.form_id) or svc.definition
    html = render.render_request(definition, req, link=None).html
    found = _BODY.search(html)
    return Markup(found.group(1) if found else "")  # noqa: S704 - autoescaped template output


def dial(number: str) -> str:
    """'06-12 34 56 78' -> '0612345678'; '+31 20 ...' keeps its plus."""
    digits = _NOT_DIAL.sub("", number)
    return digits[:1] + digits[1:].replace("+", "")


def phones(document: dict[str, Any]) -> list[Phone]:
    """The GP's call-back number and the out-of-hours line from the signed request."""
    principal = document.get("principal") or {}
    out = []
    for key, label in (
        ("phone", "Bel de huisarts"),
        ("out_of_hours_phone", "Bel ANW / huisartsenpost"),
    ):
        number = str(principal.get(key) or "").strip()
        if dial(number):
            out.append(Phone(label, number, dial(number)))
    return out
