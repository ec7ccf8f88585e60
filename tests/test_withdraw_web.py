"""A withdrawal (intrekking) started from the earlier request asks only for the reason (issue
20): the rest is the earlier signed request, filled in on the server. Real app over HTTP
(webapp), real gpg signing and sealing, sqlite."""

from __future__ import annotations

from securemail.exchange import view
from tests.gateway import EXAMPLE, GP_PASSPHRASE
from tests.web_fixtures import WebApp

CENTRUM = "centrum@zorg.example"


def _with_phones(webapp: WebApp) -> None:
    """The GP's profile numbers, which every signed request carries as its principal."""
    webapp.svc.store.write_sync(
        lambda db: db.execute(
            "UPDATE users SET phone = '020-1234567', out_of_hours_phone = '088-0030600' "
            "WHERE username = 'gp_a'"
        )
    )


async def test_a_withdrawal_needs_only_a_reason(webapp: WebApp) -> None:
    _with_phones(webapp)
    first = await webapp.send("gp_a", CENTRUM)
    gp = webapp.browser()
    await gp.login("gp_a")
    page = await gp.get(f"/requests/{first}")
    assert f'href="/requests/{first}/withdraw"' in page.text
    form = await gp.get(f"/requests/{first}/withdraw")
    assert form.status == 200
    # the form has the reason and the passphrase, no patient fields
    assert 'name="reason"' in form.text and 'name="passphrase"' in form.text
    assert 'name="patient.' not in form.text and EXAMPLE["patient"]["bsn"] not in form.text
    token = form.field("send_token")

    # No reason: said at the top and next to the field, nothing sent
    before = webapp.svc.store.read_sync(lambda db: db["requests"].count)
    empty = await gp.post(
        f"/requests/{first}/withdraw",
        {"reason": "  ", "passphrase": GP_PASSPHRASE, "send_token": token},
    )
    assert empty.status == 422 and 'href="#reason"' in empty.text
    assert webapp.svc.store.read_sync(lambda db: db["requests"].count) == before

    # The reason and the passphrase: a signed withdrawal of the earlier request
    sent = await gp.post(
        f"/requests/{first}/withdraw",
        {
            "reason": "Zorg overgenomen door familie",
            "passphrase": GP_PASSPHRASE,
            "send_token": token,
        },
    )
    assert sent.status == 303, sent.text[:2000]
    second = sent.location.rsplit("/", 1)[-1]
    assert second != first

    def load(db):  # type: ignore[no-untyped-def]
        return (
            view.require_row(db, first),
            view.document(db, view.require_row(db, second)),
        )

    earlier, doc = webapp.svc.store.read_sync(load)
    assert (doc["kind"], doc["supersedes"]) == ("intrekking", first)
    assert doc["patient"]["name"] == EXAMPLE["patient"]["name"]  # from the earlier request
    assert "Zorg overgenomen door familie" in doc["instructions"]["instructions"]
    assert (earlier["state"], earlier["superseded_by"]) == ("withdrawn", second)
    # A double click is the same withdrawal, not a second one
    again = await gp.post(
        f"/requests/{first}/withdraw",
        {
            "reason": "Zorg overgenomen door familie",
            "passphrase": GP_PASSPHRASE,
            "send_token": token,
        },
    )
    assert (again.status, again.location) == (303, sent.location)
    assert webapp.svc.store.read_sync(lambda db: db["requests"].count) == before + 1


async def test_another_practice_cannot_withdraw(webapp: WebApp) -> None:
    first = await webapp.send("gp_a", CENTRUM)
    other = webapp.browser()
    await other.login("gp_b")
    assert (await other.get(f"/requests/{first}/withdraw")).status == 404
    r = await other.post(
        f"/requests/{first}/withdraw", {"reason": "x", "passphrase": GP_PASSPHRASE}
    )
    assert r.status == 404
    state = webapp.svc.store.read_sync(lambda db: view.require_row(db, first)["state"])
    assert state == "open"
