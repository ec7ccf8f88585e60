"""Copy, change (wijziging) and extend (verlenging) start from the earlier request, prefilled
on the server (issue 20): the GP changes what changes and signs, without retyping. Real app
over HTTP (webapp), real gpg signing and sealing, sqlite."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from securemail.exchange import view
from tests.gateway import EXAMPLE, GP_PASSPHRASE
from tests.test_withdraw_web import CENTRUM, _with_phones
from tests.web_fixtures import Browser, WebApp


class _Form(HTMLParser):
    """The values a browser would post from the page's form with id request-form."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._in_form = False
        self._select = ""
        self._textarea = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._in_form = a.get("id") == "request-form"
        if not self._in_form:
            return
        if tag == "input" and a.get("name") and a.get("type") not in ("checkbox", "radio"):
            self.values[a["name"]] = a.get("value", "")
        elif tag == "input" and a.get("name") and "checked" in a:
            self.values[a["name"]] = a.get("value", "on")
        elif tag == "select":
            self._select = a.get("name", "")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a.get("name", "")
            self.values[self._textarea] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "select":
            self._select = ""
        elif tag == "textarea":
            self._textarea = ""

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data


def form_values(page: str) -> dict[str, str]:
    parser = _Form()
    parser.feed(page)
    return {k: v for k, v in parser.values.items() if v != ""}


async def _sign(gp: Browser, values: dict[str, str]) -> str:
    preview = await gp.post("/requests/preview", values)
    assert preview.status == 200, preview.text[:3000]
    payload = re.search(r'name="payload" value="([^"]*)"', preview.text)
    assert payload
    draft = re.search(r'name="draft" value="([^"]*)"', preview.text)
    sent = await gp.post(
        "/requests/send",
        {
            "payload": html.unescape(payload.group(1)),
            "passphrase": GP_PASSPHRASE,
            "send_token": preview.field("send_token"),
            **({"draft": draft.group(1)} if draft else {}),
        },
    )
    assert sent.status == 303, sent.text[:3000]
    return sent.location.rsplit("/", 1)[-1]


async def test_a_change_starts_from_the_earlier_request(webapp: WebApp) -> None:
    _with_phones(webapp)
    first = await webapp.send("gp_a", CENTRUM)
    gp = webapp.browser()
    await gp.login("gp_a")
    detail = await gp.get(f"/requests/{first}")
    for action in ("wijzigen", "verlengen", "kopieren"):
        assert f'href="/requests/{first}/{action}"' in detail.text
    page = await gp.get(f"/requests/{first}/wijzigen")
    assert page.status == 200
    values = form_values(page.text)
    assert values["kind"] == "wijziging" and values["supersedes"] == first
    assert values["patient.name"] == EXAMPLE["patient"]["name"]
    assert values["patient.bsn"] == EXAMPLE["patient"]["bsn"]
    # the GP changes one thing and signs; nothing else is typed again
    values["instructions.instructions"] = "Voortaan twee keer per dag."
    second = await _sign(gp, values)

    def load(db):  # type: ignore[no-untyped-def]
        return view.require_row(db, first), view.document(db, view.require_row(db, second))

    earlier, doc = webapp.svc.store.read_sync(load)
    assert (doc["kind"], doc["supersedes"]) == ("wijziging", first)
    assert doc["patient"]["name"] == EXAMPLE["patient"]["name"]
    assert doc["instructions"]["instructions"] == "Voortaan twee keer per dag."
    assert (earlier["state"], earlier["superseded_by"]) == ("superseded", second)


async def test_extend_and_copy_prefill_their_kind(webapp: WebApp) -> None:
    first = await webapp.send("gp_a", CENTRUM)
    gp = webapp.browser()
    await gp.login("gp_a")
    extend = form_values((await gp.get(f"/requests/{first}/verlengen")).text)
    assert (extend["kind"], extend["supersedes"]) == ("verlenging", first)
    copy = form_values((await gp.get(f"/requests/{first}/kopieren")).text)
    assert copy["kind"] == "nieuw" and "supersedes" not in copy
    assert copy["patient.name"] == EXAMPLE["patient"]["name"]
    # the prefill is a read of the request: audited
    assert len([r for r in webapp.audit("request.view") if r["object_id"] == first]) >= 2


async def test_another_practice_and_a_nurse_get_nothing(webapp: WebApp) -> None:
    """Issue 21: another practice gets "not found" (the same as a reference that does not
    exist) and the refusal is in the trail; a nurse's role may not start a follow-up at all."""
    first = await webapp.send("gp_a", CENTRUM)
    other = webapp.browser()
    await other.login("gp_b")
    paths = [f"/requests/{first}/{a}" for a in ("wijzigen", "verlengen", "kopieren")]
    paths += [f"/requests/{first}/dossier.{fmt}" for fmt in ("pdf", "json", "fhir")]
    missing = await other.get("/requests/UVZ-2000-999999/verlengen")
    for path in paths:
        r = await other.get(path)
        assert r.status == 404 and EXAMPLE["patient"]["name"] not in r.text, path
        assert r.text == missing.text, path
        denied = [x for x in webapp.audit("access.denied") if x["object_id"] == first]
        assert denied and denied[-1]["user_name"] == "gp_b", path
    assert len([x for x in webapp.audit("access.denied") if x["object_id"] == first]) == 6
    assert not [x for x in webapp.audit("request.view") if x["object_id"] == first]
    nurse = webapp.browser()
    await nurse.login("nurse_c")
    for path in paths:
        assert (await nurse.get(path)).status == 403, path
    assert f"/requests/{first}/wijzigen" not in (await nurse.get(f"/requests/{first}")).text
