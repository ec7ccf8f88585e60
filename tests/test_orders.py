"""Issue 21: orders that can be trusted and stay valid: the request's date is the moment of
signing, the principal's enrolled function is what is signed, the team's answer goes back to
the practice sealed to its key, and end and evaluation dates outlive the content.

Real gateway (tests/loop_fixtures.py): real gpg seals, real sqlite, a controllable clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from securemail.exchange import send as exchange
from securemail.exchange import view as requestview
from securemail.form import request as forms
from tests.e2e.conftest import GP_PASSPHRASE, example
from tests.loop_fixtures import Loop


def _signed_document(loop: Loop, reference: str) -> dict[str, Any]:
    svc = loop.gw.svc
    row = svc.store.read_sync(lambda db: exchange.require_row(db, reference))
    return svc.store.read_sync(lambda db: requestview.document(db, row))


async def test_signed_request_is_dated_at_the_moment_of_signing(loop: Loop) -> None:
    # Given a request typed an hour before it is signed (same day)
    svc = loop.gw.svc
    data = example()
    data["issued_at"] = (loop.clock.now - timedelta(hours=1)).isoformat()
    sent = await exchange.send(svc, loop.gw.gp, data, GP_PASSPHRASE)
    # Then what is signed and stored carries the gateway's moment of signing
    issued = datetime.fromisoformat(_signed_document(loop, sent.reference)["issued_at"])
    assert issued == loop.clock.now


async def test_backdated_request_or_start_before_signing_is_a_field_error(loop: Loop) -> None:
    svc = loop.gw.svc
    backdated = example()
    backdated["issued_at"] = (loop.clock.now - timedelta(days=3)).isoformat()
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, backdated, GP_PASSPHRASE)
    assert ("issued_at", "datetime.backdated") in {(e.field, e.code) for e in info.value.errors}
    early = example()
    early["period"]["start_date"] = "today-1d"
    with pytest.raises(forms.FormInvalidError) as info:
        await exchange.send(svc, loop.gw.gp, early, GP_PASSPHRASE)
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("period.start_date", "period.start_before_issue")
    ]
    # Nothing was stored
    rows = svc.store.read_sync(lambda db: db.execute("SELECT COUNT(*) FROM requests").fetchone())
    assert rows[0] == 0
