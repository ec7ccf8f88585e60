"""The audit trail of a whole gateway: a real send, a real refusal and a real delivery, as
the privacy officers of both organisations and the `securemail audit` command see them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from securemail.access import SYSTEM
from securemail.accounts import auth
from securemail.audit import report as audit_report
from securemail.exchange import send as exchange
from securemail.openpgp.keyring import RecipientKeyError
from tests.gateway import (
    EXAMPLE,
    GP_PASSPHRASE,
    OTHER_TEAM,
    TEAM,
    Gateway,
    deliver_all,
    env_for_cli,
)
from tests.gateway import example as example_request

BSN = EXAMPLE["patient"]["bsn"]


def officers(gw: Gateway) -> dict[str, Any]:
    def add(db: Any) -> dict[str, Any]:
        for username, org in (
            ("po_praktijk", "01234567"),
            ("po_zorg", "87654321"),
            ("po_ander", "11223344"),
        ):
            auth.add_user(
                db,
                SYSTEM,
                username=username,
                name=username,
                role="privacy_officer",
                org_code=org,
                password="privacy officer password",
                now=gw.svc.now_iso(),
            )
        return {u: auth.actor_for_cli(db, u) for u in ("po_praktijk", "po_zorg", "po_ander")}

    return gw.svc.store.write_sync(add)


def securemail(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securemail", *args, "--home", str(gw.home)],
        capture_output=True,
        text=True,
        env=env_for_cli(),
        timeout=120,
        check=False,
    )


async def test_officers_see_the_exchange_and_the_refusal_with_its_reason(
    gw: Gateway, smtp_server: Any
) -> None:
    from tests.gateway import grant_consent

    po = officers(gw)
    sent = await exchange.send(gw.svc, gw.gp, example_request(), GP_PASSPHRASE)
    await deliver_all(gw.svc)
    grant_consent(gw.svc, gw.gp, BSN, OTHER_TEAM)
    with pytest.raises(RecipientKeyError):
        await exchange.send(gw.svc, gw.gp, example_request(), GP_PASSPHRASE, to=OTHER_TEAM)
    start, end = "2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z"

    def report(officer: str) -> audit_report.DisclosureReport:
        return gw.svc.store.write_sync(
            lambda db: audit_report.disclosure_report(db, po[officer], BSN, start, end)
        )

    practice = {(r["event_code"], r["object_id"]) for r in report("po_praktijk").rows}
    for code in ("request.create", "request.sign", "request.send", "request.deliver"):
        assert (code, sent.reference) in practice
    # The nursing organisation sees what was addressed to its teams (or to it), nothing else.
    receivers = {r["recipient_org"] for r in report("po_zorg").rows}
    assert TEAM in receivers and receivers <= {TEAM, OTHER_TEAM, "87654321"}
    assert report("po_ander").rows == []
    exc = gw.svc.store.write_sync(
        lambda db: audit_report.exceptions(db, po["po_praktijk"], start, end)
    )
    assert ("request.send", "seal.key_unusable") in {
        (r["event_code"], r["outcome_detail"]) for r in exc.refusals
    }


async def test_audit_command_verifies_then_names_an_edited_row(gw: Gateway) -> None:
    await exchange.send(gw.svc, gw.gp, example_request(), GP_PASSPHRASE)
    assert securemail(gw, "audit", "checkpoint").returncode == 0
    ok = securemail(gw, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout and "rows/s" in ok.stdout
    seq = gw.svc.store.read_sync(
        lambda db: db.execute(
            "SELECT seq FROM audit_events WHERE event_code = 'request.sign'"
        ).fetchone()[0]
    )
    conn = sqlite3.connect(gw.svc.settings.db_path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute(
        "UPDATE audit_events SET outcome_detail = 'signer=someone else' WHERE seq = ?", [seq]
    )
    conn.commit()
    conn.close()
    bad = securemail(gw, "audit", "verify")
    assert bad.returncode == 1
    assert f"row {seq} was altered" in bad.stderr
    assert BSN not in bad.stderr + bad.stdout
