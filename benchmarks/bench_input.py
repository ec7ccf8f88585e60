"""Bounded input: what a crafted form post costs compared with an honest one.

Times ``parse_form_post`` (the form's rows checked against its own maximum before anything
is built) for the full example request, for ``procedures.1000000.code`` and for a
non-numeric row key, and the rows the page would render for each. Before issue 23 the
crafted posts rendered a row per index (20,000 rows: 33 s); now they are refused in time
proportional to the keys posted.
"""

from __future__ import annotations

import time
from typing import Any

from securemail.config import PROJECT_ROOT
from securemail.form import request as forms
from securemail.form.definition import load_definition
from securemail.web.requests import _rows_in

TITLE = "Bounded input: crafted form rows"


def _time(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def _rows(definition: forms.FormDefinition, post: dict[str, str]) -> int:
    try:
        values = forms.flatten(forms.parse_form_post(definition, post))
    except forms.FormShapeError as exc:
        values = forms.flatten(exc.data)
    return _rows_in(values, forms.list_limit(definition.request.child("procedures")))


def run(quick: bool = False) -> dict[str, Any]:
    import json

    definition = load_definition(PROJECT_ROOT / "forms")
    example = json.loads((PROJECT_ROOT / "examples" / "uitvoeringsverzoek.json").read_text("utf-8"))
    honest = forms.flatten(example)
    posts = {
        "honest": honest,
        "index 1000000": {**honest, "procedures.1000000.code": "INJ_SC"},
        "non-numeric key": {**honest, "procedures.x.code": "INJ_SC"},
    }
    n = 50 if quick else 500
    table = []
    for name, post in posts.items():
        ms = _time(lambda p=post: _rows(definition, p), n)
        table.append({"metric": f"parse + rows ({name}), ms", "value": round(ms, 3)})
        table.append({"metric": f"rows rendered ({name})", "value": _rows(definition, post)})
    return {"table": table}
