"""Rendering of a validated request: Dutch text, self-contained HTML, canonical JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from securemail.config import PROJECT_ROOT
from securemail.form import render
from securemail.form.definition import FieldSpec, FormDefinition
from securemail.form.render import RenderedDocument, render_request
from securemail.form.request import ExecutionRequest, load_definition, parse_request

FORMS = PROJECT_ROOT / "forms"
EXAMPLE = PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def definition() -> FormDefinition:
    return load_definition(FORMS)


@pytest.fixture
def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture
def rendered(definition: FormDefinition, example: dict) -> RenderedDocument:
    req = parse_request(definition, example, now=NOW, reference="UVZ-2026-000123")
    return render_request(definition, req)


def labels(spec: FieldSpec) -> list[str]:
    out = []
    for field in spec.fields:
        out.append(field.item_label or field.label if field.type == "list" else field.label)
        out += labels(field)
    return out


def test_render_text_contains_every_label_and_the_patient(
    definition: FormDefinition, rendered: RenderedDocument
) -> None:
    text = rendered.text
    missing = [label for label in labels(definition.request) if label.upper() not in text.upper()]
    assert missing == []
    assert "J. de Vries-Test" in text
    assert "UVZ-2026-000123" in text
    assert definition.title.upper() in text


def test_render_text_shows_dutch_dates_and_labels_for_codes(rendered: RenderedDocument) -> None:
    text = rendered.text
    assert "17-05-1941" in text  # birth date
    assert "24-11-2026 13:00" in text  # issued_at "now" = NOW, on the Amsterdam clock
    assert "Subcutane injectie (INJ_SC)" in text
    assert "subcutaan" in text  # route label, not "sc"
    assert "Catheterisaties" in text  # the category from the vocabulary
    assert "Nieuw verzoek" in text and "Regulier" in text
    assert "1941-05-17" not in text


def test_render_text_lines_fit_a_mail_window(rendered: RenderedDocument) -> None:
    too_long = [line for line in rendered.text.splitlines() if len(line) > 78]
    assert too_long == []
    assert 4_000 < len(rendered.text.encode()) < 12_000  # a realistic request, not a stub


def test_render_urgent_request_shows_spoed_banner(
    definition: FormDefinition, example: dict
) -> None:
    example["urgency"] = "spoed"
    doc = render_request(definition, parse_request(definition, example, now=NOW))
    assert "SPOED" in doc.text
    assert 'class="spoed"' in doc.html


def test_render_html_escapes_script_in_free_text(definition: FormDefinition, example: dict) -> None:
    example["instructions"]["instructions"] = "<script>alert('x')</script> & meer"
    example["patient"]["name"] = "<b>Vries</b>"
    doc = render_request(definition, parse_request(definition, example, now=NOW))
    assert "<script" not in doc.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; meer" in doc.html
    assert "&lt;b&gt;Vries&lt;/b&gt;" in doc.html
    # The text rendering is not HTML: it shows what was typed.
    assert "<script>alert('x')</script>" in doc.text


def test_render_html_self_contained_without_scripts(rendered: RenderedDocument) -> None:
    html = rendered.html
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="nl">' in html
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bon[a-z]+=|javascript:", html, re.I)
    assert "<style>" in html
    assert "J. de Vries-Test" in html


def test_render_json_equals_canonical_json_and_parses_back(
    definition: FormDefinition, example: dict
) -> None:
    req = parse_request(definition, example, now=NOW, reference="UVZ-2026-000123")
    doc = render_request(definition, req)
    assert doc.json == req.canonical_json()
    parsed = json.loads(doc.json)
    assert parsed["form_id"] == "uitvoeringsverzoek"
    assert parsed["form_version"] == "1.0"
    assert ExecutionRequest.from_document(parsed) == req


def test_render_environment_built_once_per_template_folder(
    definition: FormDefinition, rendered: RenderedDocument
) -> None:
    env = render._environment(definition.template_dir)
    assert render._environment(definition.template_dir) is env
    assert env.autoescape("request.html.j2") is True
    assert env.autoescape("request.txt.j2") is False
    assert env.auto_reload is False


def test_a_pass_on_reason_is_quoted_and_attributed_to_the_nurse() -> None:
    from securemail.form.render import pass_on_note

    reason = "Vol.\n== AANVULLING VAN DE OPDRACHTGEVER ==\n" + "lang " * 40 + "\x1b[2J"
    note = pass_on_note(from_team="Team A", to_team="Team B", nurse="Zr. Noor", reason=reason)
    head, attribution, *quote = note.splitlines()
    assert "doorbemiddeld naar Team B" in head
    assert "Zr. Noor" in attribution and "niet door de huisarts" in attribution
    assert quote and all(line.startswith(">") and len(line) <= 76 for line in quote)
    assert "\x1b" not in note
