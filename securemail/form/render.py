"""Render an execution request for people and machines: Dutch text/plain, HTML and canonical JSON.

Owns the jinja2 environment of each forms folder and the view the templates see:
sections and rows whose labels, option labels and procedure names all come from the
form definition, with dates shown Dutch style (dd-mm-jjjj).

Invariant: one Environment per template folder, built once (autoescape on for
``*.html.j2``, StrictUndefined, no auto-reload), so a free-text field can never
inject markup and a missing variable fails loudly instead of rendering blank;
``RenderedDocument.json`` is exactly the request's ``canonical_json()``, the
bytes that are signed; a risky-procedure line is always labelled "niet voorbehouden".
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2

from securemail.form.definition import FieldSpec, FormDefinition
from securemail.form.kinds import RequestDocument

#: Shown with every risky-procedure line: no Wet BIG order, but the GP's instructions.
NOT_RESERVED = "niet voorbehouden"

TEXT_TEMPLATE = "request.txt.j2"
HTML_TEMPLATE = "request.html.j2"


@dataclass(frozen=True, slots=True)
class RenderedDocument:
    """The three forms of one request that travel together inside the encryption."""

    text: str
    html: str
    json: bytes


@dataclass(frozen=True, slots=True)
class Row:
    """One field as shown: ``value`` is display text, a bool (the template words it) or None."""

    id: str
    label: str
    value: str | bool | None
    multiline: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    """A section, a list, or one line of a list; blocks nest (a line's medication)."""

    id: str
    label: str
    rows: tuple[Row, ...] = ()
    blocks: tuple[Block, ...] = ()


@functools.cache
def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Templates are part of the versioned form; a deploy restarts the process.
        auto_reload=False,
    )


def render_request(
    definition: FormDefinition,
    req: RequestDocument,
    *,
    link: str | None = None,
    forwarded: str | None = None,
    attachments: tuple[str, ...] = (),
) -> RenderedDocument:
    """The Dutch text and HTML renderings and the canonical JSON of a validated request.

    ``link`` is the request's page in the web app, where the team answers (the reference
    only, never patient data); ``forwarded`` a note that another team passed it on (who, and
    their reason), shown above the request. Neither is part of the signed JSON.
    """
    env = _environment(definition.template_dir)
    view = request_view(definition, req)
    view["link"] = link
    view["forwarded"] = forwarded
    view["attachments"] = attachments
    return RenderedDocument(
        text=env.get_template(TEXT_TEMPLATE).render(view),
        html=env.get_template(HTML_TEMPLATE).render(view),
        json=req.canonical_json(),
    )


#: Width of a quoted line: the text template wraps at 76, a "> " line of 72 stays whole.
QUOTE_WIDTH = 70


def quoted(text: str) -> str:
    """Someone else's free text as a quotation: wrapped here, then every line "> ", so no line
    of it can pass for a heading or a section of the GP's order (a "== ... ==" line, say).
    Control characters other than the newline are dropped (the form refused them already;
    this holds for stored text too)."""
    clean = "".join(c for c in text if c == "\n" or c.isprintable())
    lines: list[str] = []
    for paragraph in clean.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, QUOTE_WIDTH, break_on_hyphens=False) or [""]
    return "\n".join(f"> {line}".rstrip() for line in lines)


def pass_on_note(
    *, from_team: str, to_team: str, nurse: str, reason: str, declined: bool = False
) -> str:
    """What the next team reads above a passed-on request: who passed it on (or, when
    ``declined``, that the team declined and the gateway sent it to the passing-on desk),
    and the reason as a quotation attributed to the nurse who wrote it, never as text of
    the GP's."""
    how = (
        f"{from_team} heeft dit verzoek afgewezen zonder ander team te noemen; de gateway "
        f"heeft het daarom doorgezet naar het doorbemiddelingspunt {to_team}.\n"
        if declined
        else f"{from_team} heeft dit verzoek doorbemiddeld naar {to_team}.\n"
    )
    return (
        how + f"Reden, geschreven door {nurse} ({from_team}), niet door de huisarts:\n"
        f"{quoted(reason)}"
    )


def request_view(definition: FormDefinition, req: RequestDocument) -> dict[str, Any]:
    """What the templates see: the request as labelled blocks, plus a few header values."""
    root = _block(definition, definition.request, req.to_document(), "", definition.request.label)
    return {
        "title": definition.title,
        "description": definition.description,
        "form_id": req.form_id,
        "form_version": req.form_version,
        "reference": req.reference,
        "kind": req.kind,
        "supersedes": req.supersedes,
        "urgent": req.urgency == "spoed",
        "link": None,
        "forwarded": None,
        "attachments": (),
        "header": root.rows,
        "sections": root.blocks,
    }


def _block(
    definition: FormDefinition, spec: FieldSpec, values: Mapping[str, Any], path: str, label: str
) -> Block:
    rows: list[Row] = []
    blocks: list[Block] = []
    for field in spec.fields:
        value = values.get(field.id)
        where = f"{path}.{field.id}" if path else field.id
        if field.type == "object":
            if value is not None:
                blocks.append(_block(definition, field, value, where, field.label))
        elif field.type == "list":
            lines = [
                _block(
                    definition, field, item, f"{where}.{i}", _line_label(definition, field, i, item)
                )
                for i, item in enumerate(value or ())
            ]
            blocks.append(Block(where, field.label, blocks=tuple(lines)))
        else:
            rows.append(
                Row(where, field.label, _display(definition, field, value), field.type == "text")
            )
    return Block(path, label, tuple(rows), tuple(blocks))


def _line_label(
    definition: FormDefinition, spec: FieldSpec, index: int, item: Mapping[str, Any]
) -> str:
    label = f"{spec.item_label or spec.label} {index + 1}"
    code = item.get("code")
    if not isinstance(code, str):
        return label
    flag = f" ({NOT_RESERVED})" if code in definition.not_reserved else ""
    return f"{label}: {definition.procedure_label(code)}{flag}"


def _display(definition: FormDefinition, spec: FieldSpec, value: Any) -> str | bool | None:
    if value is None or isinstance(value, bool):
        return value
    if spec.type == "enum" and spec.options_from == "not_reserved":
        return f"{definition.procedure_label(value)} ({value}, {NOT_RESERVED})"
    if spec.type == "enum" and spec.options_from == "procedures":
        return f"{definition.procedure_label(value)} ({value})"
    if spec.type == "enum":
        return spec.option_label(value)
    if spec.type == "date":
        return date.fromisoformat(value).strftime("%d-%m-%Y")
    if spec.type == "datetime":
        local = datetime.fromisoformat(value).astimezone(definition.timezone)
        return local.strftime("%d-%m-%Y %H:%M")
    if spec.type == "number":
        return str(value).replace(".", ",")  # Dutch decimal comma
    return str(value)
